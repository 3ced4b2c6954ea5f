package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/geo"
)

// OutcomesConfig configures Outcomes.
type OutcomesConfig struct {
	// Window is how far back the demand and outcome layers look.
	Window time.Duration
	// Bucket is the time resolution of the window.
	Bucket time.Duration
	// HalfLife is the decay of the demand that drives the surge layer.
	HalfLife time.Duration
	// MaxRides bounds the rides remembered for deduplication; past it the
	// oldest are forgotten first (a redelivered event of a forgotten ride
	// may then count twice).
	MaxRides int
	Now      func() time.Time
	Logger   *slog.Logger
}

// DefaultOutcomesConfig returns the defaults: a 15-minute window in
// 1-minute buckets and a 5-minute surge half-life.
func DefaultOutcomesConfig() OutcomesConfig {
	return OutcomesConfig{Window: 15 * time.Minute, Bucket: time.Minute, HalfLife: 5 * time.Minute,
		MaxRides: 1 << 20, Now: time.Now, Logger: slog.Default()}
}

// Validate checks c.
func (c OutcomesConfig) Validate() error {
	switch {
	case c.Bucket <= 0 || c.Window < c.Bucket:
		return fmt.Errorf("outcomes config: want 0 < Bucket <= Window (got %v, %v)", c.Bucket, c.Window)
	case c.Window/c.Bucket > 1440:
		return fmt.Errorf("outcomes config: at most 1440 buckets per window (got %d)", c.Window/c.Bucket)
	case c.HalfLife <= 0 || c.MaxRides < 1 || c.Now == nil || c.Logger == nil:
		return fmt.Errorf("outcomes config: want HalfLife > 0, MaxRides >= 1, a clock and a logger (got %+v)", c)
	}
	return nil
}

// Outcome layers: what Outcomes.Layer serves.
const (
	LayerDemand    = "demand"    // ride requests per cell in the window
	LayerMatched   = "matched"   // rides accepted by a driver
	LayerUnmatched = "unmatched" // rides that ended with no driver
	LayerETA       = "eta"       // mean pickup ETA of the accepted rides, seconds
)

// maxPickupETA bounds a believable pickup ETA in seconds (a day).
const maxPickupETA = 86400

// outcomeRes is the resolution cells are kept at; coarser layers sum
// children.
const outcomeRes = geo.IndexRes

type outcomeBucket struct {
	slot                  int64 // bucket number since the epoch; stale when older than the window
	demand, matched, lost uint32
	etaSum                float64
}

// Ride outcome flags, so an event delivered twice counts once.
const (
	seenRequested uint8 = 1 << iota
	seenMatched
	seenUnmatched
)

type rideSeen struct {
	flags uint8
	last  int64 // bucket of the latest event
}

// Outcomes turns the ride-events stream into per-cell demand and match
// outcomes over a sliding window: the demand, matched, unmatched and eta
// layers of the ops heatmap, and the demand side of its surge layer.
// Every api process reads the whole topic, so its view is complete; it is
// safe for concurrent use.
type Outcomes struct {
	cfg   OutcomesConfig
	slots int64

	mu    sync.Mutex
	cells map[geo.Cell][]outcomeBucket
	rides map[RideID]rideSeen
	// order lists rides by first sight, to forget the oldest.
	order  []RideID
	pruned int64

	events, bad, late atomic.Uint64
}

// NewOutcomes returns an empty aggregator.
func NewOutcomes(cfg OutcomesConfig) (*Outcomes, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Outcomes{cfg: cfg, slots: int64(cfg.Window / cfg.Bucket), cells: make(map[geo.Cell][]outcomeBucket),
		rides: make(map[RideID]rideSeen)}, nil
}

func (o *Outcomes) slotOf(t time.Time) int64 { return t.UnixNano() / int64(o.cfg.Bucket) }

