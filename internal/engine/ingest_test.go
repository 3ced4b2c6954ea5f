package engine

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/positions"
)

// TestEmbeddedBrokerIsBounded: the in-process broker's topics carry the
// byte bound, and the broker drops a partition's oldest batches past it,
// so a steady stream cannot grow the process without end.
func TestEmbeddedBrokerIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{Role: "all", Partitions: 2, TTL: 30 * time.Second, SessionTimeout: 3 * time.Second}
	in, err := newIngest(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
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
