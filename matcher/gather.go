package matcher

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// GatherConfig configures a Gatherer.
type GatherConfig struct {
	// Partitioner maps cells to partitions. It must be the publisher's
	// (same ShardRes, same Partitions), or drivers are looked for in the
	// wrong shards.
	Partitioner positions.Partitioner
	// MinCandidates is the N a gather tries to reach before it stops
	// growing the ring.
	MinCandidates int
	// MaxRing is the largest grid distance k gathered around the pickup's
	// search cell.
	MaxRing int
	// MaxRadiusM caps the search radius: a driver farther than this is
	// never offered.
	MaxRadiusM float64
	// Deadline bounds a whole gather, all rings included. Owners that have
	// not answered by then are reported missed.
	Deadline time.Duration
	// Filter selects the drivers; matching wants Available.
	Filter positions.Filter
	// DupSlack is added to the k asked of each owner, so that a driver
	// seen twice (mid-handoff between shards) does not push a real
	// candidate out of the merged top N.
	DupSlack int
	// Probe asks the partition of the pickup's own search cell first, and
	// the other partitions of the first ring only within the distance of
	// the N-th driver it found. Exact either way; with it the other shards
	// search a few hundred metres instead of the ring's whole radius
	// (their drivers near the pickup are few, so a k-nearest search there
	// runs out to the radius), at the price of a second round trip.
	Probe bool
	// PlanCache bounds the cached per-(cell, ring) plans: partitions to ask
	// and the ring's outer edges. A city has a few thousand search cells;
	// when the cache is full it is emptied and refilled.
	PlanCache int
}

// DefaultGatherConfig returns the design's defaults: the publisher's
// default partitioning (shards at res 6 over 16 partitions), N = 5, rings
// up to 3, 4 km, 50 ms, available drivers.
func DefaultGatherConfig() GatherConfig {
	return GatherConfig{
		Partitioner:   positions.DefaultPublisherConfig().Partitioner,
		MinCandidates: 5,
		MaxRing:       3,
		MaxRadiusM:    4000,
		Deadline:      50 * time.Millisecond,
		Filter:        positions.Available,
		DupSlack:      4,
		Probe:         true,
		PlanCache:     1 << 16,
	}
}

// Validate checks c.
func (c GatherConfig) Validate() error {
	if err := c.Partitioner.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	switch {
	case c.MinCandidates < 1 || c.MinCandidates+c.DupSlack > positions.MaxK:
		return fmt.Errorf("%w: MinCandidates %d + DupSlack %d must be in [1, %d]", ErrInvalidConfig, c.MinCandidates, c.DupSlack, positions.MaxK)
	case c.DupSlack < 0:
		return fmt.Errorf("%w: DupSlack %d is negative", ErrInvalidConfig, c.DupSlack)
	case c.MaxRing < 1 || c.MaxRing > 10:
		return fmt.Errorf("%w: MaxRing %d must be in [1, 10]", ErrInvalidConfig, c.MaxRing)
	case !(c.MaxRadiusM > 0 && c.MaxRadiusM <= 100_000):
		return fmt.Errorf("%w: MaxRadiusM %v must be in (0, 100000]", ErrInvalidConfig, c.MaxRadiusM)
	case c.Deadline <= 0:
		return fmt.Errorf("%w: Deadline %v must be positive", ErrInvalidConfig, c.Deadline)
	case c.PlanCache < 1:
		return fmt.Errorf("%w: PlanCache %d must be positive", ErrInvalidConfig, c.PlanCache)
	}
	return nil
}

// Gatherer finds the drivers nearest a pickup across shards: it asks the
// owners of the partitions under the pickup's search cell and its ring,
// in parallel, with a deadline, and grows the ring until it has enough.
//
// Concurrency: safe for concurrent use. plansMu guards the plan cache;
// everything else is immutable after NewGatherer.
type Gatherer struct {
	cfg    GatherConfig
	owners Owners
	stats  gatherCounters

	plansMu sync.RWMutex
	plans   map[planKey]*plan
}

// NewGatherer returns a Gatherer asking owners.
func NewGatherer(owners Owners, cfg GatherConfig) (*Gatherer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if owners == nil {
		return nil, fmt.Errorf("%w: nil Owners", ErrInvalidConfig)
	}
	return &Gatherer{cfg: cfg, owners: owners, plans: make(map[planKey]*plan)}, nil
}

