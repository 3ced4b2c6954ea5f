package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// DefaultRideEventsTopic is the Kafka topic of ride transitions.
const DefaultRideEventsTopic = "ride-events"

// RideEventVersion is the schema version of RideEvent records.
const RideEventVersion = 1

// RideEvent is one ride transition as it goes to the ride-events topic,
// keyed by ride ID so a ride's events stay in order in one partition.
// Delivery is at-least-once: consumers drop an event whose (ride, version)
// they have seen.
type RideEvent struct {
	V       int                `json:"v"`
	Ride    RideID             `json:"ride"`
	Version uint64             `json:"version"`
	Kind    string             `json:"kind"` // "requested", or the EventKind applied
	From    State              `json:"from,omitempty"`
	To      State              `json:"to"`
	Rider   RiderID            `json:"rider"`
	Driver  positions.DriverID `json:"driver,omitempty"`
	// Pickup is where the rider waits, on every event, so a consumer that
	// starts mid-ride can place it.
	Pickup geo.LatLng `json:"pickup"`
	// PickupETA is the offered driver's estimated seconds to the pickup,
	// on offers and after.
	PickupETA float64   `json:"pickup_eta_s,omitempty"`
	At        time.Time `json:"at"`
}

// NewRideEvent describes r right after a transition of kind from state
// from (zero for creation).
func NewRideEvent(r Ride, kind string, from State) RideEvent {
	return RideEvent{V: RideEventVersion, Ride: r.ID, Version: r.Version, Kind: kind, From: from, To: r.State,
		Rider: r.Rider, Driver: r.Driver, Pickup: r.Pickup, PickupETA: r.PickupETA, At: r.UpdatedAt}
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	Topic string
	// Batch is the most events moved per round trip.
	Batch int
	// ScanEvery is how often the relay sweeps Redis for outboxes it was not
	// told about (events written by a process that died, or notices it
	// dropped when its queue was full).
	ScanEvery time.Duration
	// Queue bounds the notices waiting; when full, notices are dropped and
	// the sweep finds those outboxes.
	Queue int
	// Linger is how long a pass waits, after the notice that starts it,
	// for more rides to drain with it (up to Batch): under load one pass
	// then moves the events of many rides in its three round trips instead
	// of a pass per transition. 0 drains what is queued at once. Events
	// reach Kafka at most this much later; the apps' read model (the ride
	// in Redis) does not wait for it.
	Linger time.Duration
	Logger *slog.Logger
}

// DefaultRelayConfig returns the defaults.
func DefaultRelayConfig() RelayConfig {
	return RelayConfig{Topic: DefaultRideEventsTopic, Batch: 100, ScanEvery: 5 * time.Second, Queue: 4096,
		Linger: 5 * time.Millisecond, Logger: slog.Default()}
}

// Validate checks c.
func (c RelayConfig) Validate() error {
	if c.Topic == "" || c.Batch < 1 || c.ScanEvery <= 0 || c.Queue < 1 || c.Linger < 0 || c.Linger > time.Second || c.Logger == nil {
		return fmt.Errorf("relay config: want a topic, Batch >= 1, ScanEvery > 0, Queue >= 1, Linger in [0, 1s] and a logger (got %+v)", c)
	}
	return nil
}

// RelayStats counts what a Relay did: events produced, notices dropped,
// errors, and the passes that moved events (each one read, one produce and
// one trim for all the rides it drained).
type RelayStats struct {
	Produced, Dropped, Errors, Passes uint64
}

// Relay moves ride events from the rides' Redis outboxes to Kafka, oldest
// first, and removes from an outbox only the events Kafka acknowledged,
// each by its value (LREM; a ride's events differ in version, so no two
// are equal), so a concurrent relay can duplicate an event but never drop
// one.
//
// It drains many rides at once: the outboxes of every ride it was told
// about since the last pass or within Linger of the notice that starts it
// (up to Batch rides) are read in one pipelined round trip, produced in
// one ProduceSync and trimmed in one more round trip. A ride's events keep their order: they are read in order, go to
// one partition under the ride's key in one produce, and a ride's events
// are removed only when all of them were acknowledged.
//
// One goroutine (Run) owns the draining; Notify may be called from any
// goroutine.
type Relay struct {
	store *RideStore
	cl    *kgo.Client
	cfg   RelayConfig
	wake  chan RideID

	produced, dropped, errs, passes atomic.Uint64
}

// NewRelay returns a relay from store to the Kafka client cl (owned by the
// caller).
func NewRelay(store *RideStore, cl *kgo.Client, cfg RelayConfig) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Relay{store: store, cl: cl, cfg: cfg, wake: make(chan RideID, cfg.Queue)}, nil
}

// Notify tells the relay that ride id has new events. It never blocks: a
// full queue drops the notice (counted) and the sweep catches up.
func (r *Relay) Notify(id RideID) {
	select {
	case r.wake <- id:
	default:
		r.dropped.Add(1)
	}
}

// Stats returns the counters.
func (r *Relay) Stats() RelayStats {
	return RelayStats{Produced: r.produced.Load(), Dropped: r.dropped.Load(), Errors: r.errs.Load(), Passes: r.passes.Load()}
}

// Run drains outboxes until ctx ends: those it is notified of at once, and
// all of them every ScanEvery (and once at start).
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.ScanEvery)
	defer t.Stop()
	r.sweep(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case id := <-r.wake:
			ids := r.queued(ctx, id)
			if err := r.drain(ctx, ids); err != nil && ctx.Err() == nil {
				r.cfg.Logger.Warn("ride events: drain failed; the sweep retries", "rides", len(ids), "err", err)
			}
		case <-t.C:
			r.sweep(ctx)
		}
	}
}

