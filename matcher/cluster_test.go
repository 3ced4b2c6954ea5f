package matcher_test

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// t0 is the fixed clock of the test indexes: nothing expires.
var t0 = time.Unix(1_800_000_000, 0)

// shard is a test owner: real positions.Index values, one per owned
// partition, behind a mutex (the Worker uses one goroutine per partition;
// a mutex is the simplest owner for a test).
type shard struct {
	name string

	mu      sync.Mutex
	indexes map[positions.Partition]*positions.Index
	block   bool // Nearest waits for ctx to end: a hung owner
	fail    error
	calls   int
}

func newShard(name string) *shard {
	return &shard{name: name, indexes: make(map[positions.Partition]*positions.Index)}
}

func (s *shard) index(t testing.TB, p positions.Partition) *positions.Index {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.indexes[p]
	if !ok {
		cfg := positions.DefaultConfig()
		cfg.Now = func() time.Time { return t0 }
		var err error
		if x, err = positions.NewIndex(cfg); err != nil {
			t.Fatal(err)
		}
		s.indexes[p] = x
	}
	return x
}

func (s *shard) setBlock(b bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.block = b
}

func (s *shard) Nearest(ctx context.Context, req positions.NearestRequest) (positions.NearestResponse, error) {
	s.mu.Lock()
	s.calls++
	block, fail := s.block, s.fail
	s.mu.Unlock()
	if block {
		<-ctx.Done()
		return positions.NearestResponse{}, ctx.Err()
	}
	if fail != nil {
		return positions.NearestResponse{}, fail
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var resp positions.NearestResponse
	for _, p := range req.Partitions {
		x, ok := s.indexes[p]
		if !ok {
			resp.Missed = append(resp.Missed, p)
			continue
		}
		var err error
		resp.Candidates, err = x.AppendNearest(resp.Candidates, req.Center, req.K, req.RadiusM, req.Filter)
		if err != nil {
			return positions.NearestResponse{}, err
		}
	}
	slices.SortFunc(resp.Candidates, func(a, b positions.Candidate) int {
		if c := cmp.Compare(a.DistanceM, b.DistanceM); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(resp.Candidates) > req.K {
		resp.Candidates = resp.Candidates[:req.K]
	}
	return resp, nil
}

func (s *shard) CellCounts(context.Context, positions.CellCountsRequest) (positions.CellCountsResponse, error) {
	return positions.CellCountsResponse{}, nil
}

// testDriver is a driver as the brute force sees it.
type testDriver struct {
	id     positions.DriverID
	pos    geo.LatLng // as stored (1e-7 degrees)
	status positions.Status
	part   positions.Partition
}

// cluster is drivers spread over partitions, partitions over shards, by
// the publisher's own Partitioner.
type cluster struct {
	pt      positions.Partitioner
	shards  []*shard
	owner   map[positions.Partition]*shard
	drivers []testDriver
}

func newCluster(t testing.TB, pt positions.Partitioner, nShards int) *cluster {
	c := &cluster{pt: pt, owner: make(map[positions.Partition]*shard)}
	for i := range nShards {
		c.shards = append(c.shards, newShard(fmt.Sprintf("shard%d", i)))
	}
	for p := range positions.Partition(pt.Partitions) {
		c.owner[p] = c.shards[int(p)%nShards]
		c.owner[p].index(t, p) // an owner holds its partitions, empty or not
	}
	return c
}

func (c *cluster) add(t testing.TB, id positions.DriverID, pos geo.LatLng, st positions.Status) {
	t.Helper()
	lat, lng := pos.ToE7()
	pos = geo.FromE7(lat, lng)
	p, _, err := c.pt.ForPos(pos)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.owner[p].index(t, p).Upsert(id, pos, st, 1, t0); err != nil {
		t.Fatal(err)
	}
	c.drivers = append(c.drivers, testDriver{id: id, pos: pos, status: st, part: p})
}

func (c *cluster) owners() matcher.StaticOwners {
	o := make(matcher.StaticOwners)
	for p, s := range c.owner {
		o[p] = matcher.OwnerRef{Name: s.name, Querier: s}
	}
	return o
}

// bruteNearest returns the available drivers by distance from p (ties by
// ID), the answer a gather must reproduce.
func (c *cluster) bruteNearest(p geo.LatLng) []positions.Candidate {
	var out []positions.Candidate
	for _, d := range c.drivers {
		if d.status != positions.StatusAvailable {
			continue
		}
		out = append(out, positions.Candidate{Driver: positions.Driver{ID: d.id, Pos: d.pos, Status: d.status}, DistanceM: geo.DistanceM(p, d.pos)})
	}
	slices.SortFunc(out, func(a, b positions.Candidate) int {
		if c := cmp.Compare(a.DistanceM, b.DistanceM); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

func (c *cluster) partitionOf(id positions.DriverID) positions.Partition {
	for _, d := range c.drivers {
		if d.id == id {
			return d.part
		}
	}
	return -1
}

// scatter places n drivers uniformly in a square of side sideM around
// center; a tenth are not available.
func (c *cluster) scatter(t testing.TB, rng *rand.Rand, center geo.LatLng, sideM float64, n int) {
	t.Helper()
	for i := range n {
		st := positions.StatusAvailable
		if rng.IntN(10) == 0 {
			st = positions.StatusOnTrip
		}
		c.add(t, positions.DriverID(fmt.Sprintf("d%05d", i)), offset(center, (rng.Float64()-0.5)*sideM, (rng.Float64()-0.5)*sideM), st)
	}
}

// offset moves p by east and north metres (flat approximation; only the
// spread of test data depends on it).
func offset(p geo.LatLng, east, north float64) geo.LatLng {
	const mPerDeg = geo.EarthRadiusM * math.Pi / 180
	return geo.LatLng{Lat: p.Lat + north/mPerDeg, Lng: wrapLng(p.Lng + east/(mPerDeg*math.Cos(p.Lat*math.Pi/180)))}
}

// wrapLng folds a longitude back into [-180, 180): test cities near the
// antimeridian offset past it.
func wrapLng(lng float64) float64 {
	return math.Mod(math.Mod(lng+180, 360)+360, 360) - 180
}

// onCellEdge returns a point on the boundary of p's search cell.
func onCellEdge(t testing.TB, rng *rand.Rand, p geo.LatLng) geo.LatLng {
	t.Helper()
	c, err := geo.CellAt(p, geo.SearchRes)
	if err != nil {
		t.Fatal(err)
	}
	b, err := geo.Boundary(c)
	if err != nil {
		t.Fatal(err)
	}
	i := rng.IntN(len(b))
	f := rng.Float64()
	a, z := b[i], b[(i+1)%len(b)]
	dLng := z.Lng - a.Lng
	if dLng > 180 { // the edge crosses the antimeridian: go the short way
		dLng -= 360
	} else if dLng < -180 {
		dLng += 360
	}
	return geo.LatLng{Lat: a.Lat + f*(z.Lat-a.Lat), Lng: wrapLng(a.Lng + f*dLng)}
}
