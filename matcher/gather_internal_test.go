package matcher

import (
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

func testSeed(t testing.TB) uint64 {
	t.Helper()
	s := rand.Uint64()
	if v := os.Getenv("SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", v, err)
		}
		s = n
	}
	t.Logf("seed %d (replay with SEED=%d)", s, s)
	return s
}

// destination returns the point d metres from p at bearing theta
// (radians from north) on the sphere.
func destination(p geo.LatLng, d, theta float64) geo.LatLng {
	delta := d / geo.EarthRadiusM
	phi1, lam1 := p.Lat*math.Pi/180, p.Lng*math.Pi/180
	phi2 := math.Asin(math.Sin(phi1)*math.Cos(delta) + math.Cos(phi1)*math.Sin(delta)*math.Cos(theta))
	lam2 := lam1 + math.Atan2(math.Sin(theta)*math.Sin(delta)*math.Cos(phi1), math.Cos(delta)-math.Sin(phi1)*math.Sin(phi2))
	lng := math.Mod(lam2*180/math.Pi+540, 360) - 180
	return geo.LatLng{Lat: phi2 * 180 / math.Pi, Lng: lng}
}

// TestCoverageIsConservative checks the radius a ring is trusted for:
// every point nearer to the pickup than coverageM lies in the ring's
// disk. Pickups are random over the inhabited latitudes, including cell
// corners and edges, where the coverage is smallest.
func TestCoverageIsConservative(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 1))
	pt := positions.Partitioner{ShardRes: 6, Partitions: 8}
	const pickups, bearings = 150, 180
	for k := 1; k <= 3; k++ {
		minCov, sumCov := math.Inf(1), 0.0
		for i := range pickups {
			p := geo.LatLng{Lat: rng.Float64()*140 - 70, Lng: rng.Float64()*360 - 180}
			cell, err := geo.CellAt(p, geo.SearchRes)
			if err != nil {
				t.Fatal(err)
			}
			if i%3 != 0 {
				// Move the pickup onto its cell's boundary: a corner or a
				// point along an edge.
				b, _ := geo.Boundary(cell)
				j := rng.IntN(len(b))
				f := 0.0
				if i%3 == 2 {
					f = rng.Float64()
				}
				a, c := b[j], b[(j+1)%len(b)]
				p = geo.LatLng{Lat: a.Lat + f*(c.Lat-a.Lat), Lng: a.Lng + f*(c.Lng-a.Lng)}
				if cell, err = geo.CellAt(p, geo.SearchRes); err != nil {
					t.Fatal(err)
				}
			}
			pl, err := newPlan(cell, k, pt)
			if err != nil {
				t.Fatal(err)
			}
			cov := pl.coverageM(p)
			minCov, sumCov = min(minCov, cov), sumCov+cov
			disk, _ := geo.Disk(cell, k)
			in := make(map[geo.Cell]bool, len(disk))
			for _, c := range disk {
				in[c] = true
			}
			for j := range bearings {
				theta := (float64(j) + rng.Float64()) * 2 * math.Pi / bearings
				for _, f := range []float64{0.9999, rng.Float64()} {
					q := destination(p, cov*f, theta)
					qc, err := geo.CellAt(q, geo.SearchRes)
					if err != nil {
						t.Fatal(err)
					}
					if !in[qc] {
						t.Fatalf("k=%d pickup %v: point %v at %.1f m (coverage %.1f m) is in cell %s outside the disk",
							k, p, q, geo.DistanceM(p, q), cov, qc)
					}
				}
			}
		}
		t.Logf("k=%d: coverage min %.0f m, mean %.0f m", k, minCov, sumCov/pickups)
		if minCov <= 0 {
			t.Fatalf("k=%d: zero coverage", k)
		}
	}
}
