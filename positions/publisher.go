package positions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/geo"
)

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Brokers are the Kafka seed brokers (host:port).
	Brokers []string
	// Topic is the positions topic.
	Topic string
	// Partitioner maps positions to partitions; Partitions must equal the
	// topic's partition count (Run checks).
	Partitioner Partitioner
	// MaxPending bounds the events accepted but not yet handed to the Kafka
	// client. While a (driver, partition) already has an event pending, a
	// newer one replaces it (coalescing); a new one past the bound is
	// refused with ErrOverloaded.
	MaxPending int
	// MaxBufferedRecords bounds the Kafka client's own buffer of records
	// handed over but not yet acknowledged. When it is full the sender
	// waits, so pending events pile up and coalesce.
	MaxBufferedRecords int
	// Linger is how long the client waits to fill a batch.
	Linger time.Duration
	// BatchMaxBytes bounds one produce batch.
	BatchMaxBytes int32
	// Forget drops the handoff memory of a driver not heard from for this
	// long, so the table holds connected drivers, not every driver ever
	// seen. It must be at least the workers' TTL: a driver that comes
	// back later has expired from its old partition anyway.
	Forget time.Duration
	// ShutdownTimeout bounds the final flush when Run's ctx ends.
	ShutdownTimeout time.Duration
	// StallTimeout opens the produce path's circuit breaker: when records
	// have waited this long with no acknowledgement from Kafka, Publish
	// refuses new events with ErrUnavailable (the apps back off instead
	// of feeding a buffer nobody drains) until Kafka acknowledges again.
	// The records already buffered keep being retried. Zero turns the
	// breaker off.
	StallTimeout time.Duration
	// Now stamps ReceiveTime on events that come without one.
	Now    func() time.Time
	Logger *slog.Logger
	// ClientOpts are extra kgo options (tests: a dialer, a logger).
	ClientOpts []kgo.Opt
}

// DefaultPublisherConfig returns defaults for the embedded single-process
// mode: a local broker, 16 partitions, shards at res 6, 64k pending events,
// 5 ms linger.
func DefaultPublisherConfig() PublisherConfig {
	return PublisherConfig{
		Brokers:            []string{"127.0.0.1:9092"},
		Topic:              DefaultTopic,
		Partitioner:        Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 16},
		MaxPending:         1 << 16,
		MaxBufferedRecords: 1 << 17,
		Linger:             5 * time.Millisecond,
		BatchMaxBytes:      1 << 20,
		Forget:             10 * time.Minute,
		ShutdownTimeout:    5 * time.Second,
		StallTimeout:       5 * time.Second,
		Now:                time.Now,
		Logger:             slog.Default(),
	}
}

// Validate checks c.
func (c PublisherConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("%w: no brokers", ErrInvalidConfig)
	case c.Topic == "":
		return fmt.Errorf("%w: empty topic", ErrInvalidConfig)
	case c.MaxPending < 2:
		// A handoff needs two slots: the removal and the position.
		return fmt.Errorf("%w: MaxPending %d must be at least 2", ErrInvalidConfig, c.MaxPending)
	case c.MaxBufferedRecords < 1:
		return fmt.Errorf("%w: MaxBufferedRecords %d must be positive", ErrInvalidConfig, c.MaxBufferedRecords)
	case c.Linger < 0 || c.Linger > time.Second:
		return fmt.Errorf("%w: Linger %v is outside [0, 1s]", ErrInvalidConfig, c.Linger)
	case c.BatchMaxBytes < MaxEventLen+100:
		return fmt.Errorf("%w: BatchMaxBytes %d is too small", ErrInvalidConfig, c.BatchMaxBytes)
	case c.Forget <= 0:
		return fmt.Errorf("%w: Forget %v must be positive", ErrInvalidConfig, c.Forget)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("%w: ShutdownTimeout %v must be positive", ErrInvalidConfig, c.ShutdownTimeout)
	case c.StallTimeout < 0:
		return fmt.Errorf("%w: StallTimeout %v is negative", ErrInvalidConfig, c.StallTimeout)
	case c.Now == nil:
		return fmt.Errorf("%w: Now is nil", ErrInvalidConfig)
	case c.Logger == nil:
		return fmt.Errorf("%w: Logger is nil", ErrInvalidConfig)
	}
	return c.Partitioner.Validate()
}

