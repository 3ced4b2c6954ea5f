package matcher

import (
	"cmp"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// On the test line, points sit on the equator and one minute of pickup is
// 0.01 degree of longitude: ETAs are exact and easy to read.
func linePoint(minutes float64) geo.LatLng { return geo.LatLng{Lat: 0, Lng: minutes / 100} }

func lineETA(from, to geo.LatLng) time.Duration {
	return time.Duration(math.Round(math.Abs(from.Lng-to.Lng) * 100 * 60 * 1e9))
}

func lineDriver(id string, minutes float64, seq uint64) positions.Candidate {
	return positions.Candidate{Driver: positions.Driver{
		ID: positions.DriverID(id), Pos: linePoint(minutes), Status: positions.StatusAvailable, Seq: seq,
	}}
}

var batchT0 = time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)

func lineRequest(ride string, minutes float64, afterMs int, cands ...positions.Candidate) BatchRequest {
	return BatchRequest{
		Ride: RideID(ride), Pickup: linePoint(minutes),
		At: batchT0.Add(time.Duration(afterMs) * time.Millisecond), Candidates: cands,
	}
}

func newTestPlanner(t *testing.T, edit func(*BatchConfig)) *BatchPlanner {
	t.Helper()
	cfg := DefaultBatchConfig()
	if edit != nil {
		edit(&cfg)
	}
	p, err := NewBatchPlanner(cfg, lineETA)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustPlan(t *testing.T, p *BatchPlanner, reqs []BatchRequest) BatchPlan {
	t.Helper()
	plan, err := p.Plan(reqs)
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Check(); err != nil {
		t.Fatalf("plan breaks an invariant: %v\n%+v", err, plan.Offers)
	}
	if len(plan.Offers) != len(reqs) {
		t.Fatalf("%d offers for %d requests", len(plan.Offers), len(reqs))
	}
	for i, o := range plan.Offers {
		if o.Ride != reqs[i].Ride {
			t.Fatalf("offer %d is for %q, request %q", i, o.Ride, reqs[i].Ride)
		}
	}
	return plan
}

func offerIDs(o BatchOffer) string {
	s := make([]string, len(o.Drivers))
	for i, d := range o.Drivers {
		s[i] = string(d)
	}
	return strings.Join(s, ",")
}

func TestPlanCrafted(t *testing.T) {
	minute := time.Minute
	tests := []struct {
		name string
		edit func(*BatchConfig)
		reqs []BatchRequest
		// want holds each offer's drivers, comma-separated, in request order.
		want                 []string
		batched, greedy      BatchPolicyStats
		wantDrivers, wantShr int
	}{
		{
			// A asks first; its nearest driver (d1, 4 min) is B's only
			// near one. Greedy: A-d1 4 + B-d2 20 = 24 min. Batched:
			// A-d2 10 + B-d1 6 = 16 min.
			name: "crossing",
			edit: func(c *BatchConfig) { c.Fallbacks, c.MaxPickupETA = 0, 30*time.Minute },
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("d1", 4, 1), lineDriver("d2", -10, 1)),
				lineRequest("B", 10, 5, lineDriver("d1", 4, 1), lineDriver("d2", -10, 1)),
			},
			want:        []string{"d2", "d1"},
			batched:     BatchPolicyStats{Assigned: 2, TotalETA: 16 * minute, MeanETA: 8 * minute},
			greedy:      BatchPolicyStats{Assigned: 2, TotalETA: 24 * minute, MeanETA: 12 * minute},
			wantDrivers: 2, wantShr: 2,
		},
		{
			// Request order in the slice is not arrival order: B asked
			// first, so greedy serves B first and gets the optimum.
			name: "greedy follows arrival time, not slice order",
			edit: func(c *BatchConfig) { c.Fallbacks, c.MaxPickupETA = 0, 30*time.Minute },
			reqs: []BatchRequest{
				lineRequest("A", 0, 5, lineDriver("d1", 4, 1), lineDriver("d2", -10, 1)),
				lineRequest("B", 10, 0, lineDriver("d1", 4, 1), lineDriver("d2", -10, 1)),
			},
			want:        []string{"d2", "d1"},
			batched:     BatchPolicyStats{Assigned: 2, TotalETA: 16 * minute, MeanETA: 8 * minute},
			greedy:      BatchPolicyStats{Assigned: 2, TotalETA: 16 * minute, MeanETA: 8 * minute},
			wantDrivers: 2, wantShr: 2,
		},
		{
			// Greedy gives A its nearest (d1), the only driver within 15
			// min of B: one rider served. Batched serves both.
			name: "batched serves more riders",
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("d1", 2, 1), lineDriver("d2", -12, 1)),
				lineRequest("B", 14, 1, lineDriver("d1", 2, 1), lineDriver("d2", -12, 1)),
			},
			want:        []string{"d2", "d1"},
			batched:     BatchPolicyStats{Assigned: 2, TotalETA: 24 * minute, MeanETA: 12 * minute},
			greedy:      BatchPolicyStats{Assigned: 1, TotalETA: 2 * minute, MeanETA: 2 * minute},
			wantDrivers: 2, wantShr: 1,
		},
		{
			name: "fallbacks cheapest first, beyond MaxPickupETA left out",
			reqs: []BatchRequest{
				lineRequest("A", 0, 0,
					lineDriver("far", 16, 1), lineDriver("d3", -3, 1), lineDriver("d1", 1, 1),
					lineDriver("d2", 2, 1), lineDriver("d4", 5, 1)),
			},
			want:        []string{"d1,d2,d3"},
			batched:     BatchPolicyStats{Assigned: 1, TotalETA: minute, MeanETA: minute},
			greedy:      BatchPolicyStats{Assigned: 1, TotalETA: minute, MeanETA: minute},
			wantDrivers: 5,
		},
		{
			// d1 is A's choice, so it is never B's fallback; d3 is free
			// and may be both riders' fallback.
			name: "fallbacks never hold another rider's choice",
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("d1", 0, 1), lineDriver("d3", 3, 1)),
				lineRequest("B", 6, 0, lineDriver("d1", 0, 1), lineDriver("d2", 6, 1), lineDriver("d3", 3, 1)),
			},
			want:        []string{"d1,d3", "d2,d3"},
			batched:     BatchPolicyStats{Assigned: 2},
			greedy:      BatchPolicyStats{Assigned: 2},
			wantDrivers: 3, wantShr: 2,
		},
		{
			name: "rider with only infeasible drivers gets no offer",
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("far", 30, 1)),
				lineRequest("B", 40, 0),
			},
			want:        []string{"", ""},
			wantDrivers: 1,
		},
		{
			// d1 appears in two lists at different seqs: the freshest
			// position (seq 9, 1 min from B) is used for every rider.
			name: "freshest seq wins across lists",
			edit: func(c *BatchConfig) { c.Fallbacks = 0 },
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("d1", 0, 3)),
				lineRequest("B", 9, 1, lineDriver("d1", 8, 9)),
			},
			// Greedy serves A first with the 8 min pickup.
			want:        []string{"", "d1"},
			batched:     BatchPolicyStats{Assigned: 1, TotalETA: minute, MeanETA: minute},
			greedy:      BatchPolicyStats{Assigned: 1, TotalETA: 8 * minute, MeanETA: 8 * minute},
			wantDrivers: 1, wantShr: 1,
		},
		{
			name: "MaxCandidates keeps the cheapest",
			edit: func(c *BatchConfig) { c.MaxCandidates = 2 },
			reqs: []BatchRequest{
				lineRequest("A", 0, 0, lineDriver("d4", 4, 1), lineDriver("d3", 3, 1), lineDriver("d1", 1, 1), lineDriver("d2", 2, 1)),
			},
			want:        []string{"d1,d2"},
			batched:     BatchPolicyStats{Assigned: 1, TotalETA: minute, MeanETA: minute},
			greedy:      BatchPolicyStats{Assigned: 1, TotalETA: minute, MeanETA: minute},
			wantDrivers: 4,
		},
		{name: "empty window", want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := mustPlan(t, newTestPlanner(t, tt.edit), tt.reqs)
			for i, o := range plan.Offers {
				if got := offerIDs(o); got != tt.want[i] {
					t.Errorf("ride %s: drivers %q, want %q", o.Ride, got, tt.want[i])
				}
				if o.Assigned != (tt.want[i] != "") {
					t.Errorf("ride %s: Assigned %v", o.Ride, o.Assigned)
				}
			}
			st := plan.Stats
			if st.Riders != len(tt.reqs) || st.Drivers != tt.wantDrivers || st.Shared != tt.wantShr {
				t.Errorf("riders %d drivers %d shared %d, want %d %d %d", st.Riders, st.Drivers, st.Shared, len(tt.reqs), tt.wantDrivers, tt.wantShr)
			}
			if tt.batched.TotalETA == 0 && tt.batched.Assigned > 0 {
				// only the counts are pinned
				st.Batched.TotalETA, st.Batched.MeanETA = 0, 0
				st.Greedy.TotalETA, st.Greedy.MeanETA = 0, 0
			}
			if st.Batched != tt.batched || st.Greedy != tt.greedy {
				t.Errorf("batched %+v greedy %+v, want %+v %+v", st.Batched, st.Greedy, tt.batched, tt.greedy)
			}
			if st.GainAssigned != st.Batched.Assigned-st.Greedy.Assigned || st.GainMeanETA != st.Greedy.MeanETA-st.Batched.MeanETA {
				t.Errorf("gains %d %v do not match the policies", st.GainAssigned, st.GainMeanETA)
			}
		})
	}
}

