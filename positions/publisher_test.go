package positions_test

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// startCluster starts an in-process kfake broker with the positions and
// dead-letter topics and returns it with its addresses.
func startCluster(t testing.TB, partitions int32) (*kfake.Cluster, []string) {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.SeedTopics(partitions, positions.DefaultTopic),
		kfake.SeedTopics(1, positions.DefaultDLQTopic),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelError}))
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// runPublisher starts p.Run until the test ends.
func runPublisher(t testing.TB, cfg positions.PublisherConfig) *positions.Publisher {
	t.Helper()
	p, err := positions.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return p.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("publisher Run: %v", err)
		}
	})
	return p
}

func publisherConfig(brokers []string, partitions int32) positions.PublisherConfig {
	cfg := positions.DefaultPublisherConfig()
	cfg.Brokers = brokers
	cfg.Partitioner.Partitions = partitions
	cfg.Linger = time.Millisecond
	cfg.Logger = quietLogger()
	return cfg
}

// consumeAll reads n records of topic from the start.
func consumeAll(t testing.TB, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records of %s before the deadline", len(out), n, topic)
		}
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

// twoPartitions finds two nearby points (about 10 km apart at most) whose
// shards hash to different partitions.
func twoPartitions(t testing.TB, pt positions.Partitioner) (a, b geo.LatLng) {
	t.Helper()
	a = geo.LatLng{Lat: 37.77, Lng: -122.42}
	pa, _, err := pt.ForPos(a)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		b = geo.LatLng{Lat: a.Lat + float64(i%10)*0.01, Lng: a.Lng + float64(i/10)*0.01}
		if pb, _, _ := pt.ForPos(b); pb != pa {
			return a, b
		}
	}
	t.Fatal("no second partition near the first point")
	return
}

func TestPublisherRoutesByShard(t *testing.T) {
	const parts = 8
	_, brokers := startCluster(t, parts)
	cfg := publisherConfig(brokers, parts)
	p := runPublisher(t, cfg)

	a, b := twoPartitions(t, cfg.Partitioner)
	pa, _, _ := cfg.Partitioner.ForPos(a)
	pb, _, _ := cfg.Partitioner.ForPos(b)
	now := time.Now()
	ev := func(id string, pos geo.LatLng, seq uint64) positions.Event {
		return positions.Event{Driver: positions.DriverID(id), Pos: pos, Status: positions.StatusAvailable, Seq: seq, Heading: positions.NoHeading, ReceiveTime: now}
	}
	steps := []positions.Event{ev("d1", a, 1), ev("d2", b, 1)}
	for _, e := range steps {
		if err := p.Publish(e); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// d1 moves from a's partition to b's: a removal goes to the old one.
	if err := p.Publish(ev("d1", b, 2)); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove("d2", 2, b); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	type rec struct {
		part positions.Partition
		kind positions.EventKind
		id   positions.DriverID
		seq  uint64
	}
	var got []rec
	for _, r := range consumeAll(t, brokers, positions.DefaultTopic, 5) {
		e, err := positions.DecodeEvent(r.Value)
		if err != nil {
			t.Fatalf("record at %d/%d: %v", r.Partition, r.Offset, err)
		}
		if string(r.Key) != string(e.Driver) {
			t.Errorf("key %q for driver %q", r.Key, e.Driver)
		}
		if !r.Timestamp.Equal(e.ReceiveTime.Truncate(time.Millisecond)) {
			t.Errorf("record timestamp %v, event receive time %v", r.Timestamp, e.ReceiveTime)
		}
		got = append(got, rec{positions.Partition(r.Partition), e.Kind, e.Driver, e.Seq})
	}
	want := map[rec]bool{
		{pa, positions.KindPosition, "d1", 1}: true,
		{pb, positions.KindPosition, "d2", 1}: true,
		{pa, positions.KindRemoval, "d1", 2}:  true,
		{pb, positions.KindPosition, "d1", 2}: true,
		{pb, positions.KindRemoval, "d2", 2}:  true,
	}
	for _, r := range got {
		if !want[r] {
			t.Errorf("unexpected record %+v", r)
		}
		delete(want, r)
	}
	for r := range want {
		t.Errorf("missing record %+v", r)
	}
	if s := p.Stats(); s.Handoffs != 1 || s.Produced != 5 || s.Accepted != 4 {
		t.Errorf("stats %+v, want 1 handoff, 5 produced, 4 accepted", s)
	}
}

// TestPublisherOverload runs without Run, so nothing drains: the buffer
// fills, the same drivers coalesce, new drivers are refused.
func TestPublisherOverload(t *testing.T) {
	cfg := publisherConfig([]string{"127.0.0.1:1"}, 8)
	cfg.MaxPending = 3
	p, err := positions.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Client().Close)
	a, b := twoPartitions(t, cfg.Partitioner)
	pub := func(id string, pos geo.LatLng, seq uint64) error {
		return p.Publish(positions.Event{Driver: positions.DriverID(id), Pos: pos, Status: positions.StatusAvailable, Seq: seq})
	}
	for i, tc := range []struct {
		id   string
		pos  geo.LatLng
		seq  uint64
		want error
	}{
		{"d1", a, 1, nil},
		{"d2", a, 1, nil},
		{"d1", a, 2, nil},                     // coalesces
		{"d1", b, 3, nil},                     // handoff: removal coalesces at a, position takes the third slot
		{"d3", a, 1, positions.ErrOverloaded}, // full
		{"d2", b, 2, positions.ErrOverloaded}, // a handoff needs a new slot at b
		{"d2", a, 3, nil},                     // coalesces
		{"d1", b, 4, nil},                     // coalesces
		{"d4", geo.LatLng{Lat: 91}, 1, positions.ErrBadEvent},
	} {
		if err := pub(tc.id, tc.pos, tc.seq); !errors.Is(err, tc.want) {
			t.Fatalf("step %d (%s seq %d): err %v, want %v", i, tc.id, tc.seq, err, tc.want)
		}
	}
	s := p.Stats()
	want := positions.PublisherStats{Accepted: 6, Coalesced: 4, Overloaded: 2, Handoffs: 1, Pending: 3}
	if s != want {
		t.Fatalf("stats\n got %+v\nwant %+v", s, want)
	}
}

func TestPublisherConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*positions.PublisherConfig)
	}{
		{"no brokers", func(c *positions.PublisherConfig) { c.Brokers = nil }},
		{"no topic", func(c *positions.PublisherConfig) { c.Topic = "" }},
		{"pending", func(c *positions.PublisherConfig) { c.MaxPending = 1 }},
		{"partitions", func(c *positions.PublisherConfig) { c.Partitioner.Partitions = 0 }},
		{"shard res", func(c *positions.PublisherConfig) { c.Partitioner.ShardRes = 9 }},
		{"linger", func(c *positions.PublisherConfig) { c.Linger = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := positions.DefaultPublisherConfig()
			tc.mut(&c)
			if err := c.Validate(); !errors.Is(err, positions.ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
		})
	}
	if err := positions.DefaultPublisherConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
}

func TestPartitionerStable(t *testing.T) {
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 64}
	// Pinned values: the hash is a wire contract between builds.
	for _, tc := range []struct {
		pos  geo.LatLng
		want positions.Partition
	}{
		{geo.LatLng{Lat: 37.7749, Lng: -122.4194}, 55},
		{geo.LatLng{Lat: 51.5074, Lng: -0.1278}, 5},
	} {
		got, shard, err := pt.ForPos(tc.pos)
		if err != nil {
			t.Fatal(err)
		}
		search, _ := geo.CellAt(tc.pos, geo.SearchRes)
		viaCell, err := pt.ForCell(search)
		if err != nil || viaCell != got {
			t.Errorf("ForCell(search cell) = %d, %v; ForPos = %d", viaCell, err, got)
		}
		if byShard, _ := pt.ForCell(shard); byShard != got {
			t.Errorf("ForCell(shard cell) = %d, ForPos = %d", byShard, got)
		}
		if got != tc.want {
			t.Errorf("ForPos(%v) = %d, want %d", tc.pos, got, tc.want)
		}
	}
}

