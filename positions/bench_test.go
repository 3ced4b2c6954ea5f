package positions_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

var benchSizes = []int{10_000, 100_000, 1_000_000}

// benchFleet is n drivers in the benchmark city, 80% of them available.
type benchFleet struct{ sim.Fleet }

func newBenchFleet(n int, seed uint64) benchFleet {
	return benchFleet{sim.NewFleet(sim.SanFrancisco(), n, seed)}
}

func (f benchFleet) index(tb testing.TB) (*positions.Index, *fakeClock) {
	tb.Helper()
	x, clk := newTestIndex(tb, time.Hour)
	for i := range f.IDs {
		if _, err := x.Upsert(f.IDs[i], f.Pos[i], f.Statuses[i], 1, clk.Now()); err != nil {
			tb.Fatal(err)
		}
	}
	return x, clk
}

// BenchmarkUpsert moves random drivers by a GPS step (up to ~40 m, what a
// car covers between two pings) with a fresh seq.
func BenchmarkUpsert(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("drivers=%d", n), func(b *testing.B) {
			f := newBenchFleet(n, 1)
			x, clk := f.index(b)
			rng := rand.New(rand.NewPCG(2, 3))
			const m = 1 << 16
			who := make([]int32, m)
			step := make([]geo.LatLng, m)
			for i := range m {
				who[i] = int32(rng.IntN(n))
				step[i] = geo.LatLng{Lat: (rng.Float64() - 0.5) * 7e-4, Lng: (rng.Float64() - 0.5) * 9e-4}
			}
			seq := uint64(1)
			now := clk.Now()
			b.ResetTimer()
			for i := range b.N {
				j := i & (m - 1)
				d := who[j]
				p := f.Pos[d]
				p.Lat += step[j].Lat
				p.Lng += step[j].Lng
				if i&(m-1) == 0 {
					seq++
				}
				if _, err := x.Upsert(f.IDs[d], p, f.Statuses[d], seq, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNearest asks for the 10 nearest available drivers within 2 km of
// a rider drawn from the same city model.
func BenchmarkNearest(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("drivers=%d", n), func(b *testing.B) {
			f := newBenchFleet(n, 1)
			x, _ := f.index(b)
			rng := rand.New(rand.NewPCG(4, 5))
			city := sim.SanFrancisco()
			const m = 1 << 12
			qs := make([]geo.LatLng, m)
			for i := range qs {
				qs[i] = city.Point(rng)
			}
			var buf []positions.Candidate
			b.ResetTimer()
			for i := range b.N {
				var err error
				buf, err = x.AppendNearest(buf[:0], qs[i&(m-1)], 10, 2000, positions.Available)
				if err != nil || len(buf) != 10 {
					b.Fatalf("got %d candidates, %v", len(buf), err)
				}
			}
		})
	}
}

// BenchmarkMemory reports the heap an Index holds per driver after GC.
func BenchmarkMemory(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("drivers=%d", n), func(b *testing.B) {
			for range b.N {
				b.ReportMetric(bytesPerDriver(b, n), "bytes/driver")
			}
		})
	}
}

// bytesPerDriver builds an index of n drivers, generating each on the fly
// so that only what the index keeps (IDs included) is measured.
func bytesPerDriver(tb testing.TB, n int) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC() // frees sync.Pool victims before the first reading
	runtime.ReadMemStats(&before)
	x, clk := newTestIndex(tb, time.Hour)
	rng := rand.New(rand.NewPCG(1, 7))
	city := sim.SanFrancisco()
	for i := range n {
		if _, err := x.Upsert(positions.DriverID("d"+strconv.Itoa(i)), city.Point(rng), positions.StatusAvailable, 1, clk.Now()); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(x)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}
