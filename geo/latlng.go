package geo

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// LatLng is a WGS84 position in decimal degrees.
//
// The zero value is a valid point (0, 0). A LatLng built by a struct literal
// is not checked; values from outside go through [NewLatLng] or
// [ParseLatLng], or are checked with [LatLng.Validate].
type LatLng struct {
	Lat float64 `json:"lat"`
	Lng float64 `json:"lng"`
}

// NewLatLng returns the position (lat, lng) or an error wrapping
// [ErrInvalidLatLng] that names the offending field.
func NewLatLng(lat, lng float64) (LatLng, error) {
	p := LatLng{Lat: lat, Lng: lng}
	return p, p.Validate()
}

// Validate reports whether p is a finite position with lat in [-90, 90] and
// lng in [-180, 180]. The error names the field ("lat" or "lng").
func (p LatLng) Validate() error {
	if err := checkCoord("lat", p.Lat, 90); err != nil {
		return err
	}
	return checkCoord("lng", p.Lng, 180)
}

func checkCoord(field string, v, limit float64) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Errorf("%w: %s is not a finite number (%v)", ErrInvalidLatLng, field, v)
	case v < -limit || v > limit:
		return fmt.Errorf("%w: %s %v is outside [-%v, %v]", ErrInvalidLatLng, field, v, limit, limit)
	}
	return nil
}

// ParseLatLng parses "lat,lng" (decimal degrees, optional spaces around each
// number) and validates the result.
func ParseLatLng(s string) (LatLng, error) {
	latS, lngS, ok := strings.Cut(s, ",")
	if !ok {
		return LatLng{}, fmt.Errorf("%w: %q is not \"lat,lng\"", ErrInvalidLatLng, s)
	}
	lat, err := parseCoord("lat", latS, 90)
	if err != nil {
		return LatLng{}, err
	}
	lng, err := parseCoord("lng", lngS, 180)
	if err != nil {
		return LatLng{}, err
	}
	return LatLng{Lat: lat, Lng: lng}, nil
}

// parseCoord parses one decimal-degree number for the named field and checks
// it against ±limit. strconv also accepts "Inf", "NaN" and hex floats; the
// range check rejects the first two and bounds the third.
func parseCoord(field, s string, limit float64) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("%w: %s is empty", ErrInvalidLatLng, field)
	}
	if len(s) > 32 {
		return 0, fmt.Errorf("%w: %s is too long (%d bytes)", ErrInvalidLatLng, field, len(s))
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %q is not a number", ErrInvalidLatLng, field, s)
	}
	return v, checkCoord(field, v, limit)
}

// String formats p as "lat,lng" with 7 decimals (about 1 cm), which
// ParseLatLng reads back.
func (p LatLng) String() string {
	return strconv.FormatFloat(p.Lat, 'f', 7, 64) + "," + strconv.FormatFloat(p.Lng, 'f', 7, 64)
}

// E7 is a coordinate in units of 1e-7 degree (about 1.1 cm), the compact
// form the position index and the wire format store.
type E7 int32

// ToE7 rounds a validated p to 1e-7 degree. The round trip ToE7 -> FromE7 ->
// ToE7 is exact.
func (p LatLng) ToE7() (lat, lng E7) {
	return E7(math.Round(p.Lat * 1e7)), E7(math.Round(p.Lng * 1e7))
}

// FromE7 is the inverse of [LatLng.ToE7].
func FromE7(lat, lng E7) LatLng {
	return LatLng{Lat: float64(lat) / 1e7, Lng: float64(lng) / 1e7}
}