// PublisherStats are the publisher's counters since it started.
type PublisherStats struct {
	Accepted      uint64 // events accepted by Publish/Remove
	Coalesced     uint64 // accepted events that replaced a pending one
	Overloaded    uint64 // events refused with ErrOverloaded
	Handoffs      uint64 // removals sent to a driver's previous partition
	Produced      uint64 // records acknowledged by Kafka
	ProduceErrors uint64 // records Kafka failed (after the client's retries)
	Unavailable   uint64 // events refused with ErrUnavailable (breaker open)
	BreakerOpens  uint64 // times the breaker opened
	BreakerOpen   bool   // the breaker is open now
	Pending       int    // events waiting now
}

// driverState is what the publisher remembers of a driver: the partition
// it was last sent to (for handoffs) and, while that event is still
// pending, its slot (for coalescing). One map lookup per Publish.
type driverState struct {
	part Partition
	at   int64  // unix ns of the last event's ReceiveTime
	gen  uint32 // slot is valid while gen equals the publisher's gen
	slot int32  // index in pending of the event for (driver, part)
}

type pendingEvent struct {
	ev   Event
	part Partition
}

// Publisher sends driver events to the positions topic, one record per
// event keyed by driver id, on the partition of the driver's shard.
//
// Concurrency: Publish and Remove are safe for concurrent use; they only
// touch the pending buffer and the handoff table, guarded by mu. The
// goroutine in Run is the only one that talks to the Kafka client.
//
// Load policy: the side that loses when Kafka is slow is the GPS stream.
// First older positions of the same driver are dropped in favour of the
// newest (coalescing), then new drivers' events are refused with
// ErrOverloaded so the gateway can answer 429.
type Publisher struct {
	cfg PublisherConfig
	cl  *kgo.Client

	mu      sync.Mutex
	pending []pendingEvent
	gen     uint32 // bumped when pending is handed to the sender
	drivers map[DriverID]*driverState

	wake     chan struct{}
	flushReq chan chan error
	done     chan struct{}

	accepted, coalesced, overloaded, handoffs atomic.Uint64
	produced, produceErrors                   atomic.Uint64

	// The breaker: open while Kafka acknowledges nothing. progress is the
	// last time (unix ns) records were acknowledged or none were waiting.
	open                   atomic.Bool
	progress               atomic.Int64
	unavailable, openCount atomic.Uint64
}

