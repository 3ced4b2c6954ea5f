package positions_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// TestIngestSurvivesLeaderChanges runs GPS through a three-broker kfake
// cluster while partition leadership moves: leaders shuffled, produces
// and fetches answered "not leader" and "leader not available" as during
// an election, the broker leading a partition removed, and a slow broker
// holding every fetch. After each fault a new round of positions goes in;
// at the end every driver is indexed at its last round and no record was
// lost.
func TestIngestSurvivesLeaderChanges(t *testing.T) {
	const parts, drivers = 4, 60
	kc, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(parts, positions.DefaultTopic),
		kfake.SeedTopics(1, positions.DefaultDLQTopic), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	brokers := kc.ListenAddrs()
	wc := workerConfig(brokers)
	wc.Index.TTL = 5 * time.Minute
	w := startWorker(t, wc)
	p := runPublisher(t, publisherConfig(brokers, parts))

	round := uint64(0)
	next := func(fault string) {
		t.Helper()
		round++
		start := time.Now()
		for i := range drivers {
			err := p.Publish(positions.Event{Kind: positions.KindPosition, Driver: positions.DriverID("d" + strconv.Itoa(i)),
				Pos: geo.LatLng{Lat: sfCenter.Lat + float64(i%20)*2e-3, Lng: sfCenter.Lng + float64(i/20)*2e-3}, Heading: positions.NoHeading,
				Status: positions.StatusAvailable, Seq: round, ReceiveTime: time.Now()})
			if err != nil {
				t.Fatalf("round %d (%s): %v", round, fault, err)
			}
		}
		eventually(t, fault+": every driver indexed at round "+strconv.FormatUint(round, 10), time.Minute, func() bool {
			got, missed := snapshot(t, allPartitions(parts), w)
			if len(missed) > 0 || len(got) != drivers {
				return false
			}
			for _, d := range got {
				if d.Seq != round {
					return false
				}
			}
			return true
		})
		t.Logf("%s: round %d indexed in %v", fault, round, time.Since(start).Round(time.Millisecond))
	}
	next("no fault")

	kc.ShufflePartitionLeaders()
	next("leaders shuffled")

	h := kc.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: positions.DefaultTopic, Err: kerr.NotLeaderForPartition, Count: 6})
	next("produce answered not leader")
	if h.Hits() == 0 {
		t.Fatal("the produce fault never hit")
	}
	h = kc.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: positions.DefaultTopic, Err: kerr.LeaderNotAvailable, Count: 6})
	next("fetch answered leader not available")
	if h.Hits() == 0 {
		t.Fatal("the fetch fault never hit")
	}

	leader := kc.LeaderFor(positions.DefaultTopic, 0)
	if err := kc.RemoveNode(leader); err != nil {
		t.Fatal(err)
	}
	next("partition 0's leader removed")

	// A slow broker: every fetch is held 300 ms before it is answered.
	kc.ControlKey(kmsg.Fetch.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		wake := time.Now().Add(300 * time.Millisecond)
		kc.SleepControl(func() { time.Sleep(time.Until(wake)) })
		return nil, nil, false
	})
	next("slow fetches")

	if st := p.Stats(); st.ProduceErrors != 0 {
		t.Fatalf("records lost: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lag, err := w.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for part, l := range lag {
		if l != 0 {
			t.Fatalf("partition %d still %d records behind", part, l)
		}
	}
}
