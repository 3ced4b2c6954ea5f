package sim_test

import (
	"math/rand/v2"
	"testing"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/sim"
)

func TestScatterStaysInBBoxAndConcentrates(t *testing.T) {
	s := sim.SanFrancisco()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	fidi := s.Hotspots[0].Center
	near := 0
	const n = 20000
	for range n {
		p := s.Point(rng)
		if !s.BBox.Contains(p) {
			t.Fatalf("point %v outside %+v", p, s.BBox)
		}
		if geo.DistanceM(p, fidi) < 600 {
			near++
		}
	}
	// A uniform spread would put about 0.6% of points within 600 m of the
	// hot spot (1.13 km² of 170 km²); the hot spot puts far more there.
	if near < n/20 {
		t.Fatalf("only %d of %d points near the hot spot", near, n)
	}
}

func TestScatterValidate(t *testing.T) {
	bad := []sim.Scatter{
		{BBox: geo.BBox{MinLat: 1, MaxLat: 0}},
		{BBox: geo.BBox{MaxLat: 1, MaxLng: 1}, UniformWeight: -1},
		{BBox: geo.BBox{MaxLat: 1, MaxLng: 1}},
		{BBox: geo.BBox{MaxLat: 1, MaxLng: 1}, Hotspots: []sim.Hotspot{{SigmaM: 0, Weight: 1}}},
	}
	for i, s := range bad {
		if s.Validate() == nil {
			t.Errorf("case %d validated", i)
		}
	}
}
