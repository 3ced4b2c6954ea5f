package engine

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/positions"
)

// embeddedIngest starts the in-process broker with partitions partitions
// (role all, nothing run), closed when t ends.
func embeddedIngest(ctx context.Context, t *testing.T, partitions int) *ingest {
	t.Helper()
	cfg := Config{Role: "all", Partitions: partitions, TTL: 30 * time.Second, SessionTimeout: 3 * time.Second}
	in, err := newIngest(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.close)
	t.Cleanup(in.publisher.Client().Close) // its Run, which would close it, is not started here
	return in
}

// TestEmbeddedBrokerIsBounded: the in-process broker's topics carry the
// byte bound, and the broker drops a partition's oldest batches past it,
// so a steady stream cannot grow the process without end.
func TestEmbeddedBrokerIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := embeddedIngest(ctx, t, 2)
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.brokers...), kgo.DefaultProduceTopic(positions.DefaultTopic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(4<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	topics := []string{positions.DefaultTopic, positions.DefaultDLQTopic, dispatch.DefaultRideEventsTopic}
	rcs, err := adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range topics {
		rc, err := rcs.On(topic, nil)
		if err != nil || rc.Err != nil {
			t.Fatalf("%s: %v %v", topic, err, rc.Err)
		}
		got := map[string]string{}
		for _, c := range rc.Configs {
			if c.Value != nil {
				got[c.Key] = *c.Value
			}
		}
		if got["retention.bytes"] != strconv.Itoa(embeddedPartitionBytes) || got["retention.ms"] != "-1" {
			t.Errorf("%s: retention.bytes %q and retention.ms %q, want %d and -1 (records on a virtual clock are old)",
				topic, got["retention.bytes"], got["retention.ms"], embeddedPartitionBytes)
		}
		if got["segment.bytes"] != strconv.Itoa(embeddedSegmentBytes) {
			t.Errorf("%s: segment.bytes %q, want %d (the broker frees whole segments only)", topic, got["segment.bytes"], embeddedSegmentBytes)
		}
	}

	// A small bound, then more than it in one partition: once retention
	// runs, the partition starts later and holds about the bound.
	const limit = 64 << 10
	if err := boundEmbeddedTopics(ctx, in.brokers, limit); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	old := time.Date(2014, 4, 30, 18, 0, 0, 0, time.UTC) // as a simulation on a virtual clock stamps them
	for range 400 {
		value := make([]byte, 1000) // random: the client compresses batches
		for i := range value {
			value[i] = byte(rng.Uint32())
		}
		cl.Produce(ctx, &kgo.Record{Partition: 0, Value: value, Timestamp: old}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	in.cluster.ApplyRetention()
	starts, err := adm.ListStartOffsets(ctx, positions.DefaultTopic)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := adm.ListEndOffsets(ctx, positions.DefaultTopic)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := starts.Lookup(positions.DefaultTopic, 0)
	e, _ := ends.Lookup(positions.DefaultTopic, 0)
	if e.Offset != 400 || s.Offset == 0 || (e.Offset-s.Offset)*1000 > 2*limit || (e.Offset-s.Offset)*1000 < limit/2 {
		t.Fatalf("partition 0 holds offsets [%d, %d) after retention, want about the last %d bytes of 400 records of 1000 bytes", s.Offset, e.Offset, limit)
	}
}

// TestEmbeddedBrokerMemoryIsBounded: the bound holds for the memory the
// broker keeps, not only for the offsets it serves. The broker frees a
// partition's records a whole segment at a time, so with segments larger
// than the bound (its default is 100 MiB) the bytes of a partition stayed
// in the process after retention had moved its start past them.
func TestEmbeddedBrokerMemoryIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	in := embeddedIngest(ctx, t, 1)
	const limit, total = 2 << 20, 16 << 20
	if err := boundEmbeddedTopics(ctx, in.brokers, limit); err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and what the first one's sweep left to the pools' victim caches
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	cl, err := kgo.NewClient(kgo.SeedBrokers(in.brokers...), kgo.DefaultProduceTopic(positions.DefaultTopic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	value := make([]byte, total) // random: the client compresses batches
	for i := range value {
		value[i] = byte(rng.Uint32())
	}
	const size = 4 << 10
	for off := 0; off < total; off += size {
		cl.Produce(ctx, &kgo.Record{Partition: 0, Value: value[off : off+size]}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	value = nil
	in.cluster.ApplyRetention()
	after := heap()
	// The bound, the segment retention has only partly passed and the
	// active one (a segment's buffer may have twice its bytes' room), and
	// slack for the broker's own books.
	want := uint64(limit + 4*embeddedSegmentBytes + 2<<20)
	if after > before && after-before > want {
		t.Fatalf("the broker holds %.1f MiB after %d MiB into a partition bounded to %d MiB, want at most %.1f MiB",
			float64(after-before)/(1<<20), total>>20, limit>>20, float64(want)/(1<<20))
	}
	t.Logf("the broker holds %.1f MiB after %d MiB into a partition bounded to %d MiB", float64(int64(after)-int64(before))/(1<<20), total>>20, limit>>20)
}
