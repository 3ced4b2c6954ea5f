package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/positions"
)

// ingest is the GPS path of one process: the Kafka cluster it talks to
// (in-process kfake when -kafka is empty), the publisher the gateway uses
// (roles all and api) and the cell worker (roles all and worker).
type ingest struct {
	cluster   *kfake.Cluster // nil with -kafka
	brokers   []string
	publisher *positions.Publisher // nil in role worker
	worker    *positions.Worker    // nil in role api
}

func newIngest(ctx context.Context, cfg Config, log *slog.Logger) (*ingest, error) {
	in := &ingest{}
	if len(cfg.Kafka) == 0 {
		c, err := kfake.NewCluster(
			kfake.NumBrokers(1),
			kfake.SeedTopics(int32(cfg.Partitions), positions.DefaultTopic, dispatch.DefaultRideEventsTopic),
			kfake.SeedTopics(1, positions.DefaultDLQTopic),
			kfake.GroupMinSessionTimeout(500*time.Millisecond),
			// How often the retention below is applied.
			kfake.BrokerConfigs(map[string]string{"log.cleaner.backoff.ms": strconv.FormatInt(embeddedRetentionEvery.Milliseconds(), 10)}),
		)
		if err != nil {
			return nil, fmt.Errorf("in-process kafka: %w", err)
		}
		in.cluster = c
		in.brokers = c.ListenAddrs()
		if err := boundEmbeddedTopics(ctx, in.brokers, embeddedPartitionBytes); err != nil {
			c.Close()
			return nil, err
		}
		log.Info("in-process kafka (kfake) started", "brokers", strings.Join(in.brokers, ","))
	} else {
		in.brokers = cfg.Kafka
		if err := in.ensureTopics(ctx, cfg); err != nil {
			return nil, err
		}
	}
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: int32(cfg.Partitions)}
	if cfg.Role == "all" || cfg.Role == "api" {
		pc := positions.DefaultPublisherConfig()
		pc.Brokers, pc.Partitioner, pc.Logger, pc.Now = in.brokers, pt, log, clock.Or(cfg.Clock).Now
		p, err := positions.NewPublisher(pc)
		if err != nil {
			in.close()
			return nil, err
		}
		in.publisher = p
	}
	if cfg.Role == "all" || cfg.Role == "worker" {
		wc := positions.DefaultWorkerConfig()
		wc.Brokers, wc.Logger = in.brokers, log
		wc.Index.TTL, wc.Index.Now = cfg.TTL, clock.Or(cfg.Clock).Now
		wc.SessionTimeout = cfg.SessionTimeout
		wc.HeartbeatInterval = cfg.SessionTimeout / 10
		w, err := positions.NewWorker(wc)
		if err != nil {
			in.close()
			return nil, err
		}
		in.worker = w
	}
	return in, nil
}

// The in-process broker keeps its records in this process's memory, so
// each partition of its topics is bounded in bytes (oldest batches go
// first, checked every embeddedRetentionEvery): without a bound a steady
// position stream grows the heap without end (5,000 positions a second
// added about a megabyte a second). The bound is in bytes, not time: on
// the virtual clock of a deterministic simulation the records carry
// simulated timestamps, which a time bound on the wall clock would take
// for long expired. A partition's bound holds many minutes of a busy
// city's positions, far more than the TTL a rebuild replays.
//
// The broker writes each partition's records to segment files it keeps
// in memory and frees only whole segments, and a segment file grows by
// doubling (a new buffer, zeroed, the old one copied in): at the broker's
// 100 MiB default a partition held up to that much whatever the bound,
// and each doubling of a segment was a burst of tens of megabytes of
// fresh memory that stalled requests and brought on a collection. Small
// segments make the bound hold (about the bound plus two segments a
// partition) and keep every growth step small.
const (
	embeddedPartitionBytes = 32 << 20
	embeddedSegmentBytes   = 1 << 20
	embeddedRetentionEvery = 30 * time.Second
)

