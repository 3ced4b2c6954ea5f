package geo

import (
	"math"
	"time"
)

// EarthRadiusM is the mean Earth radius (IUGG) used by every distance here.
const EarthRadiusM = 6371008.8

const degToRad = math.Pi / 180

// DistanceM is the great-circle (haversine) distance between a and b in
// metres. It is exact on the sphere and handles the antimeridian and the
// poles; its error against the WGS84 ellipsoid is below 0.5%.
func DistanceM(a, b LatLng) float64 {
	return DistanceFromHaversine(Haversine(a, b))
}

// Haversine returns hav(θ) = sin²(θ/2) of the central angle θ between a and
// b, in [0, 1]. It grows with distance, so code that only compares
// distances can skip the inverse trigonometry of DistanceM.
func Haversine(a, b LatLng) float64 {
	return NewOrigin(a).Haversine(b)
}

// Origin is a point with its trigonometry cached, for measuring many
// points from it. Origin.Haversine(b) == Haversine(origin, b) exactly.
type Origin struct {
	p           LatLng
	phi, cosPhi float64
}

// NewOrigin returns p as an Origin.
func NewOrigin(p LatLng) Origin {
	phi := p.Lat * degToRad
	return Origin{p: p, phi: phi, cosPhi: math.Cos(phi)}
}

// Haversine returns hav of the central angle between o and b.
func (o Origin) Haversine(b LatLng) float64 {
	phi2 := b.Lat * degToRad
	sdPhi := math.Sin((phi2 - o.phi) / 2)
	sdLam := math.Sin((b.Lng - o.p.Lng) * degToRad / 2)
	return min(1, sdPhi*sdPhi+o.cosPhi*math.Cos(phi2)*sdLam*sdLam)
}

// DistanceFromHaversine converts a Haversine value to metres:
// DistanceM(a, b) == DistanceFromHaversine(Haversine(a, b)) exactly.
func DistanceFromHaversine(h float64) float64 {
	return 2 * EarthRadiusM * math.Asin(math.Sqrt(h))
}

// ETAFunc estimates the driving time from a driver at from to a pickup at to.
// Implementations must be safe for concurrent use. A road-network router
// plugs in here.
type ETAFunc func(from, to LatLng) time.Duration

// StraightLineETA estimates driving time as great-circle distance times a
// detour factor (streets are not straight lines) divided by a city speed.
type StraightLineETA struct {
	// DetourFactor multiplies the straight-line distance. Manhattan-style
	// grids are close to 1.3-1.4.
	DetourFactor float64
	// SpeedMPS is the average driving speed in metres per second.
	SpeedMPS float64
}

// DefaultETA is a city-wide default: 1.35 detour, 25 km/h.
var DefaultETA = StraightLineETA{DetourFactor: 1.35, SpeedMPS: 25 / 3.6}

// ETA implements ETAFunc.
func (e StraightLineETA) ETA(from, to LatLng) time.Duration {
	return e.ForDistance(DistanceM(from, to))
}

// ForDistance returns the estimate for a straight-line distance in metres.
func (e StraightLineETA) ForDistance(m float64) time.Duration {
	if e.SpeedMPS <= 0 {
		return 0
	}
	return time.Duration(m * e.DetourFactor / e.SpeedMPS * float64(time.Second))
}