// Add counts one ride event. Events older than the window are ignored.
func (o *Outcomes) Add(e RideEvent) error {
	if e.Ride == "" || !e.To.Valid() {
		o.bad.Add(1)
		return fmt.Errorf("%w: ride event without a ride or a valid state", ErrInvalidRide)
	}
	if err := e.Pickup.Validate(); err != nil {
		o.bad.Add(1)
		return fmt.Errorf("%w: ride event pickup: %w", ErrInvalidRide, err)
	}
	if !(e.PickupETA >= 0 && e.PickupETA <= maxPickupETA) { // also NaN
		o.bad.Add(1)
		return fmt.Errorf("%w: ride event pickup ETA %v s is outside [0, %v]", ErrInvalidRide, e.PickupETA, maxPickupETA)
	}
	o.events.Add(1)
	now := o.slotOf(o.cfg.Now())
	slot := o.slotOf(e.At)
	if slot <= now-o.slots {
		o.late.Add(1)
		return nil
	}
	if slot > now { // a clock ahead of ours: count it now
		slot = now
	}
	cell, err := geo.CellAt(e.Pickup, outcomeRes)
	if err != nil {
		o.bad.Add(1)
		return fmt.Errorf("%w: ride event pickup: %w", ErrInvalidRide, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.prune(now)
	seen, known := o.rides[e.Ride]
	if !known {
		o.order = append(o.order, e.Ride)
	}
	seen.last = max(seen.last, slot)
	b := o.bucketFor(cell, slot)
	if e.Kind == "requested" && seen.flags&seenRequested == 0 {
		seen.flags |= seenRequested
		b.demand++
	}
	switch e.To {
	case Accepted:
		if seen.flags&seenMatched == 0 {
			seen.flags |= seenMatched
			b.matched++
			b.etaSum += e.PickupETA
		}
	case NoDriver:
		if seen.flags&seenUnmatched == 0 {
			seen.flags |= seenUnmatched
			b.lost++
		}
	}
	o.rides[e.Ride] = seen
	return nil
}

// bucketFor returns cell's bucket for slot, cleared if it held an older
// slot. Call with mu held.
func (o *Outcomes) bucketFor(c geo.Cell, slot int64) *outcomeBucket {
	bs := o.cells[c]
	if bs == nil {
		bs = make([]outcomeBucket, o.slots)
		o.cells[c] = bs
	}
	b := &bs[slot%o.slots]
	if b.slot != slot {
		*b = outcomeBucket{slot: slot}
	}
	return b
}

// prune forgets rides and cells with nothing in the window, at most once
// per bucket, and the oldest rides past MaxRides. Call with mu held.
func (o *Outcomes) prune(now int64) {
	for len(o.rides) >= o.cfg.MaxRides && len(o.order) > 0 {
		delete(o.rides, o.order[0])
		o.order = o.order[1:]
	}
	if o.pruned == now {
		return
	}
	o.pruned = now
	oldest := now - o.slots
	keep := o.order[:0]
	for _, id := range o.order {
		if s, ok := o.rides[id]; ok && s.last > oldest {
			keep = append(keep, id)
		} else {
			delete(o.rides, id)
		}
	}
	clear(o.order[len(keep):])
	o.order = keep
	for c, bs := range o.cells {
		live := false
		for _, b := range bs {
			if b.slot > oldest {
				live = true
				break
			}
		}
		if !live {
			delete(o.cells, c)
		}
	}
}

// OutcomeLayers are the layers Layer serves.
var OutcomeLayers = []string{LayerDemand, LayerMatched, LayerUnmatched, LayerETA}

// outcomeCounts are one cell's outcomes over the window.
type outcomeCounts struct{ demand, matched, unmatched, etaSum float64 }

// value is the layer's value, and whether the cell has one: counts above
// zero, and the mean ETA of the matched rides.
func (s outcomeCounts) value(layer string) (float64, bool) {
	switch layer {
	case LayerDemand:
		return s.demand, s.demand > 0
	case LayerMatched:
		return s.matched, s.matched > 0
	case LayerUnmatched:
		return s.unmatched, s.unmatched > 0
	case LayerETA:
		return math.Round(s.etaSum/s.matched*10) / 10, s.matched > 0
	}
	return 0, false
}

// counts sums the window's buckets per cell at res; keep, when set, limits
// it to the cells it accepts.
func (o *Outcomes) counts(res int, keep func(geo.Cell) bool) map[geo.Cell]outcomeCounts {
	out := make(map[geo.Cell]outcomeCounts)
	o.each(func(c geo.Cell, b outcomeBucket) {
		p := geo.ParentOf(c, res)
		if keep != nil && !keep(p) {
			return
		}
		s := out[p]
		s.demand += float64(b.demand)
		s.matched += float64(b.matched)
		s.unmatched += float64(b.lost)
		s.etaSum += b.etaSum
		out[p] = s
	})
	return out
}

// Layer returns the layer's value per cell at res (7 to 9) over the
// window: counts for demand, matched and unmatched, and the mean pickup
// ETA in seconds for eta. Cells without a value are left out.
func (o *Outcomes) Layer(layer string, res int) (map[geo.Cell]float64, error) {
	if res < 0 || res > outcomeRes {
		return nil, fmt.Errorf("res %d: want 0 to %d", res, outcomeRes)
	}
	if !slices.Contains(OutcomeLayers, layer) {
		return nil, fmt.Errorf("unknown outcome layer %q", layer)
	}
	counts := o.counts(res, nil)
	out := make(map[geo.Cell]float64, len(counts))
	for c, s := range counts {
		if v, ok := s.value(layer); ok {
			out[c] = v
		}
	}
	return out, nil
}

// DecayedDemand returns the requests per cell at res, each weighted by
// 2^(-age/HalfLife) (age to the middle of its bucket): recent demand
// counts most. It feeds the surge layer.
func (o *Outcomes) DecayedDemand(res int) map[geo.Cell]float64 {
	now := o.cfg.Now()
	out := make(map[geo.Cell]float64)
	o.each(func(c geo.Cell, b outcomeBucket) {
		if b.demand == 0 {
			return
		}
		mid := time.Unix(0, b.slot*int64(o.cfg.Bucket)+int64(o.cfg.Bucket)/2)
		age := max(now.Sub(mid), 0)
		out[geo.ParentOf(c, res)] += float64(b.demand) * math.Exp2(-float64(age)/float64(o.cfg.HalfLife))
	})
	return out
}

// each calls f for every bucket in the window.
func (o *Outcomes) each(f func(geo.Cell, outcomeBucket)) {
	oldest := o.slotOf(o.cfg.Now()) - o.slots
	o.mu.Lock()
	defer o.mu.Unlock()
	for c, bs := range o.cells {
		for _, b := range bs {
			if b.slot > oldest {
				f(c, b)
			}
		}
	}
}

// OutcomesStats counts what Outcomes read.
type OutcomesStats struct {
	Events, Bad, Late uint64
	Rides, Cells      int
}

// Stats returns the counters.
func (o *Outcomes) Stats() OutcomesStats {
	o.mu.Lock()
	rides, cells := len(o.rides), len(o.cells)
	o.mu.Unlock()
	return OutcomesStats{Events: o.events.Load(), Bad: o.bad.Load(), Late: o.late.Load(), Rides: rides, Cells: cells}
}

// OutcomesConsumerOpts are the client options Consume needs: the topic,
// read from the start of the window (not a consumer group: every process
// reads every partition).
func (o *Outcomes) OutcomesConsumerOpts(topic string) []kgo.Opt {
	from := o.cfg.Now().Add(-o.cfg.Window)
	return []kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(from.UnixMilli()))}
}

// Consume reads ride events from cl (built with OutcomesConsumerOpts) until
// ctx ends. A record that does not decode is counted and logged, never
// fatal.
func (o *Outcomes) Consume(ctx context.Context, cl *kgo.Client) error {
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				o.cfg.Logger.Warn("ride events: fetch failed", "topic", t, "partition", p, "err", err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			var e RideEvent
			err := json.Unmarshal(r.Value, &e)
			if err == nil {
				err = o.Add(e)
			} else {
				o.bad.Add(1)
			}
			if err != nil {
				o.cfg.Logger.Warn("ride events: record skipped", "partition", r.Partition, "offset", r.Offset, "err", err)
			}
		})
	}
}
