package positions

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/geo"
)

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	Brokers  []string
	Topic    string // the positions topic
	DLQTopic string // where undecodable or invalid records go
	Group    string // consumer group of all workers of a deployment
	// Index configures each partition's Index; Index.TTL is also the
	// rebuild window.
	Index Config
	// RebuildMargin is replayed on top of TTL when a partition is
	// rebuilt, for producers whose clocks (the record timestamps) run a
	// little ahead. Older positions are dropped by the Index as TooOld.
	RebuildMargin time.Duration
	// ExpireEvery is how often each partition drops drivers past TTL.
	ExpireEvery time.Duration
	// SessionTimeout, HeartbeatInterval and RebalanceTimeout are the
	// consumer group's. SessionTimeout bounds how long the partitions of a
	// killed worker stay unowned; Kafka's group.min.session.timeout.ms
	// (6 s by default) must allow it.
	SessionTimeout    time.Duration
	HeartbeatInterval time.Duration
	RebalanceTimeout  time.Duration
	// QueueLen bounds the record batches (and, separately, the queries)
	// waiting for one partition's goroutine. When it is full the fetch
	// loop waits: Kafka keeps the backlog, visible as consumer lag.
	QueueLen int
	Logger   *slog.Logger
	// ClientOpts are extra kgo options.
	ClientOpts []kgo.Opt
}

// DefaultWorkerConfig returns defaults matching DefaultPublisherConfig.
func DefaultWorkerConfig() WorkerConfig {
	return WorkerConfig{
		Brokers:           []string{"127.0.0.1:9092"},
		Topic:             DefaultTopic,
		DLQTopic:          DefaultDLQTopic,
		Group:             "hexdispatch-positions",
		Index:             DefaultConfig(),
		RebuildMargin:     2 * time.Second,
		ExpireEvery:       time.Second,
		SessionTimeout:    3 * time.Second,
		HeartbeatInterval: 300 * time.Millisecond,
		RebalanceTimeout:  10 * time.Second,
		QueueLen:          64,
		Logger:            slog.Default(),
	}
}

// Validate checks c.
func (c WorkerConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("%w: no brokers", ErrInvalidConfig)
	case c.Topic == "" || c.DLQTopic == "" || c.Group == "":
		return fmt.Errorf("%w: topic, dead-letter topic and group must be set", ErrInvalidConfig)
	case c.Topic == c.DLQTopic:
		return fmt.Errorf("%w: the dead-letter topic is the positions topic", ErrInvalidConfig)
	case c.RebuildMargin < 0:
		return fmt.Errorf("%w: RebuildMargin %v is negative", ErrInvalidConfig, c.RebuildMargin)
	case c.ExpireEvery <= 0:
		return fmt.Errorf("%w: ExpireEvery %v must be positive", ErrInvalidConfig, c.ExpireEvery)
	case c.SessionTimeout <= 0 || c.HeartbeatInterval <= 0 || c.HeartbeatInterval >= c.SessionTimeout:
		return fmt.Errorf("%w: want 0 < HeartbeatInterval (%v) < SessionTimeout (%v)", ErrInvalidConfig, c.HeartbeatInterval, c.SessionTimeout)
	case c.RebalanceTimeout <= 0:
		return fmt.Errorf("%w: RebalanceTimeout %v must be positive", ErrInvalidConfig, c.RebalanceTimeout)
	case c.QueueLen < 1:
		return fmt.Errorf("%w: QueueLen %d must be positive", ErrInvalidConfig, c.QueueLen)
	case c.Logger == nil:
		return fmt.Errorf("%w: Logger is nil", ErrInvalidConfig)
	}
	return c.Index.Validate()
}

// DLQ record headers.
const (
	HeaderReason    = "reason"
	HeaderPartition = "source-partition"
	HeaderOffset    = "source-offset"
)

// WorkerStats are a worker's counters since it started, and its gauges now.
type WorkerStats struct {
	Records    uint64 // records taken from Kafka
	Applied    uint64 // upserts and removals that changed an index
	Stale      uint64 // dropped by the seq guard (duplicates, reordering)
	TooOld     uint64 // already past TTL when read (rebuild tails)
	DLQ        uint64 // records sent to the dead-letter topic
	DLQDropped uint64 // dead letters the producer could not take
	Rebuilds   uint64 // partitions rebuilt (assigned and caught up)

	Partitions      int // owned now
	ReadyPartitions int // owned and rebuilt
	Drivers         int // held over all owned partitions (before Expire)
}

