package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// mixed runs position updates and k-nearest queries at once on one
// positions.Index, as a partition's owner goroutine sees them: nine moves
// (a GPS step of up to about 40 m with a fresh seq) then one query (the 10
// nearest available drivers within 2 km of a rider drawn from the city
// model), over and over on one goroutine. It reports both rates; their
// ratio is fixed at 9:1, so the mix costs what it costs and neither side
// can be starved to flatter the other.
//
// With -peer redis the same stream goes to Redis GEO: GEOADD to one key
// per status (a competent client keeps the available drivers apart, as
// Redis GEO has no per-member status) and GEOSEARCH on the available key,
// pipelined mixedBatch operations per round trip (Redis's best case, as in
// index-upsert). Two query clients, as in index-knn: one 2 km GEOSEARCH,
// and the careful client that starts at 250 m and doubles until it has 10
// (each doubling round is one more pipelined round trip for the queries
// still short). The ratio table compares us with the faster of the two.

func init() {
	register(Workload{Name: "mixed", Sized: true, Run: runMixed, RedisPeer: redisMixed})
}

const (
	mixedQueryEvery = 10 // op i is a query when i%mixedQueryEvery == mixedQueryEvery-1
	mixedBatch      = 64 // Redis ops per pipelined round trip
	mixedK          = 10
	mixedRadiusM    = 2000
)

// mixedOps is the precomputed stream both systems run: who moves and by
// how much, and where riders ask.
type mixedOps struct {
	who   []int32
	step  []geo.LatLng
	query []geo.LatLng
}

const mixedOpsLen = 1 << 16

func newMixedOps(drivers int, seed uint64) mixedOps {
	rng := rand.New(rand.NewPCG(seed, 17))
	city := sim.SanFrancisco()
	o := mixedOps{who: make([]int32, mixedOpsLen), step: make([]geo.LatLng, mixedOpsLen), query: make([]geo.LatLng, mixedOpsLen)}
	for i := range mixedOpsLen {
		o.who[i] = int32(rng.IntN(drivers))
		o.step[i] = geo.LatLng{Lat: (rng.Float64() - 0.5) * 7e-4, Lng: (rng.Float64() - 0.5) * 9e-4}
		o.query[i] = city.Point(rng)
	}
	return o
}

func isMixedQuery(i int) bool { return i%mixedQueryEvery == mixedQueryEvery-1 }

// mixedResult splits ops run in elapsed seconds into the two rates.
func mixedResult(system string, drivers int, ops int64, seconds float64, note string) Result {
	queries := ops / mixedQueryEvery
	return Result{
		System: system, Workload: "mixed", Drivers: drivers,
		OpsPerS:     round(float64(ops) / seconds),
		UpdatesPerS: round(float64(ops-queries) / seconds),
		QueriesPerS: round(float64(queries) / seconds),
		Ops:         ops, Seconds: round(seconds), Note: note,
	}
}

