package matcher

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// The batch planner is the pure core of the batched policy: given one
// region's window of open requests and the candidates gathered for them, it
// decides who should get which driver. Collecting the window, gathering and
// reserving are the policy loop's job; the plan is only advice to the
// reservation step, which stays the single authority on who holds a driver.

// BatchConfig configures the batched policy.
type BatchConfig struct {
	// Window is how long a region collects requests before planning them;
	// no request waits longer than one window.
	Window time.Duration
	// MaxPickupETA makes pairs with a longer estimated pickup infeasible:
	// such a driver is never planned for the rider.
	MaxPickupETA time.Duration
	// Fallbacks is how many drivers a rider's offer list holds after the
	// assigned one, cheapest first.
	Fallbacks int
	// MaxRiders bounds a window; the policy loop closes a window early
	// when it is full. Plan rejects a larger window.
	MaxRiders int
	// MaxCandidates is how many of each rider's cheapest feasible
	// candidates enter the cost matrix. With the riders bound it caps the
	// matrix at MaxRiders x (MaxRiders*MaxCandidates) pairs.
	MaxCandidates int
}

// DefaultBatchConfig returns a 2 s window, a 15 min pickup limit, two
// fallbacks, at most 256 riders a window and 16 candidates a rider (a
// worst-case matrix of 8 MB; real windows are far smaller).
func DefaultBatchConfig() BatchConfig {
	return BatchConfig{
		Window:        2 * time.Second,
		MaxPickupETA:  15 * time.Minute,
		Fallbacks:     2,
		MaxRiders:     256,
		MaxCandidates: 16,
	}
}

// Validate checks c.
func (c BatchConfig) Validate() error {
	switch {
	case c.Window <= 0 || c.Window > time.Minute:
		return fmt.Errorf("%w: batch Window %v must be in (0, 1m]", ErrInvalidConfig, c.Window)
	case c.MaxPickupETA <= 0 || c.MaxPickupETA > 2*time.Hour:
		return fmt.Errorf("%w: batch MaxPickupETA %v must be in (0, 2h]", ErrInvalidConfig, c.MaxPickupETA)
	case c.Fallbacks < 0 || c.Fallbacks > 16:
		return fmt.Errorf("%w: batch Fallbacks %d must be in [0, 16]", ErrInvalidConfig, c.Fallbacks)
	case c.MaxRiders < 1 || c.MaxRiders > 4096:
		return fmt.Errorf("%w: batch MaxRiders %d must be in [1, 4096]", ErrInvalidConfig, c.MaxRiders)
	case c.MaxCandidates < 1 || c.MaxCandidates > positions.MaxK:
		return fmt.Errorf("%w: batch MaxCandidates %d must be in [1, %d]", ErrInvalidConfig, c.MaxCandidates, positions.MaxK)
	}
	return nil
}

// BatchRequest is one open request of a window with the candidates
// gathered for it. Candidates of different requests may overlap; a driver
// listed twice (across requests or shards) counts once, at its freshest
// seq's position.
type BatchRequest struct {
	Ride       RideID
	Pickup     geo.LatLng
	At         time.Time // when the rider asked: greedy serves in this order
	Candidates []positions.Candidate
}

// BatchOffer is the plan for one request.
type BatchOffer struct {
	Ride RideID
	// Drivers is the order to try: when Assigned, Drivers[0] is the
	// solver's choice and no other offer of the plan holds it as its
	// choice; the rest are fallbacks, cheapest first, that the solver gave
	// to nobody (two riders may share a fallback: the reservation decides).
	// Empty when the rider lost every feasible driver to riders the plan
	// could not otherwise serve, or had none; the policy loop carries such
	// a rider to the next window.
	Drivers []positions.DriverID
	// ETAs are the pickup estimates of Drivers, aligned.
	ETAs     []time.Duration
	Assigned bool
}

