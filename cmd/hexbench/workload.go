package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Result is one line of hexbench output. Fields that do not apply to a
// workload are omitted. Later workloads add fields here, never rename them:
// scripts and BENCHMARKS.md read this schema.
type Result struct {
	System         string  `json:"system"`
	Workload       string  `json:"workload"`
	Drivers        int     `json:"drivers,omitempty"`
	Size           string  `json:"size,omitempty"` // a non-driver size, e.g. "500x500"
	OpsPerS        float64 `json:"ops_per_s,omitempty"`
	P50us          float64 `json:"p50_us,omitempty"`
	P99us          float64 `json:"p99_us,omitempty"`
	BytesPerDriver float64 `json:"bytes_per_driver,omitempty"`
	Ops            int64   `json:"ops,omitempty"`
	Seconds        float64 `json:"seconds,omitempty"`
	GOMAXPROCS     int     `json:"gomaxprocs,omitempty"`
	Note           string  `json:"note,omitempty"`
	// Workloads with more than one rate: mixed (position updates and
	// k-nearest queries at once) and match-e2e (offers to drivers).
	UpdatesPerS float64 `json:"updates_per_s,omitempty"`
	QueriesPerS float64 `json:"queries_per_s,omitempty"`
	OffersPerS  float64 `json:"offers_per_s,omitempty"`
	// TargetPerS is an open-loop workload's offered rate; OpsPerS is what
	// it achieved.
	TargetPerS float64 `json:"target_per_s,omitempty"`
	Errors     int64   `json:"errors,omitempty"`
}

// Env is what a workload gets from the command line.
type Env struct {
	Drivers  int           // one of -drivers; 0 for workloads without a driver count
	Duration time.Duration // how long to run the timed loop
	Seed     uint64
	Progress io.Writer // stderr
	// Rate is the open-loop request rate of match-e2e (ride requests/s).
	Rate float64
	// WSDrivers is how many of match-e2e's drivers hold a WebSocket; 0
	// means as many as the open-file limit allows.
	WSDrivers int
	// Refresh is how often each of match-e2e's drivers reports again.
	Refresh time.Duration
	// APIProcs is how many api processes ws-conns spreads its
	// connections over; 0 means as few as the open-file limit allows.
	APIProcs int
	// Nice lowers hexbench's own CPU priority by this much while
	// match-e2e runs, once the engine is started (see lowerPriority).
	Nice int
	// ClientProcs is hexbench's GOMAXPROCS while match-e2e runs (0: as
	// it is).
	ClientProcs int
	// Timeline, when not nil, gets each offered ride of match-e2e.
	Timeline *Timeline
}

// Workload is one named benchmark.
type Workload struct {
	Name string
	// Sized workloads run once per -drivers value; others run once.
	Sized bool
	Run   func(ctx context.Context, env Env) ([]Result, error)
	// RedisPeer, when set, runs the same workload against Redis GEO for
	// -peer redis.
	RedisPeer func(ctx context.Context, env Env, p *redisPeer) ([]Result, error)
}

var workloads = map[string]Workload{}

// register adds a workload; each workload file calls it from init.
func register(w Workload) {
	if _, dup := workloads[w.Name]; dup {
		panic("hexbench: duplicate workload " + w.Name)
	}
	workloads[w.Name] = w
}

func workloadNames() string {
	names := make([]string, 0, len(workloads))
	for n := range workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Timer runs an operation in a loop for a duration, timing one call in
// every sampleEvery individually for the latency percentiles, so that the
// clock reads barely touch the throughput figure.
type Timer struct {
	samples []time.Duration
}

const sampleEvery = 16

// Loop calls op(i) for i = 0, 1, ... until d has passed or ctx is done and
// returns the ops run and the elapsed time.
func (t *Timer) Loop(ctx context.Context, d time.Duration, op func(i int) error) (int64, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(d)
	var n int64
	for {
		for range 64 {
			if n%sampleEvery == 0 {
				t0 := time.Now()
				if err := op(int(n)); err != nil {
					return n, time.Since(start), err
				}
				t.samples = append(t.samples, time.Since(t0))
			} else if err := op(int(n)); err != nil {
				return n, time.Since(start), err
			}
			n++
		}
		if now := time.Now(); now.After(deadline) || ctx.Err() != nil {
			return n, now.Sub(start), ctx.Err()
		}
	}
}

// Percentile returns the p-th percentile (0..100) of the sampled latencies
// in microseconds.
func (t *Timer) Percentile(p float64) float64 {
	if len(t.samples) == 0 {
		return 0
	}
	s := slices.Clone(t.samples)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return float64(s[max(0, min(i, len(s)-1))].Nanoseconds()) / 1e3
}

// throughputResult fills the common fields of a timed loop.
func throughputResult(workload string, drivers int, t *Timer, ops int64, elapsed time.Duration) Result {
	return Result{
		System: "hexdispatch", Workload: workload, Drivers: drivers,
		OpsPerS: round(float64(ops) / elapsed.Seconds()),
		P50us:   round(t.Percentile(50)), P99us: round(t.Percentile(99)),
		Ops: ops, Seconds: round(elapsed.Seconds()),
	}
}

// round keeps four significant digits (whole numbers stay whole).
func round(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	mag := math.Pow(10, 4-math.Ceil(math.Log10(math.Abs(v))))
	if mag < 1 {
		return math.Round(v)
	}
	return math.Round(v*mag) / mag
}

func writeResult(w io.Writer, r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding result: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