func runMixed(ctx context.Context, env Env) ([]Result, error) {
	f := newFleet(env.Drivers, env.Seed)
	x, err := benchIndex(f)
	if err != nil {
		return nil, err
	}
	o := newMixedOps(env.Drivers, env.Seed)
	seqs := make([]uint64, env.Drivers)
	var buf []positions.Candidate
	now := time.Now()
	var t Timer
	ops, elapsed, err := t.Loop(ctx, env.Duration, func(i int) error {
		j := i & (mixedOpsLen - 1)
		if isMixedQuery(i) {
			var err error
			buf, err = x.AppendNearest(buf[:0], o.query[j], mixedK, mixedRadiusM, positions.Available)
			return err
		}
		d := o.who[j]
		p := f.Pos[d]
		p.Lat += o.step[j].Lat
		p.Lng += o.step[j].Lng
		f.Pos[d] = p
		seqs[d]++
		_, err := x.Upsert(f.IDs[d], p, f.Statuses[d], seqs[d]+1, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The sampled latencies would be the moves' only (every 16th op is
	// never a query), so the result carries rates alone.
	return []Result{mixedResult("hexdispatch", env.Drivers, ops, elapsed.Seconds(),
		"9 moves : 1 query (k=10 within 2 km, available), one goroutine")}, nil
}

// redisMixed runs the same stream against Redis GEO with both query
// clients.
func redisMixed(ctx context.Context, env Env, p *redisPeer) ([]Result, error) {
	var out []Result
	for _, careful := range []bool{false, true} {
		f := newFleet(env.Drivers, env.Seed)
		if err := p.Client.FlushAll(ctx).Err(); err != nil {
			return nil, err
		}
		if err := loadGeoByStatus(ctx, p.Client, f); err != nil {
			return nil, err
		}
		o := newMixedOps(env.Drivers, env.Seed)
		pipe := p.Client.Pipeline()
		var searches []*redis.GeoSearchLocationCmd
		var short []int // ops of this batch whose query still has fewer than k
		// One batch can take long (a 2 km GEOSEARCH at 1M drivers sorts
		// thousands of members), so the deadline is checked after each,
		// not after 64 as Timer.Loop does.
		batch := func(b int) error {
			searches, short = searches[:0], short[:0]
			radius := float64(mixedRadiusM)
			if careful {
				radius = 250
			}
			for n := range mixedBatch {
				i := b*mixedBatch + n
				j := i & (mixedOpsLen - 1)
				if isMixedQuery(i) {
					searches = append(searches, geoSearch(ctx, pipe, o.query[j], radius))
					short = append(short, j)
					continue
				}
				d := o.who[j]
				pos := f.Pos[d]
				pos.Lat += o.step[j].Lat
				pos.Lng += o.step[j].Lng
				f.Pos[d] = pos
				pipe.GeoAdd(ctx, statusKey(f.Statuses[d]), &redis.GeoLocation{Name: string(f.IDs[d]), Longitude: pos.Lng, Latitude: pos.Lat})
			}
			for {
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
				if !careful || radius >= mixedRadiusM {
					return nil
				}
				// Queries with fewer than k ask again at twice the radius,
				// together in one more round trip.
				radius = min(2*radius, mixedRadiusM)
				next := short[:0]
				prev := searches
				searches = nil
				for s, j := range short {
					if len(prev[s].Val()) < mixedK {
						next = append(next, j)
						searches = append(searches, geoSearch(ctx, pipe, o.query[j], radius))
					}
				}
				short = next
				if len(short) == 0 {
					return nil
				}
			}
		}
		start := time.Now()
		var batches int64
		for time.Since(start) < env.Duration/2 && ctx.Err() == nil {
			if err := batch(int(batches)); err != nil {
				return nil, err
			}
			batches++
		}
		elapsed := time.Since(start)
		note := fmt.Sprintf("GEOADD + GEOSEARCH BYRADIUS %d m ASC COUNT %d, pipelined %d per round trip", mixedRadiusM, mixedK, mixedBatch)
		if careful {
			note = fmt.Sprintf("GEOADD + GEOSEARCH from 250 m, doubling to %d m until %d found, pipelined %d per round trip", mixedRadiusM, mixedK, mixedBatch)
		}
		out = append(out, mixedResult("redis-geo", env.Drivers, batches*mixedBatch, elapsed.Seconds(), note))
	}
	return out, nil
}

// geoSearch queues a k-nearest GEOSEARCH of the available drivers on pipe.
func geoSearch(ctx context.Context, pipe redis.Pipeliner, q geo.LatLng, radiusM float64) *redis.GeoSearchLocationCmd {
	return pipe.GeoSearchLocation(ctx, geoKey, &redis.GeoSearchLocationQuery{
		GeoSearchQuery: redis.GeoSearchQuery{
			Longitude: q.Lng, Latitude: q.Lat, Radius: radiusM, RadiusUnit: "m", Sort: "ASC", Count: mixedK,
		},
		WithDist: true,
	})
}

// statusKey is the GEO key of drivers with status s; geoKey holds the
// available ones.
func statusKey(s positions.Status) string {
	if s == statusAvailable {
		return geoKey
	}
	return "drivers:" + s.String()
}

// loadGeoByStatus adds every driver of f to its status's key.
func loadGeoByStatus(ctx context.Context, c *redis.Client, f fleet) error {
	pipe := c.Pipeline()
	for i := range f.IDs {
		pipe.GeoAdd(ctx, statusKey(f.Statuses[i]), &redis.GeoLocation{Name: string(f.IDs[i]), Longitude: f.Pos[i].Lng, Latitude: f.Pos[i].Lat})
		if i%1000 == 999 {
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
		}
	}
	if pipe.Len() == 0 {
		return nil
	}
	_, err := pipe.Exec(ctx)
	return err
}