// BatchPolicyStats is what one policy achieves on a window.
type BatchPolicyStats struct {
	Assigned int           // riders given a driver
	TotalETA time.Duration // sum of their pickup ETAs
	MeanETA  time.Duration // TotalETA / Assigned, 0 when none
}

// BatchStats describes one planned window: both policies are computed on
// the same cost matrix, so the gain is measured per window.
type BatchStats struct {
	Riders int // window size
	// Drivers is the number of distinct candidate drivers and Shared how
	// many of them were feasible for two riders or more: the contention
	// the batch resolves.
	Drivers, Shared int
	Pairs           int           // feasible rider-driver pairs in the matrix
	BuildTime       time.Duration // building the cost matrix
	SolveTime       time.Duration // the min-cost assignment alone
	Batched, Greedy BatchPolicyStats
	// GainAssigned is Batched.Assigned - Greedy.Assigned (never negative)
	// and GainMeanETA is Greedy.MeanETA - Batched.MeanETA (positive when
	// batching picks riders up sooner; it can be negative when batching
	// serves more riders, the extra ones with longer pickups).
	GainAssigned int
	GainMeanETA  time.Duration
}

// BatchPlan is the planner's answer for one window.
type BatchPlan struct {
	Offers []BatchOffer // one per request, in request order
	Stats  BatchStats
}

// Check verifies the plan's invariants: no driver is the assigned choice
// of two offers, no fallback is another offer's assigned choice, no offer
// lists a driver twice, and ETAs align with Drivers. Tests and the
// simulation call it.
func (p *BatchPlan) Check() error {
	owner := make(map[positions.DriverID]RideID)
	for _, o := range p.Offers {
		if len(o.ETAs) != len(o.Drivers) {
			return fmt.Errorf("ride %q: %d drivers but %d ETAs", o.Ride, len(o.Drivers), len(o.ETAs))
		}
		if o.Assigned && len(o.Drivers) == 0 {
			return fmt.Errorf("ride %q: assigned without a driver", o.Ride)
		}
		if !o.Assigned {
			continue
		}
		d := o.Drivers[0]
		if other, dup := owner[d]; dup {
			return fmt.Errorf("driver %q assigned to rides %q and %q", d, other, o.Ride)
		}
		owner[d] = o.Ride
	}
	for _, o := range p.Offers {
		seen := make(map[positions.DriverID]bool, len(o.Drivers))
		for k, d := range o.Drivers {
			if seen[d] {
				return fmt.Errorf("ride %q lists driver %q twice", o.Ride, d)
			}
			seen[d] = true
			if other, ok := owner[d]; ok && other != o.Ride {
				return fmt.Errorf("ride %q lists driver %q (position %d), assigned to ride %q", o.Ride, d, k, other)
			}
			if k == 0 && o.Assigned && owner[d] != o.Ride {
				return fmt.Errorf("ride %q: first driver %q is not its assignment", o.Ride, d)
			}
		}
	}
	return nil
}

// BatchPlanner plans windows. It keeps its buffers between windows, so it
// is not safe for concurrent use: each region's batch loop owns one.
type BatchPlanner struct {
	cfg    BatchConfig
	eta    geo.ETAFunc
	solver Solver

	m       CostMatrix
	opt     Assignment
	greedy  Assignment
	taken   []bool
	order   []int // request index of each row: arrival order
	index   map[positions.DriverID]int
	drivers []positions.Candidate // distinct candidates, freshest copy of each
	pairs   []batchPair           // feasible pairs kept for the matrix
	colOf   []int32               // per driver: its matrix column, or -1
	colDrv  []int32               // per column: its driver
	riders  []int                 // per column: feasible riders
	cands   []colETA              // scratch: one rider's fallback columns
}

type batchPair struct {
	row, drv int32
	eta      float64 // seconds
}

type colETA struct {
	col int
	eta float64 // seconds
}