// PartitionStatus is one owned partition.
type PartitionStatus struct {
	Partition Partition
	Ready     bool
	Drivers   int
	// Next is the offset the owner will apply next; RebuildEnd the end
	// offset at assignment, which the rebuild replays up to.
	Next, RebuildEnd int64
	// Rebuild is how long the rebuild took (0 while it runs).
	Rebuild time.Duration
}

// Worker is a positions cell worker: a consumer-group member that owns one
// Index per assigned partition and answers queries for them.
//
// Goroutines: Run polls Kafka and hands each partition's records to that
// partition's owner goroutine, which alone touches the partition's Index
// (applying records, expiring, answering queries sent over its query
// channel). Owners start when the group assigns a partition and stop (the
// Index is dropped) when it is revoked or lost. ownersMu guards only the
// partition -> owner map.
//
// Offsets are not committed. A newly assigned partition is rebuilt from
// the records of the last TTL (offsets for times), never from a committed
// offset: positions older than TTL are useless, and replaying the window is
// what makes a fresh owner's state complete. Committing would only add
// coordinator load; lag is measured against the owners' own offsets.
type Worker struct {
	cfg WorkerConfig

	ownersMu sync.Mutex
	// changed is signalled (never blocking) when Owned changes: a
	// partition became ready or was dropped.
	changed chan struct{}
	owners  map[Partition]*owner
	joined  bool // an assignment has completed and not been lost since
	// generation is the consumer-group generation of the last assignment:
	// the fence an ownership registry needs.
	generation int64
	cl         *kgo.Client
	adm        *kadm.Client

	ownersWG sync.WaitGroup

	records, applied, stale, tooOld atomic.Uint64
	dlq, dlqDropped, rebuilds       atomic.Uint64
	latency                         LatencyHistogram
	rebuildLatency                  LatencyHistogram
}

// owner is the goroutine that owns one partition's Index.
type owner struct {
	part     Partition
	in       chan []*kgo.Record
	queries  chan ownerQuery
	stop     chan struct{} // closed to stop the goroutine
	done     chan struct{} // closed when it has stopped
	assigned time.Time

	end     atomic.Int64 // rebuild target; -1 until known
	next    atomic.Int64 // next offset to apply
	ready   atomic.Bool
	drivers atomic.Int64
	rebuild atomic.Int64 // ns
}

type ownerQuery struct {
	nearest *NearestRequest
	counts  *CellCountsRequest
	reply   chan ownerReply // buffered: the owner never blocks on it
}

type ownerReply struct {
	cands  []Candidate
	counts map[geo.Cell]int
	err    error
}

// NewWorker returns a Worker; it joins the group when Run starts.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Worker{cfg: cfg, owners: make(map[Partition]*owner), changed: make(chan struct{}, 1)}, nil
}

