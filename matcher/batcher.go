package matcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/positions"
)

// BatcherConfig configures a Batcher.
type BatcherConfig struct {
	Batch BatchConfig
	// Partitioner decides the region of a pickup: its shard cell. Requests
	// of one region share a window.
	Partitioner positions.Partitioner
	// OfferTTL is the lease a match takes on its driver (zero: the
	// Leases' OfferTTL).
	OfferTTL time.Duration
	// Candidates is how many nearest drivers are gathered per rider.
	Candidates int
	// Clock times the windows; nil is the wall clock.
	Clock clock.Clock
}

// DefaultBatcherConfig returns a 2 s window over the default shards.
func DefaultBatcherConfig() BatcherConfig {
	return BatcherConfig{Batch: DefaultBatchConfig(), Partitioner: DefaultGatherConfig().Partitioner, Candidates: 16}
}

// Validate checks c.
func (c BatcherConfig) Validate() error {
	if err := c.Batch.Validate(); err != nil {
		return err
	}
	if err := c.Partitioner.Validate(); err != nil {
		return err
	}
	if c.OfferTTL < 0 || c.Candidates < 1 {
		return fmt.Errorf("%w: OfferTTL %v must be >= 0 and Candidates %d >= 1", ErrInvalidConfig, c.OfferTTL, c.Candidates)
	}
	return nil
}

// BatcherStats sums what a Batcher did over its windows; the Prometheus
// layer turns them into rates and means.
type BatcherStats struct {
	Windows, Riders uint64
	// Assigned riders got their planned driver or a fallback.
	Assigned uint64
	// Contended counts planned drivers another ride reserved first (a
	// greedy ride, or a window of a neighbouring region).
	Contended uint64
	// ETA sums of the planned assignments, batched and greedy on the same
	// windows, in nanoseconds; Greedy/Batched assigned counts alongside.
	BatchedETA, GreedyETA           uint64
	BatchedAssigned, GreedyAssigned uint64
	SolveNanos                      uint64
}

// Batcher is the batched policy: requests of one region wait for the
// region's window (at most Window) to close, then the window is planned at
// once (min-cost assignment of pickup ETAs over the gathered candidates)
// and each rider's planned driver is reserved through the same Leases as
// greedy, falling back down the rider's list on contention.
//
// Its Match has the Greedy's signature, so the dispatcher runs either.
//
// Concurrency: windowsMu guards the open windows; one goroutine per open
// window flushes it when the window ends or fills, tracked by wg (Close
// waits). plannerMu serialises the planner, which reuses its buffers.
type Batcher struct {
	gather *Gatherer
	leases *Leases
	cfg    BatcherConfig

	clk       clock.Clock
	windowsMu sync.Mutex
	windows   map[geo.Cell]*window
	closed    bool
	parked    int // requests in open windows, their callers waiting (see Parked)
	wg        sync.WaitGroup

	plannerMu sync.Mutex
	planner   *BatchPlanner

	windowsN, riders, assigned, contended                         atomic.Uint64
	batchedETA, greedyETA, batchedAssigned, greedyAssigned, solve atomic.Uint64
}

type window struct {
	reqs  []*pending
	full  chan struct{} // closed when MaxRiders is reached, or by Close
	abort bool          // set by Close (under windowsMu): answer ErrClosed, plan nothing
	ended chan struct{} // closed by the window's timer
	timer clock.Timer
}

type pending struct {
	ctx   context.Context // the caller's: a request whose caller left is not planned
	req   MatchRequest
	at    time.Time
	reply chan batchReply // buffered: the flush never blocks on a gone caller
	// parked: counted in Batcher.parked (under windowsMu) until its
	// window closes or its caller leaves.
	parked bool
}

type batchReply struct {
	m   Match
	err error
}

// NewBatcher returns a Batcher over g and l; eta ranks pickups (nil: the
// default straight-line ETA).
func NewBatcher(g *Gatherer, l *Leases, eta geo.ETAFunc, cfg BatcherConfig) (*Batcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := NewBatchPlanner(cfg.Batch, eta)
	if err != nil {
		return nil, err
	}
	return &Batcher{gather: g, leases: l, cfg: cfg, clk: clock.Or(cfg.Clock), windows: make(map[geo.Cell]*window), planner: p}, nil
}