// Config returns the configuration.
func (g *Gatherer) Config() GatherConfig { return g.cfg }

// GatherStats counts what a Gatherer did since it was made; cmd exports
// them as Prometheus counters.
type GatherStats struct {
	Gathers     uint64 // Gather calls that asked owners
	Partial     uint64 // gathers with at least one missed partition
	Short       uint64 // gathers that ended with fewer than N candidates
	Grown       uint64 // gathers that needed a ring beyond k=1
	OwnerCalls  uint64 // requests to owners
	OwnerErrors uint64 // requests that failed or timed out
	MissedParts uint64 // partitions missed, summed over gathers
}

type gatherCounters struct {
	gathers, partial, short, grown, ownerCalls, ownerErrors, missedParts atomic.Uint64
}

// Stats returns the counters.
func (g *Gatherer) Stats() GatherStats {
	c := &g.stats
	return GatherStats{
		Gathers: c.gathers.Load(), Partial: c.partial.Load(), Short: c.short.Load(), Grown: c.grown.Load(),
		OwnerCalls: c.ownerCalls.Load(), OwnerErrors: c.ownerErrors.Load(), MissedParts: c.missedParts.Load(),
	}
}

// Owners returns the owner table the Gatherer asks.
func (g *Gatherer) Owners() Owners { return g.owners }

// GatherResult is what a gather found.
type GatherResult struct {
	// Candidates are distinct drivers (the freshest seq of each), nearest
	// first (ties by ID), all within RadiusM. Unless Partial, the first N
	// are the true N nearest; any after them are extras the owners sent
	// (useful to fall back on under contention), not a complete list.
	Candidates []positions.Candidate
	// Ring is the grid distance k of the last ring asked.
	Ring int
	// RadiusM is the radius of the last ring: the distance up to which the
	// ring's cells are guaranteed to hold every driver (capped at
	// MaxRadiusM). Fewer than N candidates means fewer than N drivers
	// within it (unless Partial).
	RadiusM float64
	// Answered and Missed are the partitions of the last ring that
	// answered and that did not (no owner, owner down, slow, rebuilding),
	// sorted.
	Answered, Missed []positions.Partition
	// Partial is true when some partition was missed: the candidates are
	// the best of what answered, not necessarily the nearest.
	Partial bool
}

