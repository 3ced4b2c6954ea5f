package matcher_test

import (
	"fmt"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// Two riders, two drivers, crossing: serving the first rider with its
// nearest driver (greedy) costs the second a long pickup.
func ExampleSolver() {
	m := matcher.NewCostMatrix(2, 3) // riders x drivers, pickup ETA in seconds
	m.Set(0, 0, 60)
	m.Set(0, 1, 120)
	m.Set(1, 0, 130)
	m.Set(1, 1, 600)
	// Driver 2 is more than 15 minutes from rider 0 and out of rider 1's
	// candidates (left infeasible).
	m.Set(0, 2, 1200)

	s := matcher.Solver{MaxCost: (15 * time.Minute).Seconds()}
	var opt, greedy matcher.Assignment
	if err := s.Solve(m, &opt); err != nil {
		fmt.Println(err)
		return
	}
	if err := matcher.GreedyAssign(m, s.MaxCost, nil, &greedy); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("optimal:", opt.Col, opt.Total)
	fmt.Println("greedy: ", greedy.Col, greedy.Total)
	// Output:
	// optimal: [1 0] 250
	// greedy:  [0 1] 660
}

func ExampleBatchPlanner() {
	cfg := matcher.DefaultBatchConfig()
	cfg.Fallbacks = 1
	planner, err := matcher.NewBatchPlanner(cfg, geo.DefaultETA.ETA)
	if err != nil {
		fmt.Println(err)
		return
	}
	driver := func(id string, lat, lng float64) positions.Candidate {
		return positions.Candidate{Driver: positions.Driver{
			ID: positions.DriverID(id), Pos: geo.LatLng{Lat: lat, Lng: lng},
			Status: positions.StatusAvailable, Seq: 1,
		}}
	}
	// Along Market Street: d1 sits between the riders, nearer to ann, who
	// asked first; d2 is behind ann, d3 far past bob. Greedy would give d1
	// to ann and leave bob the far d3; the plan gives ann d2 and bob d1,
	// with d3 as bob's fallback (d2 is ann's, so it is nobody's fallback).
	d1, d2, d3 := driver("d1", 37.7890, -122.4010), driver("d2", 37.7935, -122.3950), driver("d3", 37.7790, -122.4140)
	t0 := time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	plan, err := planner.Plan([]matcher.BatchRequest{
		{Ride: "ann", Pickup: geo.LatLng{Lat: 37.7900, Lng: -122.3995}, At: t0, Candidates: []positions.Candidate{d1, d2}},
		{Ride: "bob", Pickup: geo.LatLng{Lat: 37.7860, Lng: -122.4050}, At: t0.Add(time.Second), Candidates: []positions.Candidate{d1, d2, d3}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := plan.Check(); err != nil {
		fmt.Println(err)
		return
	}
	for _, o := range plan.Offers {
		fmt.Println(o.Ride, o.Drivers, o.ETAs[0].Round(time.Second))
	}
	st := plan.Stats
	fmt.Println("batched mean", st.Batched.MeanETA.Round(time.Second), "greedy mean", st.Greedy.MeanETA.Round(time.Second))
	// Output:
	// ann [d2] 1m48s
	// bob [d1 d3] 1m34s
	// batched mean 1m41s greedy mean 2m5s
}
