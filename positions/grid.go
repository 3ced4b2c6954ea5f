package positions

import (
	"math"

	"github.com/hexdispatch/hexdispatch/geo"
)

// The index buckets drivers in a grid of rows of equal latitude height.
// Each row is split into as many columns as keep a cell at least as wide (in
// metres, at the row's pole-ward edge) as it is tall, so cells stay roughly
// square from the equator to the poles and a search never has to walk
// thousands of sliver cells near a pole. Columns wrap at the antimeridian.
//
// A grid beat both an R-tree and H3-cell buckets for this workload; see
// BenchmarkStructures in structures_test.go for the measurement.

const degToRad = math.Pi / 180

// grid is the pure geometry of the bucket grid; it holds no drivers.
type grid struct {
	cellDeg float64 // row height in degrees of latitude
	nrows   int32
}

func newGrid(cellSizeM float64) grid {
	cellDeg := cellSizeM / (geo.EarthRadiusM * degToRad)
	return grid{cellDeg: cellDeg, nrows: int32(math.Ceil(180 / cellDeg))}
}

func (g grid) row(latDeg float64) int32 {
	r := int32((latDeg + 90) / g.cellDeg)
	return min(max(r, 0), g.nrows-1)
}

// rowLat returns the latitude span of row r in radians.
func (g grid) rowLat(r int32) (lo, hi float64) {
	lo = (-90 + float64(r)*g.cellDeg) * degToRad
	hi = min(90, -90+float64(r+1)*g.cellDeg) * degToRad
	return lo, hi
}

// ncols returns the number of columns of row r.
func (g grid) ncols(r int32) int32 {
	lo, hi := g.rowLat(r)
	c := math.Cos(max(math.Abs(lo), math.Abs(hi)))
	return max(1, int32(360*c/g.cellDeg))
}

// colOf returns the unwrapped column of lngDeg in a row of n columns; it may
// lie outside [0, n) for lng outside [-180, 180).
func colOf(lngDeg float64, n int32) int64 {
	return int64(math.Floor((lngDeg + 180) / 360 * float64(n)))
}

func wrapCol(c int64, n int32) int32 {
	c %= int64(n)
	if c < 0 {
		c += int64(n)
	}
	return int32(c)
}

func cellKey(row, col int32) uint64 { return uint64(row)<<32 | uint64(uint32(col)) }

// key returns the cell of a validated position.
func (g grid) key(p geo.LatLng) uint64 {
	r := g.row(p.Lat)
	n := g.ncols(r)
	return cellKey(r, wrapCol(colOf(p.Lng, n), n))
}

// hav is the haversine function sin²(x/2).
func hav(x float64) float64 {
	s := math.Sin(x / 2)
	return s * s
}

// havOfDistance maps a distance in metres to haversine space, where
// comparisons need no inverse trigonometry.
func havOfDistance(m float64) float64 {
	if m >= math.Pi*geo.EarthRadiusM {
		return 1
	}
	return hav(m / geo.EarthRadiusM)
}

// sinLowerHalfSq returns a lower bound of sin²(y) for y in [0, π/2], cheap
// enough for the inner loop: sin y >= y - y³/6 there, and both sides are
// non-negative.
func sinLowerSq(y float64) float64 {
	v := y - y*y*y/6
	return v * v
}

// capHalfWidth returns the largest longitude offset, in degrees, of any point
// within angular distance delta (radians) of a point at latitude phi
// (radians), or 180 when the cap reaches a pole.
func capHalfWidth(delta, phi float64) float64 {
	if delta >= math.Pi/2-math.Abs(phi) {
		return 180
	}
	s := math.Sin(delta) / math.Cos(phi)
	if s >= 1 {
		return 180
	}
	return math.Asin(s) / degToRad
}
