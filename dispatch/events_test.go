package dispatch_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/positions"
)

func newKafka(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, dispatch.DefaultRideEventsTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newProducer(t *testing.T, addrs []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addrs...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// quietRelayConfig is the default relay config, logging nowhere.
func quietRelayConfig() dispatch.RelayConfig {
	cfg := dispatch.DefaultRelayConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// runRelay runs a relay from s to the cluster at addrs until stop, which
// returns Run's error; the test's cleanup stops it too.
func runRelay(t *testing.T, s *dispatch.RideStore, addrs []string, cfg dispatch.RelayConfig) (relay *dispatch.Relay, stop func() error) {
	t.Helper()
	relay, err := dispatch.NewRelay(s, newProducer(t, addrs), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return relay, stop
}

// waitOutboxesEmpty waits until the outboxes of ids hold no event.
func waitOutboxesEmpty(t *testing.T, srv *redistest.Server, ids ...dispatch.RideID) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		left := 0
		for _, id := range ids {
			left += len(outboxVersions(t, srv, id))
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events still in the outboxes", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// consumeAll reads the ride-events topic until it has want records or the
// deadline passes.
func consumeAll(t *testing.T, addrs []string, want int) []dispatch.RideEvent {
	t.Helper()
	cl := newProducer(t, addrs, kgo.ConsumeTopics(dispatch.DefaultRideEventsTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []dispatch.RideEvent
	for len(out) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d ride events before the deadline", len(out), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			e, err := dispatch.DecodeRideEvent(r.Value)
			if err != nil {
				t.Fatalf("record %q: %v", r.Value, err)
			}
			if string(r.Key) != string(e.Ride) {
				t.Fatalf("record key %q for ride %s", r.Key, e.Ride)
			}
			out = append(out, e)
		})
	}
	return out
}

// ridePath creates a ride and walks it to completed: 8 events.
func ridePath(t *testing.T, s *dispatch.RideStore, id dispatch.RideID) {
	t.Helper()
	ctx := context.Background()
	r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, t0)
	if _, _, err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	d := positions.DriverID("d-" + string(id))
	for _, ev := range []dispatch.Event{
		{Kind: dispatch.EvSearch}, {Kind: dispatch.EvOffer, Driver: d}, {Kind: dispatch.EvAccept, Driver: d},
		{Kind: dispatch.EvArrive, Driver: d}, {Kind: dispatch.EvStart, Driver: d}, {Kind: dispatch.EvComplete, Driver: d},
	} {
		if _, err := s.Apply(ctx, id, ev); err != nil {
			t.Fatalf("%s: %v", ev.Kind, err)
		}
	}
	// An illegal event leaves no trace in the log.
	if _, err := s.Apply(ctx, id, dispatch.Event{Kind: dispatch.EvRiderCancel}); err == nil {
		t.Fatal("cancel after completion accepted")
	}
}

func checkLog(t *testing.T, evs []dispatch.RideEvent, rides int) {
	t.Helper()
	last := map[dispatch.RideID]uint64{}
	for _, e := range evs {
		if e.Version <= last[e.Ride] {
			t.Fatalf("ride %s: version %d after %d (duplicate or out of order)", e.Ride, e.Version, last[e.Ride])
		}
		last[e.Ride] = e.Version
	}
	if len(last) != rides {
		t.Fatalf("%d rides in the log, want %d", len(last), rides)
	}
	for id, v := range last {
		if v != 7 {
			t.Fatalf("ride %s ends at version %d, want 7 (requested + 6 transitions)", id, v)
		}
	}
}

func TestRelayMovesEveryTransitionInOrder(t *testing.T) {
	s, _ := newStore(t)
	kc := newKafka(t)
	const rides = 5
	for i := range rides {
		ridePath(t, s, dispatch.RideID(fmt.Sprintf("r%d", i)))
	}
	_, stop := runRelay(t, s, kc.ListenAddrs(), quietRelayConfig())
	evs := consumeAll(t, kc.ListenAddrs(), rides*7)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkLog(t, evs, rides)
	if first := evs[0]; first.Kind != "requested" || first.To != dispatch.Requested {
		t.Fatalf("first event %+v", first)
	}
}

func TestRelayKeepsEventsWhileKafkaIsDown(t *testing.T) {
	s, _ := newStore(t)
	ridePath(t, s, "r-down")
	// A broker that is gone: produce fails, and nothing is trimmed.
	dead, _ := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, dispatch.DefaultRideEventsTopic))
	addrs := dead.ListenAddrs()
	dead.Close()
	cfg := quietRelayConfig()
	bad, _ := dispatch.NewRelay(s, newProducer(t, addrs, kgo.RecordDeliveryTimeout(time.Second), kgo.RequestRetries(1)), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bad.Drain(ctx, "r-down"); err == nil {
		t.Fatal("drain to a dead broker succeeded")
	}
	// Kafka is back: every event arrives, none lost.
	kc := newKafka(t)
	good, _ := dispatch.NewRelay(s, newProducer(t, kc.ListenAddrs()), cfg)
	if err := good.Drain(ctx, "r-down"); err != nil {
		t.Fatal(err)
	}
	checkLog(t, consumeAll(t, kc.ListenAddrs(), 7), 1)
	if st := good.Stats(); st.Produced != 7 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRelayBatchesKeepOrderAndLoseNothing: relays that drain many rides
// per pass, several passes per ride (Batch smaller than a ride's events),
// two of them at once over the same outboxes: every event reaches Kafka,
// each ride's first copies in order, and the outboxes end empty.
func TestRelayBatchesKeepOrderAndLoseNothing(t *testing.T) {
	s, srv := newStore(t)
	kc := newKafka(t)
	const rides = 12
	ids := make([]dispatch.RideID, rides)
	for i := range ids {
		ids[i] = dispatch.RideID(fmt.Sprintf("rb%d", i))
		ridePath(t, s, ids[i])
	}
	cfg := quietRelayConfig()
	cfg.Batch = 3
	relays := make([]*dispatch.Relay, 2)
	stops := make([]func() error, 2)
	for i := range relays {
		relays[i], stops[i] = runRelay(t, s, kc.ListenAddrs(), cfg)
	}
	for _, id := range ids {
		for _, relay := range relays {
			relay.Notify(id)
		}
	}
	// Wait until both relays have nothing left, then read the topic.
	waitOutboxesEmpty(t, srv, ids...)
	for _, stop := range stops {
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	produced := relays[0].Stats().Produced + relays[1].Stats().Produced
	evs := consumeAll(t, kc.ListenAddrs(), int(produced))
	var firsts []dispatch.RideEvent // each (ride, version) once, as a deduplicating consumer keeps them
	seen := map[string]bool{}
	for _, e := range evs {
		if k := fmt.Sprintf("%s/%d", e.Ride, e.Version); !seen[k] {
			seen[k] = true
			firsts = append(firsts, e)
		}
	}
	checkLog(t, firsts, rides)
	if len(firsts) != rides*7 {
		t.Fatalf("%d distinct events, want %d", len(firsts), rides*7)
	}
}

// TestRelayLingerDrainsNoticesInOnePass: the rides notified within Linger
// of the first notice go out in one pass, and a notice after a pass
// starts the next one.
func TestRelayLingerDrainsNoticesInOnePass(t *testing.T) {
	s, srv := newStore(t)
	kc := newKafka(t)
	cfg := quietRelayConfig()
	cfg.ScanEvery = time.Hour // only the sweep at start, before any ride
	cfg.Linger = 300 * time.Millisecond
	relay, stop := runRelay(t, s, kc.ListenAddrs(), cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	// A first ride on its own, written while the relay's first sweep may
	// still run (it may take some of the ride's events in a pass of its
	// own); once it is out, the relay waits for notices.
	ridePath(t, s, "rl0")
	relay.Notify("rl0")
	waitOutboxesEmpty(t, srv, "rl0")
	before := relay.Stats()
	if before.Produced != 7 || before.Passes < 1 {
		t.Fatalf("after one ride: %+v, want its 7 events", before)
	}
	// Ten rides notified one after the other, well within the linger.
	const rides = 10
	ids := make([]dispatch.RideID, rides)
	for i := range ids {
		ids[i] = dispatch.RideID(fmt.Sprintf("rl%d", i+1))
		ridePath(t, s, ids[i])
	}
	for _, id := range ids {
		relay.Notify(id)
	}
	waitOutboxesEmpty(t, srv, ids...)
	if st := relay.Stats(); st.Passes != before.Passes+1 || st.Produced != 7*(rides+1) || st.Errors != 0 {
		t.Fatalf("after ten more rides: %+v, want one more pass than %d and %d events in all", st, before.Passes, 7*(rides+1))
	}
	checkLog(t, consumeAll(t, kc.ListenAddrs(), 7*(rides+1)), rides+1)
}

func TestRelayConfigValidate(t *testing.T) {
	if err := dispatch.DefaultRelayConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mod := range map[string]func(*dispatch.RelayConfig){
		"no topic":        func(c *dispatch.RelayConfig) { c.Topic = "" },
		"zero batch":      func(c *dispatch.RelayConfig) { c.Batch = 0 },
		"zero scan":       func(c *dispatch.RelayConfig) { c.ScanEvery = 0 },
		"zero queue":      func(c *dispatch.RelayConfig) { c.Queue = 0 },
		"negative linger": func(c *dispatch.RelayConfig) { c.Linger = -time.Millisecond },
		"linger over 1s":  func(c *dispatch.RelayConfig) { c.Linger = 2 * time.Second },
		"no logger":       func(c *dispatch.RelayConfig) { c.Logger = nil },
	} {
		c := dispatch.DefaultRelayConfig()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := dispatch.NewRelay(nil, nil, c); err == nil {
			t.Errorf("%s: NewRelay accepted it", name)
		}
	}
}