// NewBatchPlanner returns a planner estimating pickups with eta (nil means
// geo.DefaultETA).
func NewBatchPlanner(cfg BatchConfig, eta geo.ETAFunc) (*BatchPlanner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if eta == nil {
		eta = geo.DefaultETA.ETA
	}
	return &BatchPlanner{
		cfg:    cfg,
		eta:    eta,
		solver: Solver{MaxCost: cfg.MaxPickupETA.Seconds()},
		index:  make(map[positions.DriverID]int),
	}, nil
}

// Config returns the configuration.
func (p *BatchPlanner) Config() BatchConfig { return p.cfg }

// Plan solves one window: maximise the riders served with feasible pickups,
// then minimise their total pickup ETA (see [Solver]); greedy in arrival
// order is computed on the same matrix for the stats. It fails on an
// invalid request (bad ride id or pickup, a ride twice) or a window larger
// than MaxRiders, and never returns a partial plan.
func (p *BatchPlanner) Plan(reqs []BatchRequest) (BatchPlan, error) {
	if len(reqs) > p.cfg.MaxRiders {
		return BatchPlan{}, fmt.Errorf("%w: window of %d rides exceeds MaxRiders %d", ErrInvalidQuery, len(reqs), p.cfg.MaxRiders)
	}
	seen := make(map[RideID]struct{}, len(reqs))
	for i, r := range reqs {
		if err := r.Ride.Validate(); err != nil {
			return BatchPlan{}, fmt.Errorf("request %d: %w", i, err)
		}
		if err := r.Pickup.Validate(); err != nil {
			return BatchPlan{}, fmt.Errorf("%w: ride %q pickup: %w", ErrInvalidQuery, r.Ride, err)
		}
		if _, dup := seen[r.Ride]; dup {
			return BatchPlan{}, fmt.Errorf("%w: ride %q twice in one window", ErrInvalidQuery, r.Ride)
		}
		seen[r.Ride] = struct{}{}
	}

	start := time.Now()
	p.build(reqs)
	stats := BatchStats{Riders: len(reqs), Drivers: len(p.drivers), Pairs: len(p.pairs), BuildTime: time.Since(start)}

	solveStart := time.Now()
	if err := p.solver.Solve(&p.m, &p.opt); err != nil {
		return BatchPlan{}, err // unreachable: build writes finite ETAs >= 0
	}
	stats.SolveTime = time.Since(solveStart)
	if err := GreedyAssign(&p.m, p.solver.MaxCost, p.taken, &p.greedy); err != nil {
		return BatchPlan{}, err
	}
	stats.Batched, stats.Greedy = policyStats(&p.opt), policyStats(&p.greedy)
	stats.GainAssigned = stats.Batched.Assigned - stats.Greedy.Assigned
	stats.GainMeanETA = stats.Greedy.MeanETA - stats.Batched.MeanETA
	for j := range p.riders {
		if p.riders[j] > 1 {
			stats.Shared++
		}
	}

	plan := BatchPlan{Offers: make([]BatchOffer, len(reqs)), Stats: stats}
	assignedCol := p.taken[:p.m.Cols] // reuse: which columns the solver gave out
	clear(assignedCol)
	for _, j := range p.opt.Col {
		if j != Unassigned {
			assignedCol[j] = true
		}
	}
	for row, i := range p.order {
		o := BatchOffer{Ride: reqs[i].Ride}
		p.cands = p.cands[:0]
		for j := range p.m.Cols {
			c := p.m.At(row, j)
			if math.IsInf(c, 1) {
				continue
			}
			if j == p.opt.Col[row] {
				o.Assigned = true
				o.Drivers = append(o.Drivers, p.driverOf(j))
				o.ETAs = append(o.ETAs, seconds(c))
			} else if !assignedCol[j] {
				p.cands = append(p.cands, colETA{col: j, eta: c})
			}
		}
		if o.Assigned {
			slices.SortFunc(p.cands, func(a, b colETA) int {
				return cmp.Or(cmp.Compare(a.eta, b.eta), cmp.Compare(p.driverOf(a.col), p.driverOf(b.col)))
			})
			for _, c := range p.cands[:min(len(p.cands), p.cfg.Fallbacks)] {
				o.Drivers = append(o.Drivers, p.driverOf(c.col))
				o.ETAs = append(o.ETAs, seconds(c.eta))
			}
		}
		// An unassigned rider has no feasible driver left free: any free
		// one would let the solver serve one more rider.
		plan.Offers[i] = o
	}
	return plan, nil
}