// ErrClosed is returned by Match after Close.
var ErrClosed = errors.New("matcher closed")

// Match joins the request to its region's window and returns the driver
// reserved for it when the window is planned. It returns ErrNoDriver when
// the plan had nobody for the rider (the dispatcher asks again, joining the
// next window), and ctx's error if ctx ends first (a driver reserved for
// the request after that is freed by its lease's expiry).
func (b *Batcher) Match(ctx context.Context, req MatchRequest) (Match, error) {
	if err := req.Ride.Validate(); err != nil {
		return Match{}, err
	}
	_, region, err := b.cfg.Partitioner.ForPos(req.Pickup)
	if err != nil {
		return Match{}, fmt.Errorf("%w: pickup: %w", ErrInvalidQuery, err)
	}
	p := &pending{ctx: ctx, req: req, at: b.clk.Now(), reply: make(chan batchReply, 1), parked: true}
	b.windowsMu.Lock()
	if b.closed {
		b.windowsMu.Unlock()
		return Match{}, ErrClosed
	}
	w := b.windows[region]
	if w == nil {
		w = b.openLocked(region)
	}
	w.reqs = append(w.reqs, p)
	b.parked++
	if len(w.reqs) == b.cfg.Batch.MaxRiders {
		delete(b.windows, region) // the next request opens a new window
		b.unparkLocked(w)
		close(w.full)
	}
	b.windowsMu.Unlock()
	select {
	case r := <-p.reply:
		return r.m, r.err
	case <-ctx.Done():
		b.windowsMu.Lock()
		if p.parked {
			p.parked = false
			b.parked--
		}
		b.windowsMu.Unlock()
		return Match{}, ctx.Err()
	}
}

// unparkLocked takes w's requests out of the parked count: w is closing.
func (b *Batcher) unparkLocked(w *window) {
	for _, p := range w.reqs {
		if p.parked {
			p.parked = false
			b.parked--
		}
	}
}

// Parked returns how many Match calls wait in open windows, their windows
// neither full nor timed out. On a virtual clock they wait for the clock
// to move: the dispatcher counts a search inside Match as idle when the
// number of such searches equals Parked.
func (b *Batcher) Parked() int {
	b.windowsMu.Lock()
	defer b.windowsMu.Unlock()
	return b.parked
}

// Close answers every waiting request ErrClosed (reserving a driver for a
// search that is shutting down would only hold the driver) and waits for
// the windows' goroutines. Idempotent.
func (b *Batcher) Close() {
	b.windowsMu.Lock()
	b.closed = true
	for region, w := range b.windows {
		delete(b.windows, region)
		b.unparkLocked(w)
		w.abort = true
		close(w.full)
	}
	b.windowsMu.Unlock()
	b.wg.Wait()
}

// Waiting returns how many requests wait in open windows now.
func (b *Batcher) Waiting() int {
	b.windowsMu.Lock()
	defer b.windowsMu.Unlock()
	n := 0
	for _, w := range b.windows {
		n += len(w.reqs)
	}
	return n
}

// Stats returns the counters.
func (b *Batcher) Stats() BatcherStats {
	return BatcherStats{
		Windows: b.windowsN.Load(), Riders: b.riders.Load(), Assigned: b.assigned.Load(), Contended: b.contended.Load(),
		BatchedETA: b.batchedETA.Load(), GreedyETA: b.greedyETA.Load(),
		BatchedAssigned: b.batchedAssigned.Load(), GreedyAssigned: b.greedyAssigned.Load(), SolveNanos: b.solve.Load(),
	}
}

// openLocked opens region's window: its timer starts now, from the
// request that opened it, and its goroutine waits for it.
func (b *Batcher) openLocked(region geo.Cell) *window {
	w := &window{full: make(chan struct{}), ended: make(chan struct{})}
	// The window leaves the map and its requests the parked count inside
	// the timer's function: on a virtual clock that runs within the
	// clock's move, so nobody sees the window ended but still parked.
	w.timer = b.clk.AfterFunc(b.cfg.Batch.Window, func() {
		b.windowsMu.Lock()
		if b.windows[region] == w {
			delete(b.windows, region)
			b.unparkLocked(w)
		}
		b.windowsMu.Unlock()
		close(w.ended)
	})
	b.windows[region] = w
	b.wg.Add(1)
	go b.run(w)
	return w
}

