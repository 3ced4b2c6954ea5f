package geo

import (
	"fmt"
	"strconv"
	"strings"
)

// BBox is a latitude/longitude rectangle. It does not cross the antimeridian
// (MinLng <= MaxLng); cities never need that.
type BBox struct {
	MinLat, MinLng, MaxLat, MaxLng float64
}

// Validate checks that both corners are valid positions and that the box is
// not inverted.
func (b BBox) Validate() error {
	if err := (LatLng{b.MinLat, b.MinLng}).Validate(); err != nil {
		return fmt.Errorf("%w: min corner: %w", ErrInvalidBBox, err)
	}
	if err := (LatLng{b.MaxLat, b.MaxLng}).Validate(); err != nil {
		return fmt.Errorf("%w: max corner: %w", ErrInvalidBBox, err)
	}
	if b.MinLat > b.MaxLat {
		return fmt.Errorf("%w: min lat %v > max lat %v", ErrInvalidBBox, b.MinLat, b.MaxLat)
	}
	if b.MinLng > b.MaxLng {
		return fmt.Errorf("%w: min lng %v > max lng %v", ErrInvalidBBox, b.MinLng, b.MaxLng)
	}
	return nil
}

// ParseBBox parses "minLat,minLng,maxLat,maxLng" and validates it.
func ParseBBox(s string) (BBox, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return BBox{}, fmt.Errorf("%w: %q is not \"minLat,minLng,maxLat,maxLng\"", ErrInvalidBBox, s)
	}
	var v [4]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return BBox{}, fmt.Errorf("%w: value %d %q is not a number", ErrInvalidBBox, i+1, p)
		}
		v[i] = f
	}
	b := BBox{MinLat: v[0], MinLng: v[1], MaxLat: v[2], MaxLng: v[3]}
	return b, b.Validate()
}

// Contains reports whether p lies in b, edges included.
func (b BBox) Contains(p LatLng) bool {
	return p.Lat >= b.MinLat && p.Lat <= b.MaxLat && p.Lng >= b.MinLng && p.Lng <= b.MaxLng
}

// Extend returns the smallest box holding b and p. The zero BBox is not
// empty, so start from [EmptyBBox].
func (b BBox) Extend(p LatLng) BBox {
	return BBox{
		MinLat: min(b.MinLat, p.Lat), MinLng: min(b.MinLng, p.Lng),
		MaxLat: max(b.MaxLat, p.Lat), MaxLng: max(b.MaxLng, p.Lng),
	}
}

// EmptyBBox is the identity for Extend.
var EmptyBBox = BBox{MinLat: 91, MinLng: 181, MaxLat: -91, MaxLng: -181}

// Center returns the middle of b.
func (b BBox) Center() LatLng {
	return LatLng{Lat: (b.MinLat + b.MaxLat) / 2, Lng: (b.MinLng + b.MaxLng) / 2}
}
