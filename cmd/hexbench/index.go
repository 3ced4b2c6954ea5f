package main

import (
	"context"
	"math/rand/v2"
	"runtime"
	"strconv"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// The index workloads run positions.Index alone: the in-memory ceiling of
// one shard, in the benchmark city (uniform plus hot spots over San
// Francisco, 80% of drivers available).

func init() {
	register(Workload{Name: "index-upsert", Sized: true, Run: runIndexUpsert, RedisPeer: redisIndexUpsert})
	register(Workload{Name: "index-knn", Sized: true, Run: runIndexKNN, RedisPeer: redisIndexKNN})
	register(Workload{Name: "index-memory", Sized: true, Run: runIndexMemory, RedisPeer: redisIndexMemory})
}

// fleet is the benchmark city's drivers.
type fleet = sim.Fleet

func newFleet(n int, seed uint64) fleet { return sim.NewFleet(sim.SanFrancisco(), n, seed) }

// benchIndex holds every driver of f with a TTL no run outlives.
func benchIndex(f fleet) (*positions.Index, error) {
	cfg := positions.DefaultConfig()
	cfg.TTL = 24 * time.Hour
	x, err := positions.NewIndex(cfg)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for i := range f.IDs {
		if _, err := x.Upsert(f.IDs[i], f.Pos[i], f.Statuses[i], 1, now); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// runIndexUpsert moves random drivers by a GPS step (up to about 40 m)
// with a fresh seq each time.
func runIndexUpsert(ctx context.Context, env Env) ([]Result, error) {
	f := newFleet(env.Drivers, env.Seed)
	x, err := benchIndex(f)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 11))
	const m = 1 << 16
	who := make([]int32, m)
	step := make([]geo.LatLng, m)
	for i := range m {
		who[i] = int32(rng.IntN(env.Drivers))
		step[i] = geo.LatLng{Lat: (rng.Float64() - 0.5) * 7e-4, Lng: (rng.Float64() - 0.5) * 9e-4}
	}
	seqs := make([]uint64, env.Drivers)
	now := time.Now()
	var t Timer
	ops, elapsed, err := t.Loop(ctx, env.Duration, func(i int) error {
		j := i & (m - 1)
		d := who[j]
		p := f.Pos[d]
		p.Lat += step[j].Lat
		p.Lng += step[j].Lng
		f.Pos[d] = p
		seqs[d]++
		_, err := x.Upsert(f.IDs[d], p, f.Statuses[d], seqs[d]+1, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return []Result{throughputResult("index-upsert", env.Drivers, &t, ops, elapsed)}, nil
}

// runIndexKNN asks for the 10 nearest available drivers within 2 km of
// riders drawn from the same city model.
func runIndexKNN(ctx context.Context, env Env) ([]Result, error) {
	f := newFleet(env.Drivers, env.Seed)
	x, err := benchIndex(f)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 13))
	city := sim.SanFrancisco()
	qs := make([]geo.LatLng, 1<<14)
	for i := range qs {
		qs[i] = city.Point(rng)
	}
	var buf []positions.Candidate
	var t Timer
	ops, elapsed, err := t.Loop(ctx, env.Duration, func(i int) error {
		var err error
		buf, err = x.AppendNearest(buf[:0], qs[i&(len(qs)-1)], 10, 2000, positions.Available)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := throughputResult("index-knn", env.Drivers, &t, ops, elapsed)
	r.Note = "k=10 within 2 km, available drivers"
	return []Result{r}, nil
}

// runIndexMemory reports the heap the index holds per driver: the heap
// after GC with the index filled, less the heap after GC once it is
// dropped. The two readings are taken back to back, so whatever else the
// process frees or allocates while the index fills (a previous workload's
// connections closing, say) does not count. Drivers are generated on the
// fly so that only what the index keeps (IDs included) is counted.
func runIndexMemory(_ context.Context, env Env) ([]Result, error) {
	cfg := positions.DefaultConfig()
	cfg.TTL = 24 * time.Hour
	x, err := positions.NewIndex(cfg)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 7))
	city := sim.SanFrancisco()
	now := time.Now()
	for i := range env.Drivers {
		if _, err := x.Upsert(positions.DriverID("d"+strconv.Itoa(i)), city.Point(rng), positions.StatusAvailable, 1, now); err != nil {
			return nil, err
		}
	}
	full := heapAfterGC()
	runtime.KeepAlive(x)
	empty := heapAfterGC()
	return []Result{{
		System: "hexdispatch", Workload: "index-memory", Drivers: env.Drivers,
		BytesPerDriver: round(float64(int64(full)-int64(empty)) / float64(env.Drivers)),
		Note:           "heap after GC, IDs d0..dN-1 included",
	}}, nil
}

// heapAfterGC is the live heap after two collections (the second frees
// sync.Pool victims, so they cannot vanish between two readings).
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