// run waits for the window to end or fill, then plans and reserves it.
func (b *Batcher) run(w *window) {
	defer b.wg.Done()
	select {
	case <-w.ended:
	case <-w.full:
		w.timer.Stop()
	}
	// Nothing can join w now: it left the map under the lock.
	b.windowsMu.Lock()
	abort := w.abort
	b.windowsMu.Unlock()
	if abort {
		for _, p := range w.reqs {
			p.reply <- batchReply{err: ErrClosed}
		}
		return
	}
	b.flush(w.reqs)
}

// flushTimeout bounds the gather and reservations of one window; callers
// wait on their own contexts anyway.
const flushTimeout = 5 * time.Second

func (b *Batcher) flush(ps []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	b.windowsN.Add(1)
	b.riders.Add(uint64(len(ps)))
	reqs := make([]BatchRequest, 0, len(ps))
	live := make([]*pending, 0, len(ps))
	partial := make([]GatherResult, 0, len(ps))
	for _, p := range ps {
		if err := p.ctx.Err(); err != nil {
			p.reply <- batchReply{err: err} // the caller left: nobody to offer to
			continue
		}
		gr, err := b.gather.Gather(ctx, p.req.Pickup, b.cfg.Candidates)
		if err != nil {
			p.reply <- batchReply{err: err}
			continue
		}
		cands := slices.DeleteFunc(slices.Clone(gr.Candidates), func(c positions.Candidate) bool {
			return slices.Contains(p.req.Exclude, c.ID)
		})
		reqs = append(reqs, BatchRequest{Ride: p.req.Ride, Pickup: p.req.Pickup, At: p.at, Candidates: cands})
		live = append(live, p)
		partial = append(partial, gr)
	}
	if len(reqs) == 0 {
		return
	}
	b.plannerMu.Lock()
	plan, err := b.planner.Plan(reqs)
	b.plannerMu.Unlock()
	if err != nil {
		for _, p := range live {
			p.reply <- batchReply{err: err}
		}
		return
	}
	s := plan.Stats
	b.solve.Add(uint64(s.SolveTime))
	b.batchedETA.Add(uint64(s.Batched.TotalETA))
	b.greedyETA.Add(uint64(s.Greedy.TotalETA))
	b.batchedAssigned.Add(uint64(s.Batched.Assigned))
	b.greedyAssigned.Add(uint64(s.Greedy.Assigned))

	cands := make(map[positions.DriverID]positions.Candidate)
	for _, r := range reqs {
		for _, c := range r.Candidates {
			cands[c.ID] = c
		}
	}
	for i, o := range plan.Offers {
		p, gr := live[i], partial[i]
		if err := p.ctx.Err(); err != nil {
			p.reply <- batchReply{err: err}
			continue
		}
		m := Match{Ride: o.Ride, Partial: gr.Partial, Ring: gr.Ring, RadiusM: gr.RadiusM}
		var err error = ErrNoDriver
		for k, d := range o.Drivers {
			m.Tried++
			tok, rerr := b.leases.Reserve(ctx, d, o.Ride, b.cfg.OfferTTL)
			if errors.Is(rerr, ErrDriverTaken) {
				if k == 0 && o.Assigned {
					b.contended.Add(1)
				}
				continue
			}
			if rerr != nil {
				err = rerr
				break
			}
			m.Driver, m.ETA, m.Token, err = cands[d], o.ETAs[k], tok, nil
			// The candidate may have been gathered for another rider of the
			// window: its distance is to this rider's pickup.
			m.Driver.DistanceM = geo.DistanceM(m.Driver.Pos, p.req.Pickup)
			b.assigned.Add(1)
			break
		}
		if err != nil && errors.Is(err, ErrNoDriver) {
			err = fmt.Errorf("ride %s: window of %d rides planned no free driver for it: %w", o.Ride, len(reqs), ErrNoDriver)
		}
		p.reply <- batchReply{m: m, err: err}
	}
}