// Gather returns at least n candidates near pickup if the radius allows,
// or all it found (n <= 0 means MinCandidates). It fails only on invalid
// input or when ctx is done before anything was asked; owner failures make
// the result partial instead.
func (g *Gatherer) Gather(ctx context.Context, pickup geo.LatLng, n int) (GatherResult, error) {
	if err := pickup.Validate(); err != nil {
		return GatherResult{}, fmt.Errorf("%w: pickup: %w", ErrInvalidQuery, err)
	}
	if n <= 0 {
		n = g.cfg.MinCandidates
	}
	if n+g.cfg.DupSlack > positions.MaxK {
		return GatherResult{}, fmt.Errorf("%w: n %d is above %d", ErrInvalidQuery, n, positions.MaxK-g.cfg.DupSlack)
	}
	cell, err := geo.CellAt(pickup, geo.SearchRes)
	if err != nil {
		return GatherResult{}, fmt.Errorf("%w: pickup: %w", ErrInvalidQuery, err)
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Deadline)
	defer cancel()

	// Sized for a ring's answer: each owner returns up to n+DupSlack.
	best := make(map[positions.DriverID]positions.Candidate, n+g.cfg.DupSlack)
	var res GatherResult
	for k := 1; k <= g.cfg.MaxRing; k++ {
		pl, err := g.plan(cell, k)
		if err != nil {
			return GatherResult{}, err
		}
		radius := min(pl.coverageM(pickup), g.cfg.MaxRadiusM)
		res.Ring, res.RadiusM = k, radius
		req := positions.NearestRequest{Center: pickup, K: n + g.cfg.DupSlack, RadiusM: radius, Filter: g.cfg.Filter}
		if k == 1 && g.cfg.Probe && len(pl.parts) > 1 {
			// The probe gets half the deadline: a hung owner of the home
			// partition must not starve the rest of the ring.
			pctx, pcancel := context.WithTimeout(ctx, g.cfg.Deadline/2)
			ans, miss := g.ask(pctx, []positions.Partition{pl.home}, req, best)
			pcancel()
			if d, ok := nthDistance(best, n); ok {
				req.RadiusM = min(radius, d)
			}
			rest := slices.DeleteFunc(slices.Clone(pl.parts), func(p positions.Partition) bool { return p == pl.home })
			ans2, miss2 := g.ask(ctx, rest, req, best)
			res.Answered = mergeSorted(ans, ans2)
			res.Missed = mergeSorted(miss, miss2)
		} else {
			res.Answered, res.Missed = g.ask(ctx, pl.parts, req, best)
		}
		within := 0
		for _, c := range best {
			if c.DistanceM <= radius {
				within++
			}
		}
		if within >= n || radius >= g.cfg.MaxRadiusM || ctx.Err() != nil {
			break
		}
	}
	res.Partial = len(res.Missed) > 0
	g.stats.gathers.Add(1)
	if res.Partial {
		g.stats.partial.Add(1)
		g.stats.missedParts.Add(uint64(len(res.Missed)))
	}
	if res.Ring > 1 {
		g.stats.grown.Add(1)
	}
	res.Candidates = make([]positions.Candidate, 0, len(best))
	for _, c := range best {
		if c.DistanceM <= res.RadiusM {
			res.Candidates = append(res.Candidates, c)
		}
	}
	slices.SortFunc(res.Candidates, func(a, b positions.Candidate) int {
		if c := cmp.Compare(a.DistanceM, b.DistanceM); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	if len(res.Candidates) < n {
		g.stats.short.Add(1)
	}
	return res, nil
}

// ask fans req out to the owners of parts, one request per owner, and
// merges the answers into best. Every goroutine it starts has returned
// when it returns: Queriers honour ctx (the Querier contract), so the
// deadline bounds the wait.
func (g *Gatherer) ask(ctx context.Context, parts []positions.Partition, req positions.NearestRequest, best map[positions.DriverID]positions.Candidate) (answered, missed []positions.Partition) {
	groups, missing := g.owners.Lookup(ctx, parts)
	missed = append(missed, missing...)
	type reply struct {
		group int
		resp  positions.NearestResponse
		err   error
	}
	replies := make([]reply, len(groups))
	call := func(i int) {
		r := req
		r.Partitions = groups[i].Partitions
		resp, err := groups[i].Querier.Nearest(ctx, r)
		replies[i] = reply{group: i, resp: resp, err: err}
	}
	if len(groups) == 1 {
		call(0) // in-process or a single owner: no goroutine to pay for
	} else {
		var wg sync.WaitGroup
		for i := range groups {
			wg.Go(func() { call(i) })
		}
		wg.Wait()
	}
	g.stats.ownerCalls.Add(uint64(len(groups)))
	for _, r := range replies {
		grp := groups[r.group]
		if r.err != nil {
			g.stats.ownerErrors.Add(1)
			missed = append(missed, grp.Partitions...)
			g.owners.Stale(grp.Owner, grp.Partitions)
			continue
		}
		if len(r.resp.Missed) > 0 {
			missed = append(missed, r.resp.Missed...)
			g.owners.Stale(grp.Owner, r.resp.Missed)
		}
		for _, p := range grp.Partitions {
			if !slices.Contains(r.resp.Missed, p) {
				answered = append(answered, p)
			}
		}
		for _, c := range r.resp.Candidates {
			if old, ok := best[c.ID]; !ok || c.Seq > old.Seq {
				best[c.ID] = c
			}
		}
	}
	slices.Sort(answered)
	slices.Sort(missed)
	return answered, slices.Compact(missed)
}

// nthDistance returns the distance of the n-th nearest candidate in best.
func nthDistance(best map[positions.DriverID]positions.Candidate, n int) (float64, bool) {
	if len(best) < n {
		return 0, false
	}
	ds := make([]float64, 0, len(best))
	for _, c := range best {
		ds = append(ds, c.DistanceM)
	}
	slices.Sort(ds)
	return ds[n-1], true
}

// mergeSorted merges two sorted partition lists without duplicates.
func mergeSorted(a, b []positions.Partition) []positions.Partition {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

type planKey struct {
	cell geo.Cell
	k    int
}

// plan is what a gather of one ring around one search cell needs: the
// partitions under the disk, and the edges of the ring just outside it.
type plan struct {
	home  positions.Partition // the partition of the centre cell
	parts []positions.Partition
	// outer holds the edges of the cells at grid distance k+1, as pairs of
	// corners. The nearest point outside the disk lies on one of them.
	outer [][2]geo.LatLng
}

func (g *Gatherer) plan(cell geo.Cell, k int) (*plan, error) {
	key := planKey{cell, k}
	g.plansMu.RLock()
	pl, ok := g.plans[key]
	g.plansMu.RUnlock()
	if ok {
		return pl, nil
	}
	pl, err := newPlan(cell, k, g.cfg.Partitioner)
	if err != nil {
		return nil, err
	}
	g.plansMu.Lock()
	if len(g.plans) >= g.cfg.PlanCache {
		clear(g.plans)
	}
	g.plans[key] = pl
	g.plansMu.Unlock()
	return pl, nil
}

func newPlan(cell geo.Cell, k int, pt positions.Partitioner) (*plan, error) {
	disk, err := geo.Disk(cell, k)
	if err != nil {
		return nil, err
	}
	home, err := pt.ForCell(cell)
	if err != nil {
		return nil, err
	}
	pl := &plan{home: home}
	for _, c := range disk {
		p, err := pt.ForCell(c)
		if err != nil {
			return nil, err
		}
		pl.parts = append(pl.parts, p)
	}
	slices.Sort(pl.parts)
	pl.parts = slices.Compact(pl.parts)

	// Ring k+1 by difference of disks: GridRing fails near pentagons,
	// GridDisk does not.
	outer, err := geo.Disk(cell, k+1)
	if err != nil {
		return nil, err
	}
	inDisk := make(map[geo.Cell]bool, len(disk))
	for _, c := range disk {
		inDisk[c] = true
	}
	for _, c := range outer {
		if inDisk[c] {
			continue
		}
		b, err := geo.Boundary(c)
		if err != nil {
			return nil, err
		}
		for i := range b {
			pl.outer = append(pl.outer, [2]geo.LatLng{b[i], b[(i+1)%len(b)]})
		}
	}
	return pl, nil
}

// Coverage margins. The distance to the outer edges is computed in a
// local equirectangular plane around the pickup, which at these distances
// (a few km, cities below 75° latitude) is within 0.5% of the
// great-circle distance; the margin doubles that and adds a metre for the
// centimetre rounding of stored positions.
const (
	coverageRelMargin  = 0.01
	coverageAbsMarginM = 1.0
	metresPerDegree    = geo.EarthRadiusM * math.Pi / 180
)

// coverageM is the guaranteed coverage of the plan's disk from p: every
// point nearer than this lies in a cell of the disk, so a driver nearer
// than it sits in one of the plan's partitions.
//
// It is computed per pickup, not taken from a constant: a pickup at its
// cell's centre is covered for about 2 edge lengths at k=1, one at a
// corner only for about one edge length; a constant would have to assume
// the corner everywhere. The test TestCoverageIsConservative checks it
// against H3 for random points.
func (pl *plan) coverageM(p geo.LatLng) float64 {
	cosLat := math.Cos(p.Lat * math.Pi / 180)
	best := math.Inf(1)
	for _, e := range pl.outer {
		ax, ay := project(p, e[0], cosLat)
		bx, by := project(p, e[1], cosLat)
		best = min(best, segmentDist2(ax, ay, bx, by))
	}
	d := math.Sqrt(best)
	return max(0, d*(1-coverageRelMargin)-coverageAbsMarginM)
}

// project maps q into metres east and north of p.
func project(p, q geo.LatLng, cosLat float64) (x, y float64) {
	dLng := q.Lng - p.Lng
	if dLng > 180 {
		dLng -= 360
	} else if dLng < -180 {
		dLng += 360
	}
	return dLng * cosLat * metresPerDegree, (q.Lat - p.Lat) * metresPerDegree
}

// segmentDist2 is the squared distance from the origin to segment ab.
func segmentDist2(ax, ay, bx, by float64) float64 {
	dx, dy := bx-ax, by-ay
	l2 := dx*dx + dy*dy
	t := 0.0
	if l2 > 0 {
		t = min(1, max(0, -(ax*dx+ay*dy)/l2))
	}
	x, y := ax+t*dx, ay+t*dy
	return x*x + y*y
}