// NewPublisher returns a Publisher; events are accepted at once and sent
// once Run is running.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(cfg.Linger),
		kgo.ProducerBatchMaxBytes(cfg.BatchMaxBytes),
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		// Events are 40-100 bytes of mostly incompressible numbers;
		// compression costs more CPU than it saves on a LAN.
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// Idempotent writes are kgo's default (acks=all); stated here
		// because per-partition order depends on it.
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}
	opts = append(opts, RetryOpts()...)
	cl, err := kgo.NewClient(append(opts, cfg.ClientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return &Publisher{
		cfg:      cfg,
		cl:       cl,
		gen:      1,
		drivers:  make(map[DriverID]*driverState),
		wake:     make(chan struct{}, 1),
		flushReq: make(chan chan error),
		done:     make(chan struct{}),
	}, nil
}

// Publish accepts a position event (Kind zero means KindPosition) or a
// removal. A zero ReceiveTime is stamped with the publisher's clock. It
// never blocks: it returns ErrOverloaded when the buffer is full, or an
// error wrapping ErrBadEvent for an invalid event.
//
// When a driver's partition changes, a removal (same seq) goes to the old
// partition as well, so the old owner drops the driver at once instead of
// at TTL.
func (p *Publisher) Publish(ev Event) error {
	if ev.Kind == 0 {
		ev.Kind = KindPosition
	}
	if ev.ReceiveTime.IsZero() {
		ev.ReceiveTime = p.cfg.Now()
	}
	if err := ev.Validate(); err != nil {
		return err
	}
	part, _, err := p.cfg.Partitioner.ForPos(ev.Pos)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadEvent, err)
	}

	if p.open.Load() {
		p.unavailable.Add(1)
		return ErrUnavailable
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return ErrClosed
	default:
	}
	st := p.drivers[ev.Driver]
	pending := st != nil && st.gen == p.gen // an event for (driver, st.part) is unsent
	if ev.Kind == KindRemoval {
		if st != nil {
			part = st.part // remove where the driver is, not where the removal points
		}
		if pending {
			p.pending[st.slot] = pendingEvent{ev: ev, part: part}
			p.coalesced.Add(1)
		} else if len(p.pending) >= p.cfg.MaxPending {
			p.overloaded.Add(1)
			return ErrOverloaded
		} else {
			p.pending = append(p.pending, pendingEvent{ev: ev, part: part})
		}
		delete(p.drivers, ev.Driver)
	} else {
		handoff := st != nil && st.part != part
		// Events for one (driver, partition) coalesce, latest wins;
		// order between partitions does not matter.
		need := 1
		if pending && !handoff {
			need = 0
		}
		if handoff && !pending {
			need++
		}
		if len(p.pending)+need > p.cfg.MaxPending {
			p.overloaded.Add(1)
			return ErrOverloaded
		}
		if st == nil {
			st = &driverState{}
			p.drivers[ev.Driver] = st
		}
		if handoff {
			rm := pendingEvent{part: st.part, ev: Event{Kind: KindRemoval, Driver: ev.Driver, Pos: ev.Pos, Heading: NoHeading,
				Seq: ev.Seq, SourceTime: ev.SourceTime, ReceiveTime: ev.ReceiveTime}}
			if pending {
				p.pending[st.slot] = rm // replaces the unsent position at the old partition
				p.coalesced.Add(1)
			} else {
				p.pending = append(p.pending, rm)
			}
			p.handoffs.Add(1)
		}
		if pending && !handoff {
			p.pending[st.slot].ev = ev
			p.coalesced.Add(1)
		} else {
			st.gen, st.slot = p.gen, int32(len(p.pending))
			p.pending = append(p.pending, pendingEvent{ev: ev, part: part})
		}
		st.part, st.at = part, ev.ReceiveTime.UnixNano()
	}
	p.accepted.Add(1)
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// Remove publishes that driver id went offline, to the partition it was
// last sent to. seq should be newer than its last position's.
func (p *Publisher) Remove(id DriverID, seq uint64, lastPos geo.LatLng) error {
	return p.Publish(Event{Kind: KindRemoval, Driver: id, Pos: lastPos, Heading: NoHeading, Seq: seq})
}

// Stats returns the counters.
func (p *Publisher) Stats() PublisherStats {
	p.mu.Lock()
	n := len(p.pending)
	p.mu.Unlock()
	return PublisherStats{
		Accepted: p.accepted.Load(), Coalesced: p.coalesced.Load(), Overloaded: p.overloaded.Load(),
		Handoffs: p.handoffs.Load(), Produced: p.produced.Load(), ProduceErrors: p.produceErrors.Load(),
		Unavailable: p.unavailable.Load(), BreakerOpens: p.openCount.Load(), BreakerOpen: p.open.Load(),
		Pending: n,
	}
}

// Client is the publisher's Kafka client, for admin calls (EnsureTopic).
func (p *Publisher) Client() *kgo.Client { return p.cl }

