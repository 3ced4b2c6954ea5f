package matcher_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

type transport int

const (
	transportInProcess transport = iota
	transportHTTP1
	transportH2C
)

// benchGathererOver builds the bench city: 100k drivers over 30 x 30 km,
// 12 partitions at shard res 6 over 3 owners, in-process as `-role all`
// holds them or, with an RPC transport, served over loopback HTTP as three
// worker processes would be.
func benchGathererOver(b *testing.B, tr transport) (*matcher.Gatherer, geo.LatLng) {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 1))
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 12}
	cl := newCluster(b, pt, 3)
	center := geo.LatLng{Lat: 37.7749, Lng: -122.4194}
	cl.scatter(b, rng, center, 30_000, 100_000)
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	var owners matcher.Owners = cl.owners()
	if tr != transportInProcess {
		owners, _ = rpcClusterWith(b, cl, tr == transportH2C)
	}
	g, err := matcher.NewGatherer(owners, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return g, center
}

func BenchmarkGather(b *testing.B) { benchmarkGather(b, transportInProcess) }

// BenchmarkGatherRPC is BenchmarkGather with the owners behind the worker
// query RPC on loopback (HTTP/1.1 keep-alive).
func BenchmarkGatherRPC(b *testing.B) { benchmarkGather(b, transportHTTP1) }

// BenchmarkGatherRPCH2C is BenchmarkGatherRPC over unencrypted HTTP/2.
func BenchmarkGatherRPCH2C(b *testing.B) { benchmarkGather(b, transportH2C) }

func benchmarkGather(b *testing.B, tr transport) {
	g, center := benchGathererOver(b, tr)
	cfg := g.Config()
	cfg.Probe = false
	noProbe, err := matcher.NewGatherer(g.Owners(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(2, 2))
	pickups := make([]geo.LatLng, 4096)
	for i := range pickups {
		pickups[i] = offset(center, (rng.Float64()-0.5)*28_000, (rng.Float64()-0.5)*28_000)
	}
	ctx := context.Background()
	serial := func(g *matcher.Gatherer) func(b *testing.B) {
		return func(b *testing.B) {
			var partial int
			lat := make([]time.Duration, 0, 1<<16)
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				res, err := g.Gather(ctx, pickups[i%len(pickups)], 5)
				if err != nil {
					b.Fatal(err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, time.Since(start))
				}
				if res.Partial {
					partial++
				}
			}
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			}
			b.ReportMetric(float64(partial), "partial")
		}
	}
	b.Run("serial", serial(g))
	b.Run("serial-noprobe", serial(noProbe))
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(rand.Uint64(), 3))
			for pb.Next() {
				if _, err := g.Gather(ctx, pickups[r.IntN(len(pickups))], 5); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
