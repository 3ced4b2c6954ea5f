package main

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// The gather workloads run matcher.Gatherer over the benchmark city split
// into 16 partitions at shard res 6 held by 3 shards: in-process (as in
// -role all) and behind the worker query RPC on loopback HTTP (as api and
// worker processes talk). Pickups come from the same city model; each
// gather asks for the 5 nearest available drivers.

func init() {
	register(Workload{Name: "gather", Sized: true, Run: func(ctx context.Context, env Env) ([]Result, error) {
		return runGather(ctx, env, false)
	}})
	register(Workload{Name: "gather-rpc", Sized: true, Run: func(ctx context.Context, env Env) ([]Result, error) {
		return runGather(ctx, env, true)
	}})
}

// benchShard holds some partitions' indexes behind one mutex: the query
// side of a worker without its Kafka consumer.
type benchShard struct {
	mu      sync.Mutex
	indexes map[positions.Partition]*positions.Index
}

func (s *benchShard) Nearest(_ context.Context, req positions.NearestRequest) (positions.NearestResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var resp positions.NearestResponse
	for _, p := range req.Partitions {
		x, ok := s.indexes[p]
		if !ok {
			resp.Missed = append(resp.Missed, p)
			continue
		}
		var err error
		if resp.Candidates, err = x.AppendNearest(resp.Candidates, req.Center, req.K, req.RadiusM, req.Filter); err != nil {
			return positions.NearestResponse{}, err
		}
	}
	slices.SortFunc(resp.Candidates, func(a, b positions.Candidate) int {
		return cmp.Or(cmp.Compare(a.DistanceM, b.DistanceM), cmp.Compare(a.ID, b.ID))
	})
	resp.Candidates = resp.Candidates[:min(len(resp.Candidates), req.K)]
	return resp, nil
}

func (s *benchShard) CellCounts(context.Context, positions.CellCountsRequest) (positions.CellCountsResponse, error) {
	return positions.CellCountsResponse{}, nil
}

func runGather(ctx context.Context, env Env, rpc bool) ([]Result, error) {
	const nShards, parts = 3, 16
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: parts}
	shards := make([]*benchShard, nShards)
	for i := range shards {
		shards[i] = &benchShard{indexes: map[positions.Partition]*positions.Index{}}
	}
	icfg := positions.DefaultConfig()
	icfg.TTL = 24 * time.Hour
	for p := range positions.Partition(parts) {
		x, err := positions.NewIndex(icfg)
		if err != nil {
			return nil, err
		}
		shards[int(p)%nShards].indexes[p] = x
	}
	f := newFleet(env.Drivers, env.Seed)
	now := time.Now()
	for i := range f.IDs {
		p, _, err := pt.ForPos(f.Pos[i])
		if err != nil {
			return nil, err
		}
		if _, err := shards[int(p)%nShards].indexes[p].Upsert(f.IDs[i], f.Pos[i], f.Statuses[i], 1, now); err != nil {
			return nil, err
		}
	}
	owners := make(matcher.StaticOwners)
	if rpc {
		hc := matcher.DefaultRPCHTTPClient()
		defer hc.CloseIdleConnections()
		for i, s := range shards {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			srv := &http.Server{Handler: matcher.NewRPCHandler(s), ReadHeaderTimeout: 5 * time.Second}
			go srv.Serve(ln)
			defer srv.Close()
			c := matcher.NewRPCClient(ln.Addr().String(), hc)
			for p := range s.indexes {
				owners[p] = matcher.OwnerRef{Name: fmt.Sprintf("shard%d", i), Querier: c}
			}
		}
	} else {
		for i, s := range shards {
			for p := range s.indexes {
				owners[p] = matcher.OwnerRef{Name: fmt.Sprintf("shard%d", i), Querier: s}
			}
		}
	}
	gc := matcher.DefaultGatherConfig()
	gc.Partitioner = pt
	g, err := matcher.NewGatherer(owners, gc)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 17))
	city := sim.SanFrancisco()
	qs := make([]geo.LatLng, 1<<12)
	for i := range qs {
		qs[i] = city.Point(rng)
	}
	// One loop per GOMAXPROCS, as concurrent ride requests would run.
	workers := runtime.GOMAXPROCS(0)
	timers := make([]Timer, workers)
	counts := make([]int64, workers)
	errs := make([]error, workers)
	partial := make([]int64, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[w], _, errs[w] = timers[w].Loop(ctx, env.Duration, func(i int) error {
				res, err := g.Gather(ctx, qs[(i*workers+w)&(len(qs)-1)], 5)
				if res.Partial {
					partial[w]++
				}
				return err
			})
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all Timer
	var ops, missed int64
	for w := range workers {
		if errs[w] != nil {
			return nil, errs[w]
		}
		ops += counts[w]
		all.samples = append(all.samples, timers[w].samples...)
	}
	for _, p := range partial {
		missed += p
	}
	name, note := "gather", "5 nearest, 3 in-process shards, 16 partitions"
	if rpc {
		name, note = "gather-rpc", "5 nearest, 3 shards behind the query RPC on loopback HTTP"
	}
	r := throughputResult(name, env.Drivers, &all, ops, elapsed)
	r.Note = fmt.Sprintf("%s, %d concurrent loops, %d partial", note, workers, missed)
	return []Result{r}, nil
}
