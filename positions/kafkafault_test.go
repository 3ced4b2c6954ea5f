package positions_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"math/rand/v2"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/hexdispatch/hexdispatch/positions"
)

// TestIngestSurvivesKafkaFaults injects broker faults into kfake while GPS
// flows: the connections of the first produce requests and of the first
// fetches are dropped, as by a broker restart (the idempotent producer
// retries with backoff and the broker drops the duplicates; the worker
// reconnects). Every driver still lands in
// the worker's index at its latest position, and the publisher reports no
// record lost.
func TestIngestSurvivesKafkaFaults(t *testing.T) {
	const parts, drivers = 4, 300
	kc, brokers := startCluster(t, parts)

	var producesFailed, fetchesDropped atomic.Int64
	kc.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		if producesFailed.Load() >= 3 {
			kc.DropControl()
			return nil, nil, false
		}
		producesFailed.Add(1)
		return nil, errors.New("injected: broker connection dropped mid-produce"), true
	})
	kc.ControlKey(kmsg.Fetch.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		if fetchesDropped.Load() >= 3 {
			kc.DropControl()
			return nil, nil, false
		}
		fetchesDropped.Add(1)
		return nil, errors.New("injected: connection dropped"), true
	})

	wc := workerConfig(brokers)
	// The test is about losing nothing, not about latency: a TTL longer
	// than the client's recovery keeps delayed positions from being
	// dropped as too old (which is right for GPS, and tested elsewhere).
	wc.Index.TTL = 5 * time.Minute
	w := startWorker(t, wc)
	start := time.Now()
	p := runPublisher(t, publisherConfig(brokers, parts))
	rng := rand.New(rand.NewPCG(testSeed(t), 9))
	want := map[positions.DriverID]uint64{}
	for round := uint64(1); round <= 3; round++ {
		for i := range drivers {
			id := positions.DriverID("d" + strconv.Itoa(i))
			ev := positions.Event{Kind: positions.KindPosition, Driver: id, Pos: randomPos(rng), Heading: positions.NoHeading,
				Status: positions.StatusAvailable, Seq: round, ReceiveTime: time.Now()}
			for {
				err := p.Publish(ev)
				if err == nil {
					break
				}
				if !errors.Is(err, positions.ErrOverloaded) {
					t.Fatal(err)
				}
				time.Sleep(5 * time.Millisecond) // shed: the gateway answers 429, the app retries
			}
			want[id] = round
		}
	}
	last := ""
	defer func() {
		if t.Failed() {
			lag, err := w.Lag(context.Background())
			t.Logf("last view: %s; publisher %+v; %d produces failed, %d fetches dropped; worker ready %v stats %+v lag %v %v",
				last, p.Stats(), producesFailed.Load(), fetchesDropped.Load(), w.Ready(), w.Stats(), lag, err)
		}
	}()
	eventually(t, "every driver indexed at its last seq", 2*time.Minute, func() bool {
		got, missed := snapshot(t, allPartitions(parts), w)
		last = strconv.Itoa(len(got)) + " drivers, missed partitions " + strconv.Itoa(len(missed))
		if len(missed) > 0 || len(got) != drivers {
			return false
		}
		for id, seq := range want {
			if got[id].Seq != seq {
				return false
			}
		}
		return true
	})
	if producesFailed.Load() == 0 || fetchesDropped.Load() == 0 {
		t.Fatalf("faults not injected: %d produces failed, %d fetches dropped", producesFailed.Load(), fetchesDropped.Load())
	}
	if st := p.Stats(); st.ProduceErrors != 0 {
		t.Fatalf("records lost after retries: %+v", st)
	}
	t.Logf("%d produce connections and %d fetch connections dropped; all %d drivers indexed %v after the first publish; publisher %+v",
		producesFailed.Load(), fetchesDropped.Load(), drivers, time.Since(start).Round(time.Millisecond), p.Stats())
}