// boundEmbeddedTopics sets retention.bytes to limit on the in-process
// broker's topics, with segments of embeddedSegmentBytes, and lifts their
// time bound.
func boundEmbeddedTopics(ctx context.Context, brokers []string, limit int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("in-process kafka: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	bytes, segment, forever := strconv.Itoa(limit), strconv.Itoa(embeddedSegmentBytes), "-1"
	topics := []string{positions.DefaultTopic, positions.DefaultDLQTopic, dispatch.DefaultRideEventsTopic}
	res, err := kadm.NewClient(cl).AlterTopicConfigs(ctx, []kadm.AlterConfig{
		{Op: kadm.SetConfig, Name: "retention.bytes", Value: &bytes},
		{Op: kadm.SetConfig, Name: "segment.bytes", Value: &segment},
		{Op: kadm.SetConfig, Name: "retention.ms", Value: &forever}, // no time bound (see above), not the default week
	}, topics...)
	if err != nil {
		return fmt.Errorf("in-process kafka: bounding its topics: %w", err)
	}
	for _, r := range res {
		if r.Err != nil {
			return fmt.Errorf("in-process kafka: bounding topic %s: %w (%s)", r.Name, r.Err, r.ErrMessage)
		}
	}
	return nil
}

// ensureTopics creates the topics on a real cluster if they are missing
// and checks the partition count of an existing one.
func (in *ingest) ensureTopics(ctx context.Context, cfg Config) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.brokers...))
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := positions.EnsureTopic(ctx, cl, positions.DefaultTopic, int32(cfg.Partitions)); err != nil {
		return err
	}
	return positions.EnsureTopic(ctx, cl, positions.DefaultDLQTopic, 0)
}

// run starts the publisher and worker goroutines on g.
func (in *ingest) run(ctx context.Context, g *errgroup.Group) {
	if in.publisher != nil {
		g.Go(func() error { return in.publisher.Run(ctx) })
	}
	if in.worker != nil {
		g.Go(func() error { return in.worker.Run(ctx) })
	}
}

// close stops the in-process cluster; call it after run's goroutines
// have returned.
func (in *ingest) close() {
	if in.cluster != nil {
		in.cluster.Close()
	}
}

// readyz answers 503 until every partition this process owns is rebuilt
// (and, for a worker, until it has joined the group).
func (in *ingest) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if in.worker == nil {
		io.WriteString(w, "ok\n")
		return
	}
	var b strings.Builder
	for _, p := range in.worker.Partitions() {
		state := "rebuilding"
		if p.Ready {
			state = "ready"
		}
		fmt.Fprintf(&b, "partition %d %s drivers=%d\n", p.Partition, state, p.Drivers)
	}
	if !in.worker.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "not ready\n"+b.String())
		return
	}
	io.WriteString(w, "ok\n"+b.String())
}

// register adds the ingest collectors to reg.
func (in *ingest) register(reg *prometheus.Registry) {
	reg.MustRegister(ingestCollector{in})
}

type ingestCollector struct{ in *ingest }

