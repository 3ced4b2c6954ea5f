package positions_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// BenchmarkCellSize measures Nearest (k=10, 2 km) across bucket sizes; it is
// how the default CellSizeM was chosen.
func BenchmarkCellSize(b *testing.B) {
	for _, n := range benchSizes {
		f := newBenchFleet(n, 1)
		for _, size := range []float64{30, 50, 80, 120, 200} {
			b.Run(fmt.Sprintf("drivers=%d/cell=%.0fm", n, size), func(b *testing.B) {
				cfg := positions.DefaultConfig()
				cfg.TTL = time.Hour
				cfg.CellSizeM = size
				x, err := positions.NewIndex(cfg)
				if err != nil {
					b.Fatal(err)
				}
				for i := range f.IDs {
					x.Upsert(f.IDs[i], f.Pos[i], f.Statuses[i], 1, time.Time{})
				}
				rng := rand.New(rand.NewPCG(4, 5))
				city := sim.SanFrancisco()
				qs := make([]geo.LatLng, 1<<12)
				for i := range qs {
					qs[i] = city.Point(rng)
				}
				var buf []positions.Candidate
				b.ResetTimer()
				for i := range b.N {
					buf, _ = x.AppendNearest(buf[:0], qs[i&(len(qs)-1)], 10, 2000, positions.Available)
				}
			})
		}
	}
}
