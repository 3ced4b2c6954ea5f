package matcher_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// lockedIndex is the smallest Querier: one Index behind a mutex, owning
// every partition. The cell Worker is the real one.
type lockedIndex struct {
	mu sync.Mutex
	x  *positions.Index
}

func (l *lockedIndex) Nearest(_ context.Context, req positions.NearestRequest) (positions.NearestResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.x.Nearest(req.Center, req.K, req.RadiusM, req.Filter)
	return positions.NearestResponse{Candidates: c}, err
}

func (l *lockedIndex) CellCounts(_ context.Context, req positions.CellCountsRequest) (positions.CellCountsResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.x.CellCounts(req.Res, req.Filter)
	return positions.CellCountsResponse{Counts: c}, err
}

// A gather in `-role all`: every partition is answered in-process.
func ExampleGatherer() {
	x, _ := positions.NewIndex(positions.DefaultConfig())
	now := time.Now()
	x.Upsert("near", geo.LatLng{Lat: 40.7590, Lng: -73.9845}, positions.StatusAvailable, 1, now)
	x.Upsert("busy", geo.LatLng{Lat: 40.7581, Lng: -73.9856}, positions.StatusOnTrip, 1, now)
	x.Upsert("far", geo.LatLng{Lat: 40.7700, Lng: -73.9700}, positions.StatusAvailable, 1, now)

	g, err := matcher.NewGatherer(matcher.LocalOwners{Querier: &lockedIndex{x: x}}, matcher.DefaultGatherConfig())
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := g.Gather(context.Background(), geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 2)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range res.Candidates {
		fmt.Printf("%s %.0f m\n", c.ID, c.DistanceM)
	}
	fmt.Println("partial:", res.Partial)
	// Output:
	// near 139 m
	// far 1867 m
	// partial: false
}

// The invariant checker reads a log of commits and releases; tests and
// the simulation share it.
func ExampleCheckNoDoubleAssignment() {
	var log matcher.AssignmentLog
	log.Committed("d1", "r1", 10)
	log.Released("d1", "r1", 10)
	log.Committed("d1", "r2", 11)
	fmt.Println(log.Check())
	log.Committed("d1", "r3", 12)
	fmt.Println(log.Check())
	// Output:
	// <nil>
	// event 3: driver d1 committed to ride r3 while committed to ride r2
}
