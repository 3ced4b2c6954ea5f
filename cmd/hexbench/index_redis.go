package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// The Redis GEO peers of the index workloads, run by -peer redis. They use
// the same fleet, moves and queries as ours.

const statusAvailable = positions.StatusAvailable

// redisUpsertBatch is how many GEOADDs share one pipelined round trip: the
// best case for Redis, where one client streams positions.
const redisUpsertBatch = 64

func redisIndexUpsert(ctx context.Context, env Env, p *redisPeer) ([]Result, error) {
	f := newFleet(env.Drivers, env.Seed)
	if err := p.Client.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	if _, err := loadGeo(ctx, p.Client, f); err != nil {
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
	pipe := p.Client.Pipeline()
	var t Timer
	batches, elapsed, err := t.Loop(ctx, env.Duration, func(b int) error {
		for j := range redisUpsertBatch {
			k := (b*redisUpsertBatch + j) & (m - 1)
			d := who[k]
			pos := f.Pos[d]
			pos.Lat += step[k].Lat
			pos.Lng += step[k].Lng
			f.Pos[d] = pos
			pipe.GeoAdd(ctx, geoKey, &redis.GeoLocation{Name: string(f.IDs[d]), Longitude: pos.Lng, Latitude: pos.Lat})
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	r := throughputResult("index-upsert", env.Drivers, &t, batches*redisUpsertBatch, elapsed)
	r.System = "redis-geo"
	r.P50us, r.P99us = 0, 0 // a batch's latency is not one update's
	r.Note = fmt.Sprintf("GEOADD pipelined %d per round trip", redisUpsertBatch)
	return []Result{r}, nil
}

// redisIndexKNN runs both clients a Redis user would write: one GEOSEARCH of
// the full 2 km (Redis sorts everything in the radius), and the careful
// client that starts at 250 m and doubles the radius until it has k.
func redisIndexKNN(ctx context.Context, env Env, p *redisPeer) ([]Result, error) {
	f := newFleet(env.Drivers, env.Seed)
	if err := p.Client.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	if _, err := loadGeo(ctx, p.Client, f); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 13))
	city := sim.SanFrancisco()
	qs := make([]geo.LatLng, 1<<14)
	for i := range qs {
		qs[i] = city.Point(rng)
	}
	search := func(q geo.LatLng, radius float64) (int, error) {
		res, err := p.Client.GeoSearchLocation(ctx, geoKey, &redis.GeoSearchLocationQuery{
			GeoSearchQuery: redis.GeoSearchQuery{
				Longitude: q.Lng, Latitude: q.Lat, Radius: radius, RadiusUnit: "m", Sort: "ASC", Count: 10,
			},
			WithDist: true,
		}).Result()
		return len(res), err
	}
	var out []Result
	for _, client := range []struct {
		note string
		op   func(q geo.LatLng) error
	}{
		{"GEOSEARCH BYRADIUS 2000 m ASC COUNT 10", func(q geo.LatLng) error {
			_, err := search(q, 2000)
			return err
		}},
		{"GEOSEARCH from 250 m, doubling to 2000 m until 10 found", func(q geo.LatLng) error {
			for r := 250.0; ; r *= 2 {
				n, err := search(q, min(r, 2000))
				if err != nil || n >= 10 || r >= 2000 {
					return err
				}
			}
		}},
	} {
		var t Timer
		ops, elapsed, err := t.Loop(ctx, env.Duration/2, func(i int) error { return client.op(qs[i&(len(qs)-1)]) })
		if err != nil {
			return nil, err
		}
		r := throughputResult("index-knn", env.Drivers, &t, ops, elapsed)
		r.System = "redis-geo"
		r.Note = client.note
		out = append(out, r)
	}
	return out, nil
}

// redisIndexMemory reports used_memory growth per driver, all drivers in
// one key as the index holds them.
func redisIndexMemory(ctx context.Context, env Env, p *redisPeer) ([]Result, error) {
	if err := p.Client.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	before, err := p.usedMemory(ctx)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(env.Seed, 7))
	city := sim.SanFrancisco()
	pipe := p.Client.Pipeline()
	for i := range env.Drivers {
		q := city.Point(rng)
		pipe.GeoAdd(ctx, "drivers:all", &redis.GeoLocation{Name: "d" + strconv.Itoa(i), Longitude: q.Lng, Latitude: q.Lat})
		if i%1000 == 999 {
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, err
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	after, err := p.usedMemory(ctx)
	if err != nil {
		return nil, err
	}
	return []Result{{
		System: "redis-geo", Workload: "index-memory", Drivers: env.Drivers,
		BytesPerDriver: round(float64(after-before) / float64(env.Drivers)),
		Note:           "INFO used_memory growth, IDs d0..dN-1",
	}}, nil
}