var (
	descRecords      = prometheus.NewDesc("hexd_positions_records_total", "Records consumed from the positions topic.", nil, nil)
	descOutcomes     = prometheus.NewDesc("hexd_positions_events_total", "Consumed events by outcome in the index.", []string{"outcome"}, nil)
	descDLQ          = prometheus.NewDesc("hexd_positions_dead_letters_total", "Records sent to the dead-letter topic.", nil, nil)
	descDLQDropped   = prometheus.NewDesc("hexd_positions_dead_letters_dropped_total", "Dead letters the producer could not take.", nil, nil)
	descRebuilds     = prometheus.NewDesc("hexd_positions_rebuild_seconds", "Time from partition assignment to rebuilt index.", nil, nil)
	descLatency      = prometheus.NewDesc("hexd_positions_ingest_latency_seconds", "Time from a position's gateway receive stamp to its apply in the index.", nil, nil)
	descPartitions   = prometheus.NewDesc("hexd_positions_partitions", "Partitions owned by this worker, by state.", []string{"state"}, nil)
	descDrivers      = prometheus.NewDesc("hexd_positions_drivers", "Drivers held per owned partition (before expiry).", []string{"partition"}, nil)
	descLag          = prometheus.NewDesc("hexd_positions_consumer_lag", "Records between a partition's end offset and the owner's next offset.", []string{"partition"}, nil)
	descPublished    = prometheus.NewDesc("hexd_publisher_events_total", "Events offered to the publisher, by result.", []string{"result"}, nil)
	descBreakerOpens = prometheus.NewDesc("hexd_publisher_breaker_opens_total", "Times the produce path's circuit breaker opened (Kafka acknowledged nothing for the stall timeout).", nil, nil)
	descBreakerOpen  = prometheus.NewDesc("hexd_publisher_breaker_open", "1 while the produce path's circuit breaker refuses positions.", nil, nil)
	descHandoffs     = prometheus.NewDesc("hexd_publisher_handoffs_total", "Removals sent to a driver's previous partition.", nil, nil)
	descProduced     = prometheus.NewDesc("hexd_publisher_records_total", "Records acknowledged or failed by Kafka.", []string{"result"}, nil)
	descPending      = prometheus.NewDesc("hexd_publisher_pending", "Events waiting to be handed to the Kafka client.", nil, nil)
)

func (c ingestCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRecords, descOutcomes, descDLQ, descDLQDropped, descRebuilds, descLatency,
		descPartitions, descDrivers, descLag, descPublished, descHandoffs, descProduced, descPending,
		descBreakerOpens, descBreakerOpen} {
		ch <- d
	}
}

func (c ingestCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if w := c.in.worker; w != nil {
		s := w.Stats()
		counter(descRecords, s.Records)
		counter(descOutcomes, s.Applied, "applied")
		counter(descOutcomes, s.Stale, "stale")
		counter(descOutcomes, s.TooOld, "too_old")
		counter(descDLQ, s.DLQ)
		counter(descDLQDropped, s.DLQDropped)
		ch <- histogram(descRebuilds, w.RebuildDurations())
		ch <- histogram(descLatency, w.IngestLatency())
		gauge(descPartitions, float64(s.Partitions), "owned")
		gauge(descPartitions, float64(s.ReadyPartitions), "ready")
		for _, p := range w.Partitions() {
			gauge(descDrivers, float64(p.Drivers), strconv.Itoa(int(p.Partition)))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		lag, err := w.Lag(ctx)
		cancel()
		if err == nil {
			for p, l := range lag {
				gauge(descLag, float64(l), strconv.Itoa(int(p)))
			}
		}
	}
	if p := c.in.publisher; p != nil {
		s := p.Stats()
		counter(descPublished, s.Accepted, "accepted")
		counter(descPublished, s.Coalesced, "coalesced")
		counter(descPublished, s.Overloaded, "overloaded")
		counter(descPublished, s.Unavailable, "unavailable")
		counter(descBreakerOpens, s.BreakerOpens)
		open := 0.0
		if s.BreakerOpen {
			open = 1
		}
		gauge(descBreakerOpen, open)
		counter(descHandoffs, s.Handoffs)
		counter(descProduced, s.Produced, "ok")
		counter(descProduced, s.ProduceErrors, "error")
		gauge(descPending, float64(s.Pending))
	}
}

// histogram turns a latency snapshot into a Prometheus histogram.
func histogram(d *prometheus.Desc, s positions.LatencySnapshot, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(s.Upper)-1)
	var cum uint64
	for i := range len(s.Upper) - 1 {
		cum += s.Counts[i]
		buckets[s.Upper[i].Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(d, s.Count, s.Sum.Seconds(), buckets, labels...)
}