// build fills the cost matrix. Rows are requests in arrival order. Each
// rider keeps its MaxCandidates cheapest feasible pairs (ETA from the
// driver's freshest position, in seconds); columns are the drivers of the
// kept pairs, in order of first appearance, so a driver no rider can use
// costs the solver nothing. Every other pair is infeasible.
func (p *BatchPlanner) build(reqs []BatchRequest) {
	p.order = p.order[:0]
	for i := range reqs {
		p.order = append(p.order, i)
	}
	slices.SortStableFunc(p.order, func(a, b int) int { return reqs[a].At.Compare(reqs[b].At) })

	clear(p.index)
	p.drivers = p.drivers[:0]
	for _, i := range p.order {
		for _, c := range reqs[i].Candidates {
			if d, ok := p.index[c.ID]; ok {
				if c.Seq > p.drivers[d].Seq {
					p.drivers[d] = c
				}
				continue
			}
			p.index[c.ID] = len(p.drivers)
			p.drivers = append(p.drivers, c)
		}
	}

	limit := p.cfg.MaxPickupETA.Seconds()
	p.pairs = p.pairs[:0]
	for row, i := range p.order {
		r := reqs[i]
		start := len(p.pairs)
		for _, c := range r.Candidates {
			d := int32(p.index[c.ID])
			eta := max(0, p.eta(p.drivers[d].Pos, r.Pickup).Seconds())
			if eta <= limit && !slices.ContainsFunc(p.pairs[start:], func(x batchPair) bool { return x.drv == d }) {
				p.pairs = append(p.pairs, batchPair{row: int32(row), drv: d, eta: eta})
			}
		}
		if mine := p.pairs[start:]; len(mine) > p.cfg.MaxCandidates {
			slices.SortFunc(mine, func(a, b batchPair) int { return cmp.Or(cmp.Compare(a.eta, b.eta), cmp.Compare(a.drv, b.drv)) })
			p.pairs = p.pairs[:start+p.cfg.MaxCandidates]
		}
	}

	p.colOf = slices.Grow(p.colOf[:0], len(p.drivers))[:len(p.drivers)]
	for d := range p.colOf {
		p.colOf[d] = -1
	}
	p.colDrv = p.colDrv[:0]
	for _, pr := range p.pairs {
		if p.colOf[pr.drv] < 0 {
			p.colOf[pr.drv] = int32(len(p.colDrv))
			p.colDrv = append(p.colDrv, pr.drv)
		}
	}
	cols := len(p.colDrv)
	p.m.Reset(len(reqs), cols)
	if cap(p.riders) < cols {
		p.riders = make([]int, cols)
		p.taken = make([]bool, cols)
	}
	p.riders = p.riders[:cols]
	clear(p.riders)
	for _, pr := range p.pairs {
		j := int(p.colOf[pr.drv])
		p.m.Set(int(pr.row), j, pr.eta)
		p.riders[j]++
	}
}

// driverOf returns the driver of matrix column j.
func (p *BatchPlanner) driverOf(j int) positions.DriverID { return p.drivers[p.colDrv[j]].ID }

func policyStats(a *Assignment) BatchPolicyStats {
	return BatchPolicyStats{Assigned: a.Assigned, TotalETA: seconds(a.Total), MeanETA: seconds(a.Mean())}
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
