package sim

import (
	"math/rand/v2"
	"strconv"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// Fleet is n drivers placed by a Scatter, for benchmarks and synthetic
// runs: driver i is "d<i>", and about one in five is on a trip.
type Fleet struct {
	IDs      []positions.DriverID
	Pos      []geo.LatLng
	Statuses []positions.Status
}

// NewFleet places n drivers with s, deterministically for a seed. s must
// be valid.
func NewFleet(s Scatter, n int, seed uint64) Fleet {
	rng := rand.New(rand.NewPCG(seed, 7))
	f := Fleet{IDs: make([]positions.DriverID, n), Pos: make([]geo.LatLng, n), Statuses: make([]positions.Status, n)}
	for i := range n {
		f.IDs[i] = positions.DriverID("d" + strconv.Itoa(i))
		f.Pos[i] = s.Point(rng)
		f.Statuses[i] = positions.StatusAvailable
		if rng.IntN(5) == 0 {
			f.Statuses[i] = positions.StatusOnTrip
		}
	}
	return f
}
