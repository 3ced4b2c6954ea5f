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

	"github.com/hexdispatch/hexdispatch/geo"
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
		if producesFailed.Load() >= 6 {
			kc.DropControl()
			return nil, nil, false
		}
		producesFailed.Add(1)
		return nil, errors.New("injected: broker connection dropped mid-produce"), true
	})
	kc.ControlKey(kmsg.Fetch.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		if fetchesDropped.Load() >= 6 {
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

// TestPublisherBreakerOpensWhileKafkaIsDown: while the broker drops every
// produce request, the publisher's breaker opens after StallTimeout and
// Publish refuses positions with ErrUnavailable (the gateway's 503)
// instead of filling a buffer nobody drains. When the broker answers
// again, the buffered records land, the breaker closes on the first
// acknowledgement, new positions are accepted, and the index ends at
// every driver's latest position with no record lost.
func TestPublisherBreakerOpensWhileKafkaIsDown(t *testing.T) {
	const parts, drivers = 4, 50
	kc, brokers := startCluster(t, parts)
	var down atomic.Bool
	var dropped atomic.Int64
	kc.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		if !down.Load() {
			return nil, nil, false
		}
		dropped.Add(1)
		return nil, errors.New("injected: broker unreachable"), true
	})
	wc := workerConfig(brokers)
	wc.Index.TTL = 5 * time.Minute
	w := startWorker(t, wc)
	pc := publisherConfig(brokers, parts)
	pc.StallTimeout = 300 * time.Millisecond
	p := runPublisher(t, pc)
	publish := func(seq uint64) error {
		for i := range drivers {
			id := positions.DriverID("d" + strconv.Itoa(i))
			err := p.Publish(positions.Event{Kind: positions.KindPosition, Driver: id, Pos: geo.LatLng{Lat: sfCenter.Lat + float64(i)*1e-3, Lng: sfCenter.Lng},
				Heading: positions.NoHeading, Status: positions.StatusAvailable, Seq: seq, ReceiveTime: time.Now()})
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := publish(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	down.Store(true)
	if err := publish(2); err != nil { // accepted: the breaker has not seen a stall yet
		t.Fatal(err)
	}
	eventually(t, "the breaker opens", 10*time.Second, func() bool { return p.Stats().BreakerOpen })
	if err := publish(3); !errors.Is(err, positions.ErrUnavailable) {
		t.Fatalf("Publish with the breaker open: %v, want ErrUnavailable", err)
	}
	if dropped.Load() == 0 {
		t.Fatal("no produce request reached the broker while it was down")
	}

	down.Store(false)
	eventually(t, "the breaker closes once Kafka acknowledges", 30*time.Second, func() bool { return !p.Stats().BreakerOpen })
	if err := publish(4); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every driver indexed at seq 4", 30*time.Second, func() bool {
		got, missed := snapshot(t, allPartitions(parts), w)

		if len(missed) > 0 || len(got) != drivers {
			return false
		}
		for _, d := range got {
			if d.Seq != 4 {
				return false
			}
		}
		return true
	})
	st := p.Stats()
	if st.BreakerOpens != 1 || st.Unavailable == 0 || st.ProduceErrors != 0 {
		t.Fatalf("stats = %+v, want one opening, refusals and no record lost", st)
	}
}