// Flush returns once every event accepted before the call is acknowledged
// by Kafka (or failed), or ctx ends. Run must be running.
func (p *Publisher) Flush(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case p.flushReq <- reply:
	case <-p.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run sends pending events until ctx ends, then flushes what is left
// (bounded by ShutdownTimeout) and closes the client. It is the only
// goroutine that produces; call it once.
func (p *Publisher) Run(ctx context.Context) error {
	defer p.cl.Close()
	defer func() {
		p.mu.Lock()
		close(p.done)
		p.mu.Unlock()
	}()
	var spare []pendingEvent
	forget := time.NewTicker(p.cfg.Forget / 2)
	defer forget.Stop()
	// The breaker's watch runs beside the sender, which blocks in Produce
	// while the client's buffer is full (exactly when Kafka is down).
	p.progress.Store(time.Now().UnixNano())
	if p.cfg.StallTimeout > 0 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(min(p.cfg.StallTimeout/4, 250*time.Millisecond))
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case now := <-t.C:
					p.checkStall(now)
				}
			}
		}()
		defer func() {
			close(stop)
			wg.Wait()
		}()
	}
	drain := func(ctx context.Context) {
		p.mu.Lock()
		batch := p.pending
		p.pending = spare[:0]
		p.gen++
		p.mu.Unlock()
		for i := range batch {
			p.produce(ctx, batch[i])
			batch[i] = pendingEvent{}
		}
		spare = batch
	}
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownTimeout)
			defer cancel()
			drain(sctx)
			if err := p.cl.Flush(sctx); err != nil {
				p.cfg.Logger.Warn("positions publisher: final flush", "err", err, "pending", p.cl.BufferedProduceRecords())
			}
			return nil
		case <-p.wake:
			drain(ctx)
		case <-forget.C:
			p.forget()
		case reply := <-p.flushReq:
			drain(ctx)
			reply <- p.cl.Flush(ctx)
		}
	}
}

// forget drops the handoff memory of drivers silent for cfg.Forget. It
// holds mu for one pass over the table (tens of ms for a million drivers,
// every Forget/2).
func (p *Publisher) forget() {
	cutoff := p.cfg.Now().Add(-p.cfg.Forget).UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	maps.DeleteFunc(p.drivers, func(_ DriverID, st *driverState) bool { return st.at < cutoff })
}

func (p *Publisher) produce(ctx context.Context, pe pendingEvent) {
	// Key and value share one allocation.
	n := len(pe.ev.Driver)
	buf := AppendEvent(append(make([]byte, 0, n+eventHeaderLen+n), pe.ev.Driver...), pe.ev)
	rec := &kgo.Record{
		Key:       buf[:n:n],
		Value:     buf[n:],
		Partition: int32(pe.part),
		Timestamp: pe.ev.ReceiveTime, // offsets-for-times in the rebuild count from it
	}
	// Produce blocks while the client's buffer is full; meanwhile
	// Publish keeps coalescing into p.pending.
	p.cl.Produce(ctx, rec, p.promise)
}

// checkStall opens the breaker when records have waited StallTimeout
// without an acknowledgement. Acknowledgements close it (promise).
func (p *Publisher) checkStall(now time.Time) {
	waiting := p.cl.BufferedProduceRecords() > 0
	if !waiting {
		p.mu.Lock()
		waiting = len(p.pending) > 0
		p.mu.Unlock()
	}
	if !waiting {
		p.progress.Store(now.UnixNano())
		return
	}
	if stalled := now.Sub(time.Unix(0, p.progress.Load())); stalled >= p.cfg.StallTimeout && !p.open.Swap(true) {
		p.openCount.Add(1)
		p.cfg.Logger.Warn("positions publisher: Kafka acknowledged nothing; refusing positions until it does",
			"stalled", stalled.Round(time.Millisecond), "buffered", p.cl.BufferedProduceRecords())
	}
}

func (p *Publisher) promise(r *kgo.Record, err error) {
	if err == nil {
		p.produced.Add(1)
		p.progress.Store(time.Now().UnixNano())
		if p.open.CompareAndSwap(true, false) {
			p.cfg.Logger.Info("positions publisher: Kafka acknowledges again; accepting positions")
		}
		return
	}
	if n := p.produceErrors.Add(1); n&(n-1) == 0 && !errors.Is(err, context.Canceled) {
		// Logged at powers of two so that a broker outage does not
		// flood the log.
		p.cfg.Logger.Warn("positions publisher: produce failed", "err", err, "partition", r.Partition, "failures", n)
	}
}
