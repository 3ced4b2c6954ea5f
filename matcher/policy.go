package matcher

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// Policy names a matching policy.
type Policy string

// Policies.
const (
	PolicyGreedy  Policy = "greedy"  // each request gets the best free driver now
	PolicyBatched Policy = "batched" // requests of a region are planned together per window
)

// Valid reports whether p is a known policy.
func (p Policy) Valid() bool { return p == PolicyGreedy || p == PolicyBatched }

// PolicyStats counts one policy's matches.
type PolicyStats struct {
	Requests, Matched, NoDriver, Errors uint64
	ETASum                              time.Duration // of the matched
	// ETACounts[i] counts matched requests whose pickup ETA is at most
	// ETABuckets[i] (and above the bucket before); the last counts the
	// rest.
	ETACounts [len(ETABuckets) + 1]uint64
}

// ETABuckets are the upper bounds of the pickup-ETA histogram of each
// policy (its p90 is read from them).
var ETABuckets = [...]time.Duration{30 * time.Second, time.Minute, 90 * time.Second, 2 * time.Minute,
	3 * time.Minute, 4 * time.Minute, 5 * time.Minute, 7 * time.Minute, 10 * time.Minute, 15 * time.Minute, 20 * time.Minute}

// ETAQuantile returns the upper bound of the bucket holding quantile q of
// the matched requests' pickup ETAs (0 with none; the last bucket reads as
// its lower bound).
func (s PolicyStats) ETAQuantile(q float64) time.Duration {
	var total uint64
	for _, n := range s.ETACounts {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var cum uint64
	for i, n := range s.ETACounts {
		cum += n
		if cum >= rank && i < len(ETABuckets) {
			return ETABuckets[i]
		}
	}
	return ETABuckets[len(ETABuckets)-1]
}

// Switch routes each request to the policy of its region (its shard cell):
// a per-region override, else the default. Ops change either while it
// runs; requests already waiting keep the policy they started with.
//
// Concurrency: policiesMu guards the policies; counters are atomic.
type Switch struct {
	greedy  *Greedy
	batcher *Batcher
	pt      positions.Partitioner

	policiesMu sync.RWMutex
	def        Policy
	byRegion   map[geo.Cell]Policy

	stats map[Policy]*policyCounters
}

type policyCounters struct {
	requests, matched, noDriver, errs, eta atomic.Uint64
	etaCounts                              [len(ETABuckets) + 1]atomic.Uint64
}

// NewSwitch returns a Switch with default policy def.
func NewSwitch(g *Greedy, b *Batcher, pt positions.Partitioner, def Policy) (*Switch, error) {
	if !def.Valid() {
		return nil, fmt.Errorf("%w: policy %q (want greedy or batched)", ErrInvalidConfig, def)
	}
	if g == nil || b == nil {
		return nil, fmt.Errorf("%w: a switch needs both policies", ErrInvalidConfig)
	}
	return &Switch{greedy: g, batcher: b, pt: pt, def: def, byRegion: make(map[geo.Cell]Policy),
		stats: map[Policy]*policyCounters{PolicyGreedy: {}, PolicyBatched: {}}}, nil
}

// PolicyFor returns the policy of the region of pickup.
func (s *Switch) PolicyFor(pickup geo.LatLng) Policy {
	_, region, err := s.pt.ForPos(pickup)
	s.policiesMu.RLock()
	defer s.policiesMu.RUnlock()
	if p, ok := s.byRegion[region]; ok && err == nil {
		return p
	}
	return s.def
}

// SetDefault sets the policy of regions without an override.
func (s *Switch) SetDefault(p Policy) error {
	if !p.Valid() {
		return fmt.Errorf("%w: policy %q (want greedy or batched)", ErrInvalidConfig, p)
	}
	s.policiesMu.Lock()
	s.def = p
	s.policiesMu.Unlock()
	return nil
}

// SetRegion overrides the policy of one region (a cell at the shard
// resolution); an empty policy removes the override.
func (s *Switch) SetRegion(region geo.Cell, p Policy) error {
	if err := geo.CheckCell(region); err != nil {
		return err
	}
	if region.Resolution() != s.pt.ShardRes {
		return fmt.Errorf("%w: region %s is at resolution %d, shards are at %d", ErrInvalidConfig, region, region.Resolution(), s.pt.ShardRes)
	}
	if p != "" && !p.Valid() {
		return fmt.Errorf("%w: policy %q (want greedy or batched)", ErrInvalidConfig, p)
	}
	s.policiesMu.Lock()
	defer s.policiesMu.Unlock()
	if p == "" {
		delete(s.byRegion, region)
	} else {
		s.byRegion[region] = p
	}
	return nil
}

// Policies returns the default and the overrides.
func (s *Switch) Policies() (Policy, map[geo.Cell]Policy) {
	s.policiesMu.RLock()
	defer s.policiesMu.RUnlock()
	return s.def, maps.Clone(s.byRegion)
}

// Match runs the request's region's policy.
func (s *Switch) Match(ctx context.Context, req MatchRequest) (Match, error) {
	p := s.PolicyFor(req.Pickup)
	c := s.stats[p]
	c.requests.Add(1)
	var m Match
	var err error
	if p == PolicyBatched {
		m, err = s.batcher.Match(ctx, req)
	} else {
		m, err = s.greedy.Match(ctx, req)
	}
	switch {
	case err == nil:
		c.matched.Add(1)
		c.eta.Add(uint64(m.ETA))
		i, _ := slices.BinarySearch(ETABuckets[:], m.ETA)
		c.etaCounts[i].Add(1)
	case errors.Is(err, ErrNoDriver):
		c.noDriver.Add(1)
	default:
		c.errs.Add(1)
	}
	return m, err
}

// Stats returns the counters of policy p.
func (s *Switch) Stats(p Policy) PolicyStats {
	c, ok := s.stats[p]
	if !ok {
		return PolicyStats{}
	}
	st := PolicyStats{Requests: c.requests.Load(), Matched: c.matched.Load(), NoDriver: c.noDriver.Load(),
		Errors: c.errs.Load(), ETASum: time.Duration(c.eta.Load())}
	for i := range st.ETACounts {
		st.ETACounts[i] = c.etaCounts[i].Load()
	}
	return st
}

// Greedy returns the greedy policy, for its statistics.
func (s *Switch) Greedy() *Greedy { return s.greedy }

// Batcher returns the batched policy, for its window statistics.
func (s *Switch) Batcher() *Batcher { return s.batcher }