// Run consumes until ctx ends, then leaves the group and stops every owner.
// Call it once.
func (w *Worker) Run(ctx context.Context) error {
	admCl, err := kgo.NewClient(append(append([]kgo.Opt{kgo.SeedBrokers(w.cfg.Brokers...)}, RetryOpts()...), w.cfg.ClientOpts...)...)
	if err != nil {
		return fmt.Errorf("kafka admin client: %w", err)
	}
	defer admCl.Close()
	opts := []kgo.Opt{
		kgo.SeedBrokers(w.cfg.Brokers...),
		kgo.ConsumerGroup(w.cfg.Group),
		kgo.ConsumeTopics(w.cfg.Topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(w.cfg.SessionTimeout),
		kgo.HeartbeatInterval(w.cfg.HeartbeatInterval),
		kgo.RebalanceTimeout(w.cfg.RebalanceTimeout),
		kgo.FetchMaxBytes(32 << 20),
		kgo.FetchMaxPartitionBytes(8 << 20),
		// A fetch waiting for data holds up a rebalance until it
		// returns (the client stops its fetch session first), so a
		// short wait is faster failover for a few idle requests a
		// second.
		kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.AdjustFetchOffsetsFn(w.adjustOffsets),
		kgo.OnPartitionsAssigned(w.onAssigned),
		kgo.OnPartitionsRevoked(w.onRevoked),
		kgo.OnPartitionsLost(w.onLost),
		// The dead-letter producer must never block an owner.
		kgo.MaxBufferedRecords(10_000),
		kgo.RecordDeliveryTimeout(30 * time.Second),
	}
	w.ownersMu.Lock()
	w.adm = kadm.NewClient(admCl)
	w.ownersMu.Unlock()
	opts = append(opts, RetryOpts()...)
	cl, err := kgo.NewClient(append(opts, w.cfg.ClientOpts...)...)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	w.ownersMu.Lock()
	w.cl = cl
	w.ownersMu.Unlock()

	var pollErrs uint64
	for ctx.Err() == nil {
		fs := cl.PollRecords(ctx, 8192)
		if ctx.Err() != nil {
			break
		}
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, kgo.ErrClientClosed) {
				return
			}
			if pollErrs++; pollErrs&(pollErrs-1) == 0 {
				w.cfg.Logger.Warn("positions worker: fetch", "topic", topic, "partition", p, "err", err, "errors", pollErrs)
			}
		})
		fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if ftp.Topic != w.cfg.Topic || len(ftp.Records) == 0 {
				return
			}
			o := w.owner(Partition(ftp.Partition))
			if o == nil {
				return // revoked since the fetch; the next owner replays
			}
			w.records.Add(uint64(len(ftp.Records)))
			select {
			case o.in <- ftp.Records:
			case <-o.done:
			case <-ctx.Done():
			}
		})
	}

	// Leaving the group hands the partitions over at once instead of
	// after SessionTimeout.
	cl.Close()
	w.ownersMu.Lock()
	for p, o := range w.owners {
		close(o.stop)
		delete(w.owners, p)
	}
	w.joined = false
	w.ownersMu.Unlock()
	w.ownersWG.Wait()
	return nil
}

func (w *Worker) owner(p Partition) *owner {
	w.ownersMu.Lock()
	defer w.ownersMu.Unlock()
	return w.owners[p]
}

// onAssigned runs after every assignment, even an empty one. New
// partitions get a (not ready) owner here already, so that Ready is false
// from the moment they are ours; adjustOffsets sets their rebuild target.
func (w *Worker) onAssigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	_, gen := cl.GroupMetadata()
	w.ownersMu.Lock()
	defer w.ownersMu.Unlock()
	w.generation = int64(gen)
	for _, p := range assigned[w.cfg.Topic] {
		if _, ok := w.owners[Partition(p)]; !ok {
			w.startOwnerLocked(Partition(p))
		}
	}
	w.joined = true
}

func (w *Worker) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	w.dropOwners(revoked[w.cfg.Topic])
}

func (w *Worker) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	w.dropOwners(lost[w.cfg.Topic])
	w.ownersMu.Lock()
	w.joined = false
	w.ownersMu.Unlock()
}

// dropOwners stops the owners of ps and waits for them, so that a partition
// revoked here and assigned elsewhere is never answered for twice.
func (w *Worker) dropOwners(ps []int32) {
	var stopped []*owner
	w.ownersMu.Lock()
	for _, p := range ps {
		if o, ok := w.owners[Partition(p)]; ok {
			close(o.stop)
			delete(w.owners, Partition(p))
			stopped = append(stopped, o)
		}
	}
	w.ownersMu.Unlock()
	for _, o := range stopped {
		<-o.done
		w.cfg.Logger.Info("positions worker: partition dropped", "partition", o.part)
	}
	if len(stopped) > 0 {
		w.ownedChanged()
	}
}