func TestPlanRejects(t *testing.T) {
	cands := []positions.Candidate{lineDriver("d1", 1, 1)}
	tests := []struct {
		name string
		reqs []BatchRequest
		want error
	}{
		{"too many riders", []BatchRequest{lineRequest("A", 0, 0), lineRequest("B", 0, 0), lineRequest("C", 0, 0)}, ErrInvalidQuery},
		{"ride twice", []BatchRequest{lineRequest("A", 0, 0, cands...), lineRequest("A", 1, 0, cands...)}, ErrInvalidQuery},
		{"empty ride id", []BatchRequest{lineRequest("", 0, 0, cands...)}, ErrInvalidRide},
		{"bad pickup", []BatchRequest{{Ride: "A", Pickup: geo.LatLng{Lat: math.NaN()}, Candidates: cands}}, geo.ErrInvalidLatLng},
	}
	p := newTestPlanner(t, func(c *BatchConfig) { c.MaxRiders = 2 })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := p.Plan(tt.reqs); !errors.Is(err, tt.want) {
				t.Fatalf("Plan error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestBatchConfigValidate(t *testing.T) {
	if err := DefaultBatchConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	tests := []struct {
		name string
		edit func(*BatchConfig)
	}{
		{"zero window", func(c *BatchConfig) { c.Window = 0 }},
		{"huge window", func(c *BatchConfig) { c.Window = time.Hour }},
		{"zero MaxPickupETA", func(c *BatchConfig) { c.MaxPickupETA = 0 }},
		{"negative fallbacks", func(c *BatchConfig) { c.Fallbacks = -1 }},
		{"zero MaxRiders", func(c *BatchConfig) { c.MaxRiders = 0 }},
		{"zero MaxCandidates", func(c *BatchConfig) { c.MaxCandidates = 0 }},
		{"MaxCandidates over MaxK", func(c *BatchConfig) { c.MaxCandidates = positions.MaxK + 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultBatchConfig()
			tt.edit(&cfg)
			if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
			if _, err := NewBatchPlanner(cfg, nil); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("NewBatchPlanner = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestPlanCheckCatchesDoubleAssignment(t *testing.T) {
	bad := []BatchPlan{
		{Offers: []BatchOffer{
			{Ride: "A", Drivers: []positions.DriverID{"d1"}, ETAs: []time.Duration{1}, Assigned: true},
			{Ride: "B", Drivers: []positions.DriverID{"d1"}, ETAs: []time.Duration{1}, Assigned: true},
		}},
		{Offers: []BatchOffer{
			{Ride: "A", Drivers: []positions.DriverID{"d1"}, ETAs: []time.Duration{1}, Assigned: true},
			{Ride: "B", Drivers: []positions.DriverID{"d2", "d1"}, ETAs: []time.Duration{1, 2}, Assigned: true},
		}},
		{Offers: []BatchOffer{{Ride: "A", Drivers: []positions.DriverID{"d1", "d1"}, ETAs: []time.Duration{1, 1}, Assigned: true}}},
		{Offers: []BatchOffer{{Ride: "A", Drivers: []positions.DriverID{"d1"}, Assigned: true}}},
		{Offers: []BatchOffer{{Ride: "A", Assigned: true}}},
	}
	for i, p := range bad {
		if err := p.Check(); err == nil {
			t.Errorf("bad plan %d passes Check", i)
		}
	}
}

// TestPlanRandomWindows plans random windows in a 6 km city square with
// overlapping candidate lists and checks the invariants and that batching
// never does worse than greedy on its own objective.
func TestPlanRandomWindows(t *testing.T) {
	seed := assignSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	box := geo.BBox{MinLat: 37.75, MinLng: -122.45, MaxLat: 37.80, MaxLng: -122.39}
	cfg := DefaultBatchConfig()
	cfg.MaxPickupETA = 8 * time.Minute // some pairs infeasible
	p, err := NewBatchPlanner(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	windows := 200
	if testing.Short() {
		windows = 20
	}
	var gain time.Duration
	var gainAssigned int
	for w := range windows {
		nd := rng.IntN(40)
		fleet := make([]positions.Candidate, nd)
		for j := range fleet {
			fleet[j] = positions.Candidate{Driver: positions.Driver{
				ID: positions.DriverID("d" + strconv.Itoa(j)), Pos: cityPoint(rng, box),
				Status: positions.StatusAvailable, Seq: uint64(rng.IntN(5) + 1),
			}}
		}
		reqs := make([]BatchRequest, rng.IntN(30))
		for i := range reqs {
			pickup := cityPoint(rng, box)
			// The k nearest of the fleet, as a gather would return.
			k := min(nd, 1+rng.IntN(12))
			byDist := slices.Clone(fleet)
			slices.SortFunc(byDist, func(a, b positions.Candidate) int {
				return cmp.Compare(geo.DistanceM(a.Pos, pickup), geo.DistanceM(b.Pos, pickup))
			})
			reqs[i] = BatchRequest{
				Ride: RideID("r" + strconv.Itoa(i)), Pickup: pickup,
				At:         batchT0.Add(time.Duration(rng.IntN(2000)) * time.Millisecond),
				Candidates: byDist[:k],
			}
		}
		plan := mustPlan(t, p, reqs)
		st := plan.Stats
		finite := 0
		for _, c := range p.m.Cost {
			if !math.IsInf(c, 1) {
				finite++
			}
		}
		if finite != st.Pairs || p.m.Cols > st.Drivers || st.Pairs > st.Riders*cfg.MaxCandidates {
			t.Fatalf("window %d: %d finite pairs in a %dx%d matrix, stats %+v", w, finite, p.m.Rows, p.m.Cols, st)
		}
		if st.Batched.Assigned < st.Greedy.Assigned {
			t.Fatalf("window %d: batched serves %d, greedy %d", w, st.Batched.Assigned, st.Greedy.Assigned)
		}
		// Equal counts: batched total can exceed greedy's only by the
		// rounding of each ETA to a nanosecond.
		if st.Batched.Assigned == st.Greedy.Assigned && st.Batched.TotalETA > st.Greedy.TotalETA+time.Duration(st.Riders) {
			t.Fatalf("window %d: batched total %v > greedy %v", w, st.Batched.TotalETA, st.Greedy.TotalETA)
		}
		assigned := 0
		for _, o := range plan.Offers {
			if o.Assigned {
				assigned++
				if len(o.Drivers) > 1+cfg.Fallbacks {
					t.Fatalf("window %d: ride %s has %d drivers", w, o.Ride, len(o.Drivers))
				}
			}
			for _, eta := range o.ETAs {
				if eta > cfg.MaxPickupETA {
					t.Fatalf("window %d: ride %s offered a %v pickup", w, o.Ride, eta)
				}
			}
		}
		if assigned != st.Batched.Assigned {
			t.Fatalf("window %d: %d offers assigned, stats say %d", w, assigned, st.Batched.Assigned)
		}
		gain += st.GainMeanETA
		gainAssigned += st.GainAssigned
	}
	t.Logf("%d windows: summed mean-ETA gain %v, extra riders served %d", windows, gain, gainAssigned)
}

// BenchmarkPlan plans windows of riders drawn from the hot-spot city
// against a fleet of drivers, each rider with its 16 nearest drivers as
// candidates (as a gather returns them). Besides the time per window it
// reports, summed over the distinct windows, greedy's mean pickup ETA over
// batched's and the riders each served.
func BenchmarkPlan(b *testing.B) {
	for _, bc := range []struct{ riders, fleet int }{{10, 200}, {50, 500}, {250, 1000}, {250, 300}} {
		b.Run(strconv.Itoa(bc.riders)+"riders/"+strconv.Itoa(bc.fleet)+"drivers", func(b *testing.B) {
			rng := rand.New(rand.NewPCG(7, uint64(bc.riders)))
			fleet := make([]positions.Candidate, bc.fleet)
			for j := range fleet {
				fleet[j] = positions.Candidate{Driver: positions.Driver{
					ID: positions.DriverID("d" + strconv.Itoa(j)), Pos: hotspotPoint(rng),
					Status: positions.StatusAvailable, Seq: 1,
				}}
			}
			const nWindows = 8
			windows := make([][]BatchRequest, nWindows)
			for w := range windows {
				reqs := make([]BatchRequest, bc.riders)
				for i := range reqs {
					pickup := hotspotPoint(rng)
					near := slices.Clone(fleet)
					slices.SortFunc(near, func(a, b positions.Candidate) int {
						return cmp.Compare(geo.DistanceM(a.Pos, pickup), geo.DistanceM(b.Pos, pickup))
					})
					reqs[i] = BatchRequest{
						Ride: RideID("r" + strconv.Itoa(i)), Pickup: pickup,
						At:         batchT0.Add(time.Duration(rng.IntN(2000)) * time.Millisecond),
						Candidates: near[:16],
					}
				}
				windows[w] = reqs
			}
			p, err := NewBatchPlanner(DefaultBatchConfig(), nil)
			if err != nil {
				b.Fatal(err)
			}
			var batched, greedy BatchPolicyStats
			for _, reqs := range windows {
				plan, err := p.Plan(reqs)
				if err != nil {
					b.Fatal(err)
				}
				batched.Assigned += plan.Stats.Batched.Assigned
				batched.TotalETA += plan.Stats.Batched.TotalETA
				greedy.Assigned += plan.Stats.Greedy.Assigned
				greedy.TotalETA += plan.Stats.Greedy.TotalETA
			}
			w := 0
			for b.Loop() {
				if _, err := p.Plan(windows[w%nWindows]); err != nil {
					b.Fatal(err)
				}
				w++
			}
			mean := func(s BatchPolicyStats) float64 { return s.TotalETA.Seconds() / float64(s.Assigned) }
			b.ReportMetric(mean(greedy)/mean(batched), "greedy/batched_mean_eta")
			b.ReportMetric(float64(batched.Assigned)/nWindows, "batched_served")
			b.ReportMetric(float64(greedy.Assigned)/nWindows, "greedy_served")
		})
	}
}