// BenchmarkPublish is the gateway-side cost of one position (validate,
// shard hash, coalescing buffer) with 100k drivers, without Kafka: the
// buffer is reset whenever it fills.
func BenchmarkPublish(b *testing.B) {
	cfg := publisherConfig([]string{"127.0.0.1:1"}, 64)
	cfg.MaxPending = 1 << 20
	p, err := positions.NewPublisher(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Client().Close()
	const n = 100_000
	rng := rand.New(rand.NewPCG(1, 2))
	evs := make([]positions.Event, n)
	for i := range evs {
		evs[i] = positions.Event{Driver: positions.DriverID("b" + strconv.Itoa(i)), Pos: randomPos(rng), Status: positions.StatusAvailable, Heading: positions.NoHeading}
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := &evs[i%n]
		e.Seq++
		e.ReceiveTime = now
		if err := p.Publish(*e); errors.Is(err, positions.ErrOverloaded) {
			positions.ResetPending(p)
		} else if err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// TestPublisherCoalescingProperty drives random moves (across partitions),
// removals and partial drains through the publisher's buffer, applies what
// it emits to one Index per partition as the workers would, and checks
// that every driver is held exactly by the partition of its last position
// (or nowhere after a removal).
func TestPublisherCoalescingProperty(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	const parts = 4
	cfg := publisherConfig([]string{"127.0.0.1:1"}, parts)
	cfg.MaxPending = 1 << 20
	p, err := positions.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Client().Close)
	idx := make([]*positions.Index, parts)
	for i := range idx {
		icfg := positions.DefaultConfig()
		icfg.TTL = time.Hour
		if idx[i], err = positions.NewIndex(icfg); err != nil {
			t.Fatal(err)
		}
	}
	apply := func() {
		evs, ps := positions.TakePending(p)
		for i, e := range evs {
			x := idx[ps[i]]
			if e.Kind == positions.KindRemoval {
				x.Remove(e.Driver, e.Seq)
				continue
			}
			if _, err := x.Upsert(e.Driver, e.Pos, e.Status, e.Seq, e.ReceiveTime); err != nil {
				t.Fatal(err)
			}
		}
	}
	type state struct {
		pos    geo.LatLng
		seq    uint64
		online bool
	}
	drivers := make([]state, 40)
	now := time.Now()
	for step := range 5000 {
		i := rng.IntN(len(drivers))
		d := &drivers[i]
		id := positions.DriverID("p" + strconv.Itoa(i))
		d.seq++
		switch {
		case d.online && rng.IntN(10) == 0:
			if err := p.Remove(id, d.seq, d.pos); err != nil {
				t.Fatal(err)
			}
			d.online = false
		default:
			if !d.online || rng.IntN(4) == 0 {
				d.pos = randomPos(rng) // a jump, often to another partition
			} else {
				d.pos = geo.LatLng{Lat: d.pos.Lat + (rng.Float64()-0.5)*0.002, Lng: d.pos.Lng + (rng.Float64()-0.5)*0.002}
			}
			ev := positions.Event{Driver: id, Pos: d.pos, Status: positions.StatusAvailable, Seq: d.seq, ReceiveTime: now}
			if err := p.Publish(ev); err != nil {
				t.Fatal(err)
			}
			d.online = true
		}
		if rng.IntN(7) == 0 {
			apply()
		}
		if step%500 == 499 || step == 4999 {
			apply()
			for i, d := range drivers {
				id := positions.DriverID("p" + strconv.Itoa(i))
				want := positions.Partition(-1)
				if d.online {
					want, _, _ = cfg.Partitioner.ForPos(d.pos)
				}
				for part, x := range idx {
					got, held := x.Get(id)
					if held != (positions.Partition(part) == want) {
						t.Fatalf("step %d: driver %s held=%v by partition %d, want it held only by %d", step, id, held, part, want)
					}
					if held && got.Seq != d.seq {
						t.Fatalf("step %d: driver %s seq %d, want %d", step, id, got.Seq, d.seq)
					}
				}
			}
		}
	}
	if s := p.Stats(); s.Coalesced == 0 || s.Handoffs == 0 {
		t.Errorf("stats %+v: the walk should coalesce and hand off", s)
	}
}

func TestEnsureTopic(t *testing.T) {
	_, brokers := startCluster(t, 4)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		topic string
		parts int32
		want  error
	}{
		{positions.DefaultTopic, 4, nil},                        // exists, matches
		{positions.DefaultTopic, 8, positions.ErrInvalidConfig}, // exists, another count
		{positions.DefaultDLQTopic, 0, nil},                     // any count will do
		{"fresh", 3, nil},                                       // created
		{"fresh", 3, nil},                                       // and now exists
	} {
		if err := positions.EnsureTopic(ctx, cl, tc.topic, tc.parts); !errors.Is(err, tc.want) {
			t.Errorf("EnsureTopic(%s, %d) = %v, want %v", tc.topic, tc.parts, err, tc.want)
		}
	}
}