// adjustOffsets runs after the group assigned partitions and before
// fetching starts: it points each new partition at now - TTL - margin and
// records the end offset the rebuild must reach.
func (w *Worker) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[w.cfg.Topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	since := w.cfg.Index.Now().Add(-w.cfg.Index.TTL - w.cfg.RebuildMargin).UnixMilli()
	w.ownersMu.Lock()
	adm := w.adm
	w.ownersMu.Unlock()
	// End first: records produced between the two lookups are replayed
	// either way, and the target can only be earlier, never missing.
	// A failure here fails the group session and kgo rejoins, so a few
	// quick retries first ride out a broker blip.
	var ends, starts kadm.ListedOffsets
	var err error
	for attempt := 1; ; attempt++ {
		ends, err = adm.ListEndOffsets(ctx, w.cfg.Topic)
		if err == nil {
			err = ends.Error()
		}
		if err == nil {
			starts, err = adm.ListOffsetsAfterMilli(ctx, since, w.cfg.Topic)
			if err == nil {
				err = starts.Error()
			}
		}
		if err == nil {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("positions worker: rebuild offsets: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	w.ownersMu.Lock()
	defer w.ownersMu.Unlock()
	for p := range parts {
		end, _ := ends.Lookup(w.cfg.Topic, p)
		start, _ := starts.Lookup(w.cfg.Topic, p)
		if start.Offset < 0 || start.Offset > end.Offset {
			start.Offset = end.Offset
		}
		o := w.owners[Partition(p)]
		if o == nil || o.end.Load() >= 0 {
			// Not seen by onAssigned, or an owner from an earlier
			// assignment: start over with an empty Index.
			if o != nil {
				close(o.stop)
				delete(w.owners, Partition(p))
			}
			o = w.startOwnerLocked(Partition(p))
		}
		o.next.Store(start.Offset)
		o.end.Store(end.Offset)
		if start.Offset >= end.Offset {
			o.markReady(w)
		}
		parts[p] = kgo.NewOffset().At(start.Offset).WithEpoch(-1)
		w.cfg.Logger.Info("positions worker: rebuilding partition", "partition", p, "from", start.Offset, "to", end.Offset)
	}
	return offsets, nil
}

func (w *Worker) startOwnerLocked(p Partition) *owner {
	o := &owner{
		part:     p,
		in:       make(chan []*kgo.Record, w.cfg.QueueLen),
		queries:  make(chan ownerQuery, w.cfg.QueueLen),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		assigned: time.Now(),
	}
	o.end.Store(-1)
	w.owners[p] = o
	w.ownersWG.Add(1)
	go func() {
		defer w.ownersWG.Done()
		defer close(o.done)
		o.run(w)
	}()
	return o
}

func (o *owner) markReady(w *Worker) {
	if o.ready.Swap(true) {
		return
	}
	d := time.Since(o.assigned)
	o.rebuild.Store(int64(d))
	w.rebuilds.Add(1)
	w.rebuildLatency.Observe(d)
	w.cfg.Logger.Info("positions worker: partition ready", "partition", o.part, "rebuild", d, "drivers", o.drivers.Load())
	w.ownedChanged()
}

func (w *Worker) ownedChanged() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// OwnedChanged is signalled when Owned may have changed (a partition
// became ready or was dropped), so the ownership registry can publish at
// once rather than at its next heartbeat. Several changes may share one
// signal.
func (w *Worker) OwnedChanged() <-chan struct{} { return w.changed }

func (o *owner) run(w *Worker) {
	x, err := NewIndex(w.cfg.Index)
	if err != nil {
		// Validate checked the config; this cannot happen.
		w.cfg.Logger.Error("positions worker: index", "err", err)
		return
	}
	tick := time.NewTicker(w.cfg.ExpireEvery)
	defer tick.Stop()
	for {
		// Queries first: a match waits on them, records can lag a
		// little.
		select {
		case q := <-o.queries:
			o.answer(x, q)
			continue
		default:
		}
		select {
		case <-o.stop:
			return
		case q := <-o.queries:
			o.answer(x, q)
		case recs := <-o.in:
			o.apply(w, x, recs)
		case <-tick.C:
			x.Expire()
			o.drivers.Store(int64(x.Len()))
		}
	}
}

func (o *owner) answer(x *Index, q ownerQuery) {
	var r ownerReply
	switch {
	case q.nearest != nil:
		r.cands, r.err = x.Nearest(q.nearest.Center, q.nearest.K, q.nearest.RadiusM, q.nearest.Filter)
	case q.counts != nil:
		r.counts, r.err = x.CellCounts(q.counts.Res, q.counts.Filter)
	}
	q.reply <- r
}

func (o *owner) apply(w *Worker, x *Index, recs []*kgo.Record) {
	live := o.ready.Load()
	var now time.Time
	if live {
		now = time.Now()
	}
	var applied, stale, tooOld uint64
	for _, r := range recs {
		ev, err := DecodeEvent(r.Value)
		if err == nil {
			var out Outcome
			switch ev.Kind {
			case KindPosition:
				out, err = x.Upsert(ev.Driver, ev.Pos, ev.Status, ev.Seq, ev.ReceiveTime)
			case KindRemoval:
				out = x.Remove(ev.Driver, ev.Seq)
			}
			switch {
			case out.Applied():
				applied++
			case out == Stale:
				stale++
			case out == TooOld:
				tooOld++
			}
			if live {
				w.latency.Observe(now.Sub(ev.ReceiveTime))
			}
		}
		if err != nil {
			w.deadLetter(r, err)
		}
	}
	w.applied.Add(applied)
	w.stale.Add(stale)
	w.tooOld.Add(tooOld)
	last := recs[len(recs)-1].Offset
	o.next.Store(last + 1)
	o.drivers.Store(int64(x.Len()))
	if !live {
		if end := o.end.Load(); end >= 0 && last+1 >= end {
			o.markReady(w)
		}
	}
}

// deadLetter sends r to the dead-letter topic with the reason, without
// waiting: a full producer buffer drops the letter (counted) rather than
// stall the partition.
func (w *Worker) deadLetter(r *kgo.Record, reason error) {
	w.dlq.Add(1)
	w.ownersMu.Lock()
	cl := w.cl
	w.ownersMu.Unlock()
	dl := &kgo.Record{
		Topic: w.cfg.DLQTopic,
		Key:   r.Key,
		Value: r.Value,
		Headers: []kgo.RecordHeader{
			{Key: HeaderReason, Value: []byte(reason.Error())},
			{Key: HeaderPartition, Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
			{Key: HeaderOffset, Value: strconv.AppendInt(nil, r.Offset, 10)},
		},
	}
	cl.TryProduce(context.Background(), dl, func(_ *kgo.Record, err error) {
		if err != nil {
			w.dlqDropped.Add(1)
		}
	})
}

// Ready reports whether the worker has joined the group and every
// partition it owns is rebuilt.
func (w *Worker) Ready() bool {
	w.ownersMu.Lock()
	defer w.ownersMu.Unlock()
	if !w.joined {
		return false
	}
	for _, o := range w.owners {
		if !o.ready.Load() {
			return false
		}
	}
	return true
}

// Owned returns the partitions this worker owns and has rebuilt, each with
// the consumer-group generation that gave it: what it publishes in the
// ownership registry (a newer generation fences an older owner out).
func (w *Worker) Owned() map[Partition]int64 {
	w.ownersMu.Lock()
	defer w.ownersMu.Unlock()
	out := make(map[Partition]int64, len(w.owners))
	for p, o := range w.owners {
		if o.ready.Load() {
			out[p] = w.generation
		}
	}
	return out
}

// Partitions returns the owned partitions, sorted.
func (w *Worker) Partitions() []PartitionStatus {
	w.ownersMu.Lock()
	out := make([]PartitionStatus, 0, len(w.owners))
	for _, o := range w.owners {
		out = append(out, PartitionStatus{
			Partition: o.part, Ready: o.ready.Load(), Drivers: int(o.drivers.Load()),
			Next: o.next.Load(), RebuildEnd: o.end.Load(), Rebuild: time.Duration(o.rebuild.Load()),
		})
	}
	w.ownersMu.Unlock()
	slices.SortFunc(out, func(a, b PartitionStatus) int { return cmp.Compare(a.Partition, b.Partition) })
	return out
}

// Stats returns the counters and gauges.
func (w *Worker) Stats() WorkerStats {
	s := WorkerStats{
		Records: w.records.Load(), Applied: w.applied.Load(), Stale: w.stale.Load(), TooOld: w.tooOld.Load(),
		DLQ: w.dlq.Load(), DLQDropped: w.dlqDropped.Load(), Rebuilds: w.rebuilds.Load(),
	}
	for _, p := range w.Partitions() {
		s.Partitions++
		if p.Ready {
			s.ReadyPartitions++
		}
		s.Drivers += p.Drivers
	}
	return s
}

// IngestLatency is the time from a position's receive stamp to its apply
// in an Index, over live (not rebuilding) partitions.
func (w *Worker) IngestLatency() LatencySnapshot { return w.latency.Snapshot() }

// RebuildDurations is the distribution of partition rebuild times.
func (w *Worker) RebuildDurations() LatencySnapshot { return w.rebuildLatency.Snapshot() }

// Lag returns, per owned partition, how many records the owner is behind
// the partition's end offset.
func (w *Worker) Lag(ctx context.Context) (map[Partition]int64, error) {
	w.ownersMu.Lock()
	adm := w.adm
	w.ownersMu.Unlock()
	if adm == nil {
		return nil, nil
	}
	ends, err := adm.ListEndOffsets(ctx, w.cfg.Topic)
	if err != nil {
		return nil, err
	}
	out := make(map[Partition]int64)
	for _, p := range w.Partitions() {
		if end, ok := ends.Lookup(w.cfg.Topic, int32(p.Partition)); ok && end.Err == nil {
			out[p.Partition] = max(end.Offset-p.Next, 0)
		}
	}
	return out, nil
}

// Nearest implements Querier: the k nearest drivers over the requested
// partitions this worker owns and has rebuilt, merged and deduplicated by
// driver (the freshest seq wins, for a driver caught mid-handoff). Partitions
// not owned, not ready, or not answered before ctx ends are listed in
// Missed; a deadline makes the answer partial, not an error.
func (w *Worker) Nearest(ctx context.Context, req NearestRequest) (NearestResponse, error) {
	if err := validateQuery(req.Center, req.K, req.RadiusM); err != nil {
		return NearestResponse{}, err
	}
	var resp NearestResponse
	replies, missed := w.scatter(ctx, req.Partitions, func() ownerQuery {
		r := req
		return ownerQuery{nearest: &r}
	})
	resp.Missed = missed
	n := 0
	for _, r := range replies {
		n += len(r.cands)
	}
	best := make(map[DriverID]Candidate, n)
	for _, r := range replies {
		if r.err != nil {
			return NearestResponse{}, r.err
		}
		for _, c := range r.cands {
			if old, ok := best[c.ID]; !ok || c.Seq > old.Seq {
				best[c.ID] = c
			}
		}
	}
	resp.Candidates = make([]Candidate, 0, len(best))
	for _, c := range best {
		resp.Candidates = append(resp.Candidates, c)
	}
	slices.SortFunc(resp.Candidates, func(a, b Candidate) int {
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

// CellCounts implements Querier: counts summed over the owned, rebuilt
// partitions among the requested ones.
func (w *Worker) CellCounts(ctx context.Context, req CellCountsRequest) (CellCountsResponse, error) {
	if req.Res < 0 || req.Res > 15 {
		return CellCountsResponse{}, fmt.Errorf("%w: resolution %d", geo.ErrInvalidResolution, req.Res)
	}
	replies, missed := w.scatter(ctx, req.Partitions, func() ownerQuery {
		r := req
		return ownerQuery{counts: &r}
	})
	// The largest answer (each is a new map) takes the others' counts:
	// growing or copying maps of thousands of cells costs more than
	// counting them.
	base := -1
	for i, r := range replies {
		if r.err != nil {
			return CellCountsResponse{}, r.err
		}
		if base < 0 || len(r.counts) > len(replies[base].counts) {
			base = i
		}
	}
	if base < 0 {
		return CellCountsResponse{Counts: make(map[geo.Cell]int), Missed: missed}, nil
	}
	sum := replies[base].counts
	for i, r := range replies {
		if i != base {
			for c, n := range r.counts {
				sum[c] += n
			}
		}
	}
	return CellCountsResponse{Counts: sum, Missed: missed}, nil
}

// scatter sends one query to the owner of each partition and gathers the
// replies until ctx ends.
func (w *Worker) scatter(ctx context.Context, parts []Partition, mk func() ownerQuery) ([]ownerReply, []Partition) {
	type sent struct {
		o *owner
		q ownerQuery
	}
	var missed []Partition
	var inflight []sent
	seen := make(map[Partition]bool, len(parts))
	for _, p := range parts {
		if seen[p] {
			continue
		}
		seen[p] = true
		o := w.owner(p)
		if o == nil || !o.ready.Load() {
			missed = append(missed, p)
			continue
		}
		q := mk()
		q.reply = make(chan ownerReply, 1)
		select {
		case o.queries <- q:
			inflight = append(inflight, sent{o, q})
		case <-o.done:
			missed = append(missed, p)
		case <-ctx.Done():
			missed = append(missed, p)
		}
	}
	replies := make([]ownerReply, 0, len(inflight))
	for _, s := range inflight {
		select {
		case r := <-s.q.reply:
			replies = append(replies, r)
		case <-s.o.done:
			missed = append(missed, s.o.part)
		case <-ctx.Done():
			missed = append(missed, s.o.part)
		}
	}
	slices.Sort(missed)
	return replies, missed
}

var _ Querier = (*Worker)(nil)
