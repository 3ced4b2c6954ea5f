package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/sim"
)

// The assign workload times the batched policy's solver alone: one
// riders x drivers window of pickup ETAs in the benchmark city (riders and
// drivers scattered like the index workloads' fleet, geo.DefaultETA,
// infeasible beyond 15 min), solved again and again with one warm
// matcher.Solver on one goroutine. The note compares greedy (riders in
// order, each takes its nearest free driver) with the optimum on the same
// matrix.

func init() {
	register(Workload{Name: "assign", Run: runAssign})
}

var assignSizes = []int{100, 500}

const assignMaxETA = 15 * time.Minute

func runAssign(ctx context.Context, env Env) ([]Result, error) {
	var out []Result
	for _, n := range assignSizes {
		m := assignMatrix(n, n, env.Seed)
		s := matcher.Solver{MaxCost: assignMaxETA.Seconds()}
		var opt, greedy matcher.Assignment
		if err := matcher.GreedyAssign(m, s.MaxCost, nil, &greedy); err != nil {
			return nil, err
		}
		var t Timer
		ops, elapsed, err := t.Loop(ctx, env.Duration, func(int) error { return s.Solve(m, &opt) })
		if err != nil {
			return nil, err
		}
		r := throughputResult("assign", 0, &t, ops, elapsed)
		r.Size = strconv.Itoa(n) + "x" + strconv.Itoa(n)
		r.Note = fmt.Sprintf("optimal: %d riders, mean pickup %.1fs; greedy: %d riders, mean %.1fs (x%.3f)",
			opt.Assigned, opt.Mean(), greedy.Assigned, greedy.Mean(), greedy.Mean()/opt.Mean())
		out = append(out, r)
	}
	return out, nil
}

// assignMatrix is a rows x cols matrix of pickup ETAs in seconds between
// riders and drivers drawn from the benchmark city.
func assignMatrix(rows, cols int, seed uint64) *matcher.CostMatrix {
	rng := rand.New(rand.NewPCG(seed, 13))
	city := sim.SanFrancisco()
	drivers := make([]geo.LatLng, cols)
	for j := range drivers {
		drivers[j] = city.Point(rng)
	}
	m := matcher.NewCostMatrix(rows, cols)
	for i := range rows {
		p := city.Point(rng)
		for j, d := range drivers {
			m.Set(i, j, geo.DefaultETA.ETA(d, p).Seconds())
		}
	}
	return m
}
