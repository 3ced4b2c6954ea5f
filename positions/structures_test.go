package positions_test

// BenchmarkStructures is the measurement behind the Index's design: a grid
// of buckets against the two other candidates the design allowed, an R-tree
// (tidwall/rtree) and buckets keyed by H3 cell, on the same fleet and the
// same workload. Run with GOMAXPROCS=1:
//
//	go test -run '^$' -bench Structures ./positions
//
// Measured on the 2-core development machine (ns/op, 100k | 1M drivers):
//
//	grid  upsert 216 | 696   nearest k=10 2 km   3,801 |     9,628
//	rtree upsert 581 | 1,173 nearest             14,658 |    20,146
//	h3    upsert 524 | 696   nearest            348,825 | 5,732,776
//
// The R-tree pays a delete and an insert per move and a priority queue per
// query. H3 buckets pay a cgo call per upsert, and at the index resolution
// (res 9, 0.1 km²) a hot-spot bucket holds hundreds of drivers that each
// need an exact distance; finer cells would cut the scan but not the cgo
// call. The grid needs neither.

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/rtree"
	"github.com/uber/h3-go/v4"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// spatial is the part of the workload all three structures serve.
type spatial interface {
	upsert(i int32, p geo.LatLng)
	nearest(c geo.LatLng, k int, radiusM float64) int
}

// gridIndex is the real Index.
type gridIndex struct {
	x   *positions.Index
	ids []positions.DriverID
	seq uint64
	buf []positions.Candidate
}

func (g *gridIndex) upsert(i int32, p geo.LatLng) {
	g.seq++
	g.x.Upsert(g.ids[i], p, positions.StatusAvailable, g.seq, time.Time{})
}

func (g *gridIndex) nearest(c geo.LatLng, k int, r float64) int {
	g.buf, _ = g.x.AppendNearest(g.buf[:0], c, k, r, positions.Filter{})
	return len(g.buf)
}

// rtreeIndex keeps points in an R-tree keyed by degrees, with the longitude
// scaled by cos(latitude) at query time so Nearby visits in metric order.
type rtreeIndex struct {
	tr  rtree.RTreeG[int32]
	pos []geo.LatLng
}

func (r *rtreeIndex) upsert(i int32, p geo.LatLng) {
	old := r.pos[i]
	if old != (geo.LatLng{}) {
		r.tr.Delete([2]float64{old.Lng, old.Lat}, [2]float64{old.Lng, old.Lat}, i)
	}
	r.pos[i] = p
	r.tr.Insert([2]float64{p.Lng, p.Lat}, [2]float64{p.Lng, p.Lat}, i)
}

func (r *rtreeIndex) nearest(c geo.LatLng, k int, radius float64) int {
	const mPerDeg = geo.EarthRadiusM * math.Pi / 180
	kx := math.Cos(c.Lat*math.Pi/180) * mPerDeg
	n := 0
	r.tr.Nearby(func(min, max [2]float64, _ int32, _ bool) float64 {
		dx := math.Max(0, math.Max(min[0]-c.Lng, c.Lng-max[0])) * kx
		dy := math.Max(0, math.Max(min[1]-c.Lat, c.Lat-max[1])) * mPerDeg
		return dx*dx + dy*dy
	}, func(_, _ [2]float64, i int32, d float64) bool {
		if d > radius*radius {
			return false
		}
		_ = geo.DistanceM(c, r.pos[i]) // the exact distance a caller needs
		n++
		return n < k
	})
	return n
}

// h3Index buckets drivers by their resolution-9 H3 cell and searches k-rings
// outward.
type h3Index struct {
	cell  []h3.Cell
	pos   []geo.LatLng
	cells map[h3.Cell][]int32
}

func (h *h3Index) upsert(i int32, p geo.LatLng) {
	c, _ := h3.LatLngToCell(h3.LatLng{Lat: p.Lat, Lng: p.Lng}, 9)
	h.pos[i] = p
	if old := h.cell[i]; old == c {
		return
	} else if old != 0 {
		b := h.cells[old]
		j := slices.Index(b, i)
		b[j] = b[len(b)-1]
		h.cells[old] = b[:len(b)-1]
	}
	h.cell[i] = c
	h.cells[c] = append(h.cells[c], i)
}

func (h *h3Index) nearest(c geo.LatLng, k int, radius float64) int {
	origin, _ := h3.LatLngToCell(h3.LatLng{Lat: c.Lat, Lng: c.Lng}, 9)
	type cand struct {
		d float64
		i int32
	}
	var found []cand
	// A res-9 cell's inradius is about 150 m, so ring r is at least
	// (r-1)*2*150 m away.
	const ringM = 2 * 150.0
	for r := 0; float64(r-1)*ringM <= radius; r++ {
		ring, err := h3.GridRing(origin, r)
		if err != nil {
			break
		}
		for _, cell := range ring {
			for _, i := range h.cells[cell] {
				if d := geo.DistanceM(c, h.pos[i]); d <= radius {
					found = append(found, cand{d, i})
				}
			}
		}
		if len(found) >= k {
			slices.SortFunc(found, func(a, b cand) int { return cmp.Compare(a.d, b.d) })
			if found[k-1].d <= float64(r)*ringM {
				return k
			}
		}
	}
	return min(k, len(found))
}

func BenchmarkStructures(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		f := newBenchFleet(n, 1)
		rng := rand.New(rand.NewPCG(4, 5))
		city := sim.SanFrancisco()
		qs := make([]geo.LatLng, 1<<12)
		for i := range qs {
			qs[i] = city.Point(rng)
		}
		moves := make([]int32, 1<<16)
		for i := range moves {
			moves[i] = int32(rng.IntN(n))
		}
		builders := []struct {
			name string
			make func() spatial
		}{
			{"grid", func() spatial {
				x, _ := newTestIndex(b, time.Hour)
				return &gridIndex{x: x, ids: f.IDs}
			}},
			{"rtree", func() spatial { return &rtreeIndex{pos: make([]geo.LatLng, n)} }},
			{"h3", func() spatial {
				return &h3Index{cell: make([]h3.Cell, n), pos: make([]geo.LatLng, n), cells: map[h3.Cell][]int32{}}
			}},
		}
		for _, bl := range builders {
			s := bl.make()
			for i := range f.Pos {
				s.upsert(int32(i), f.Pos[i])
			}
			b.Run(fmt.Sprintf("%s/upsert/drivers=%d", bl.name, n), func(b *testing.B) {
				for i := range b.N {
					d := moves[i&(len(moves)-1)]
					p := f.Pos[d]
					p.Lat += float64(i&7-4) * 5e-5
					s.upsert(d, p)
				}
			})
			b.Run(fmt.Sprintf("%s/nearest/drivers=%d", bl.name, n), func(b *testing.B) {
				for i := range b.N {
					if s.nearest(qs[i&(len(qs)-1)], 10, 2000) != 10 {
						b.Fatal("fewer than 10 found")
					}
				}
			})
		}
	}
}