// queued returns first and the distinct rides notified after it, up to
// Batch: those queued already, and those that come within Linger.
func (r *Relay) queued(ctx context.Context, first RideID) []RideID {
	ids := []RideID{first}
	seen := map[RideID]bool{first: true}
	var until <-chan time.Time
	if r.cfg.Linger > 0 {
		t := time.NewTimer(r.cfg.Linger)
		defer t.Stop()
		until = t.C
	}
	for len(ids) < r.cfg.Batch {
		var id RideID
		if until == nil {
			select {
			case id = <-r.wake:
			default:
				return ids
			}
		} else {
			select {
			case id = <-r.wake:
			case <-until:
				return ids
			case <-ctx.Done():
				return ids
			}
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

// sweep drains every outbox in Redis.
func (r *Relay) sweep(ctx context.Context) {
	match := r.store.cfg.Prefix + "outbox:*"
	scan := func(ctx context.Context, c *redis.Client) error {
		var ids []RideID
		flush := func() error {
			err := r.drain(ctx, ids)
			ids = ids[:0]
			if err != nil {
				// Outboxes that keep failing must not stall the rest.
				r.cfg.Logger.Warn("ride events: drain failed; retried next sweep", "err", err)
				if ctx.Err() != nil {
					return err
				}
			}
			return nil
		}
		it := c.Scan(ctx, 0, match, 1000).Iterator()
		for it.Next(ctx) {
			key := it.Val()
			i, j := strings.IndexByte(key, '{'), strings.LastIndexByte(key, '}')
			if i < 0 || j < i {
				continue
			}
			if ids = append(ids, RideID(key[i+1:j])); len(ids) == r.cfg.Batch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		if len(ids) > 0 {
			return flush()
		}
		return nil
	}
	var err error
	switch c := r.store.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		err = fmt.Errorf("relay: cannot scan a %T", c)
	}
	if err != nil && ctx.Err() == nil {
		r.errs.Add(1)
		r.cfg.Logger.Warn("ride events: sweep failed", "err", err)
	}
}

// Drain moves ride id's pending events to Kafka, in order.
func (r *Relay) Drain(ctx context.Context, id RideID) error {
	return r.drain(ctx, []RideID{id})
}

// drain moves the pending events of rides ids to Kafka: up to Batch
// events per ride a pass, passes until none is left for any of them.
func (r *Relay) drain(ctx context.Context, ids []RideID) error {
	for len(ids) > 0 {
		more, err := r.drainOnce(ctx, ids)
		if err != nil {
			return err
		}
		ids = more
	}
	return nil
}

// drainOnce moves up to Batch events of each of rides ids to Kafka and
// returns the rides that had more.
func (r *Relay) drainOnce(ctx context.Context, ids []RideID) (more []RideID, err error) {
	rdb := r.store.rdb
	reads := make([]*redis.StringSliceCmd, len(ids))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			reads[i] = p.LRange(ctx, r.store.outboxKey(id), 0, int64(r.cfg.Batch-1))
		}
		return nil
	})
	if err != nil {
		r.errs.Add(1)
		return nil, fmt.Errorf("%w: reading the outboxes of %d rides: %w", ErrStoreUnavailable, len(ids), err)
	}
	evs := make([][]string, len(ids))
	var recs []*kgo.Record
	for i, id := range ids {
		evs[i] = reads[i].Val()
		for _, e := range evs[i] {
			recs = append(recs, &kgo.Record{Topic: r.cfg.Topic, Key: []byte(id), Value: []byte(e)})
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	r.passes.Add(1)
	// A ride whose events were not all acknowledged keeps them all: the
	// next pass sends them again, in order (duplicates, never a gap).
	failed := map[string]bool{}
	var firstErr error
	for _, res := range r.cl.ProduceSync(ctx, recs...) {
		if res.Err != nil {
			failed[string(res.Record.Key)] = true
			if firstErr == nil {
				firstErr = res.Err
			}
			continue
		}
		r.produced.Add(1)
	}
	trim := rdb.Pipeline()
	for i, id := range ids {
		if failed[string(id)] {
			continue
		}
		for _, e := range evs[i] {
			trim.LRem(ctx, r.store.outboxKey(id), 1, e)
		}
		if len(evs[i]) == r.cfg.Batch {
			more = append(more, id)
		}
	}
	if trim.Len() > 0 {
		_, err = trim.Exec(ctx)
	}
	if err != nil {
		r.errs.Add(1)
		return nil, fmt.Errorf("%w: trimming the outboxes of %d rides: %w", ErrStoreUnavailable, len(ids), err)
	}
	if firstErr != nil {
		r.errs.Add(1)
		return nil, fmt.Errorf("ride events: producing the events of %d of %d rides: %w", len(failed), len(ids), firstErr)
	}
	return more, nil
}

// DecodeRideEvent decodes one ride-events record value.
func DecodeRideEvent(b []byte) (RideEvent, error) {
	var e RideEvent
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("ride event: %w", err)
	}
	if e.V != RideEventVersion || e.Ride == "" || !e.To.Valid() || e.Version == 0 {
		return e, fmt.Errorf("ride event: unsupported or incomplete (v=%d ride=%q to=%v version=%d)", e.V, e.Ride, e.To, e.Version)
	}
	return e, nil
}
