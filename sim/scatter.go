package sim

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/hexdispatch/hexdispatch/geo"
)

// Hotspot is a Gaussian concentration of points around Center.
type Hotspot struct {
	Center geo.LatLng
	SigmaM float64 // standard deviation in metres
	Weight float64 // relative share of points
}

// Scatter places points over a city: a uniform share over BBox plus
// Gaussian hot spots, all clipped to BBox. It models where drivers wait and
// riders ask, for benchmarks and synthetic runs.
type Scatter struct {
	BBox          geo.BBox
	UniformWeight float64
	Hotspots      []Hotspot
}

// SanFrancisco is the benchmark city: San Francisco's bbox with hot spots at
// the Financial District, SoMa, the Mission and the Marina.
func SanFrancisco() Scatter {
	return Scatter{
		BBox:          geo.BBox{MinLat: 37.70, MinLng: -122.52, MaxLat: 37.81, MaxLng: -122.36},
		UniformWeight: 0.4,
		Hotspots: []Hotspot{
			{Center: geo.LatLng{Lat: 37.7946, Lng: -122.3999}, SigmaM: 600, Weight: 0.25},
			{Center: geo.LatLng{Lat: 37.7785, Lng: -122.4056}, SigmaM: 800, Weight: 0.15},
			{Center: geo.LatLng{Lat: 37.7599, Lng: -122.4148}, SigmaM: 700, Weight: 0.12},
			{Center: geo.LatLng{Lat: 37.8037, Lng: -122.4368}, SigmaM: 500, Weight: 0.08},
		},
	}
}

// Validate checks s.
func (s Scatter) Validate() error {
	if err := s.BBox.Validate(); err != nil {
		return err
	}
	total := s.UniformWeight
	if s.UniformWeight < 0 || math.IsNaN(s.UniformWeight) {
		return fmt.Errorf("sim: uniform weight %v must be >= 0", s.UniformWeight)
	}
	for i, h := range s.Hotspots {
		if err := h.Center.Validate(); err != nil {
			return fmt.Errorf("sim: hotspot %d: %w", i, err)
		}
		if !(h.SigmaM > 0) || !(h.Weight >= 0) {
			return fmt.Errorf("sim: hotspot %d: sigma %v must be > 0 and weight %v >= 0", i, h.SigmaM, h.Weight)
		}
		total += h.Weight
	}
	if !(total > 0) {
		return fmt.Errorf("sim: weights sum to %v, want > 0", total)
	}
	return nil
}

// Point draws one point. s must be valid.
func (s Scatter) Point(rng *rand.Rand) geo.LatLng {
	total := s.UniformWeight
	for _, h := range s.Hotspots {
		total += h.Weight
	}
	for {
		w := rng.Float64() * total
		if w < s.UniformWeight || len(s.Hotspots) == 0 {
			return s.uniform(rng)
		}
		w -= s.UniformWeight
		h := s.Hotspots[len(s.Hotspots)-1]
		for _, c := range s.Hotspots {
			if w < c.Weight {
				h = c
				break
			}
			w -= c.Weight
		}
		const mPerDeg = geo.EarthRadiusM * math.Pi / 180
		p := geo.LatLng{
			Lat: h.Center.Lat + rng.NormFloat64()*h.SigmaM/mPerDeg,
			Lng: h.Center.Lng + rng.NormFloat64()*h.SigmaM/(mPerDeg*math.Cos(h.Center.Lat*math.Pi/180)),
		}
		if s.BBox.Contains(p) {
			return p
		}
	}
}

func (s Scatter) uniform(rng *rand.Rand) geo.LatLng {
	b := s.BBox
	return geo.LatLng{
		Lat: b.MinLat + rng.Float64()*(b.MaxLat-b.MinLat),
		Lng: b.MinLng + rng.Float64()*(b.MaxLng-b.MinLng),
	}
}
