package positions_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

var sfCenter = geo.LatLng{Lat: 37.77, Lng: -122.42}

// randomPos is a point within about 20 km of San Francisco, which spans
// several res-6 shards and so several partitions.
func randomPos(rng *rand.Rand) geo.LatLng {
	return geo.LatLng{Lat: sfCenter.Lat + (rng.Float64()-0.5)*0.35, Lng: sfCenter.Lng + (rng.Float64()-0.5)*0.45}
}

func workerConfig(brokers []string) positions.WorkerConfig {
	cfg := positions.DefaultWorkerConfig()
	cfg.Brokers = brokers
	cfg.Logger = quietLogger()
	cfg.SessionTimeout = time.Second
	cfg.HeartbeatInterval = 100 * time.Millisecond
	return cfg
}

type runningWorker struct {
	*positions.Worker
	stop func()
}

// startWorker runs a worker until stop or the end of the test.
func startWorker(t testing.TB, cfg positions.WorkerConfig) runningWorker {
	t.Helper()
	w, err := positions.NewWorker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return w.Run(ctx) })
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("worker Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return runningWorker{w, stop}
}

// eventually polls cond every few milliseconds until it holds or the
// deadline passes; the deadline is generous (a liveness bound, not a
// performance assertion).
func eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func allPartitions(n int32) []positions.Partition {
	out := make([]positions.Partition, n)
	for i := range out {
		out[i] = positions.Partition(i)
	}
	return out
}

// snapshot returns every driver the queriers can find near SF, by id.
func snapshot(t testing.TB, parts []positions.Partition, qs ...positions.Querier) (map[positions.DriverID]positions.Driver, []positions.Partition) {
	t.Helper()
	out := make(map[positions.DriverID]positions.Driver)
	answered := make(map[positions.Partition]bool)
	for _, q := range qs {
		resp, err := q.Nearest(context.Background(), positions.NearestRequest{
			Partitions: parts, Center: sfCenter, K: positions.MaxK, RadiusM: 60_000,
		})
		if err != nil {
			t.Fatal(err)
		}
		missed := make(map[positions.Partition]bool)
		for _, p := range resp.Missed {
			missed[p] = true
		}
		for _, p := range parts {
			if !missed[p] {
				answered[p] = true
			}
		}
		for _, c := range resp.Candidates {
			out[c.ID] = c.Driver
		}
	}
	var missed []positions.Partition
	for _, p := range parts {
		if !answered[p] {
			missed = append(missed, p)
		}
	}
	return out, missed
}

// caughtUp reports whether w has applied everything up to each owned
// partition's end.
func caughtUp(t testing.TB, w *positions.Worker) bool {
	lag, err := w.Lag(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(lag) == 0 {
		return false
	}
	for _, l := range lag {
		if l > 0 {
			return false
		}
	}
	return w.Ready()
}

type rawProducer struct {
	cl *kgo.Client
}

func newRawProducer(t testing.TB, brokers []string) rawProducer {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DefaultProduceTopic(positions.DefaultTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return rawProducer{cl}
}

func (p rawProducer) send(t testing.TB, part positions.Partition, key string, value []byte, ts time.Time) {
	t.Helper()
	r := &kgo.Record{Partition: int32(part), Key: []byte(key), Value: value, Timestamp: ts}
	if err := p.cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// TestWorkerOrderingIdempotent writes a clean per-driver stream and a
// dirty copy (every event duplicated, each driver's events shuffled) to the
// topic directly, and checks that the worker ends in the clean stream's
// state.
func TestWorkerOrderingIdempotent(t *testing.T) {
	const parts = 4
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	_, brokers := startCluster(t, parts)
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: parts}
	now := time.Now()

	type history struct {
		part   positions.Partition
		events []positions.Event
	}
	var drivers []history
	want := make(map[positions.DriverID]positions.Driver)
	for i := range 150 {
		id := positions.DriverID("d" + strconv.Itoa(i))
		// A driver stays inside one shard here: handoffs are the
		// publisher's business and are tested there.
		start := randomPos(rng)
		part, shard, _ := pt.ForPos(start)
		var h history
		h.part = part
		n := 1 + rng.IntN(8)
		for s := 1; s <= n; s++ {
			var pos geo.LatLng
			for {
				pos = geo.LatLng{Lat: start.Lat + (rng.Float64()-0.5)*0.01, Lng: start.Lng + (rng.Float64()-0.5)*0.01}
				if _, sh, _ := pt.ForPos(pos); sh == shard {
					break
				}
			}
			ev := positions.Event{Kind: positions.KindPosition, Driver: id, Pos: pos, Heading: positions.NoHeading,
				Status: positions.Status(1 + rng.IntN(3)), Seq: uint64(s), ReceiveTime: now.Add(time.Duration(s) * time.Millisecond)}
			h.events = append(h.events, ev)
		}
		last := h.events[len(h.events)-1]
		if rng.IntN(6) == 0 {
			// Goes offline: a removal with the next seq, the last word.
			h.events = append(h.events, positions.Event{Kind: positions.KindRemoval, Driver: id, Pos: last.Pos,
				Heading: positions.NoHeading, Seq: last.Seq + 1, ReceiveTime: last.ReceiveTime})
		} else {
			e7 := func(p geo.LatLng) geo.LatLng { return geo.FromE7(p.ToE7()) }
			want[id] = positions.Driver{ID: id, Pos: e7(last.Pos), Status: last.Status, Seq: last.Seq}
		}
		drivers = append(drivers, h)
	}

	prod := newRawProducer(t, brokers)
	for _, h := range drivers {
		// Positions may arrive in any order and twice; the removal
		// comes last (after a removal the index keeps no tombstone, so
		// an older position arriving later would resurrect the driver
		// until TTL; the gateway sends removals after the last position
		// on the same partition, which Kafka keeps in order).
		dirty := slices.Clone(h.events)
		var tail []positions.Event
		if dirty[len(dirty)-1].Kind == positions.KindRemoval {
			tail = slices.Clone(dirty[len(dirty)-1:])
			dirty = dirty[:len(dirty)-1]
		}
		dirty = append(dirty, dirty...)
		rng.Shuffle(len(dirty), func(i, j int) { dirty[i], dirty[j] = dirty[j], dirty[i] })
		dirty = append(dirty, tail...)
		dirty = append(dirty, tail...)
		for _, e := range dirty {
			prod.send(t, h.part, string(e.Driver), positions.AppendEvent(nil, e), e.ReceiveTime)
		}
	}

	w := startWorker(t, workerConfig(brokers))
	eventually(t, "worker caught up", 30*time.Second, func() bool { return caughtUp(t, w.Worker) })
	got, missed := snapshot(t, allPartitions(parts), w)
	if len(missed) > 0 {
		t.Fatalf("partitions missed: %v", missed)
	}
	compareDrivers(t, got, want)
	if s := w.Stats(); s.Stale == 0 || s.DLQ != 0 {
		t.Errorf("stats %+v: want stale duplicates and no dead letters", s)
	}
}

func compareDrivers(t testing.TB, got, want map[positions.DriverID]positions.Driver) {
	t.Helper()
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("driver %s missing", id)
			continue
		}
		if g.Pos != w.Pos || g.Status != w.Status || g.Seq != w.Seq {
			t.Errorf("driver %s: got %v %v seq %d, want %v %v seq %d", id, g.Pos, g.Status, g.Seq, w.Pos, w.Status, w.Seq)
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("driver %s should not be held", id)
		}
	}
}

// TestWorkerRebuildWithinTTL publishes pings spread over two TTLs of
// history, then starts a fresh worker: it must hold exactly the drivers
// whose last ping is within TTL, and not have replayed the whole topic.
func TestWorkerRebuildWithinTTL(t *testing.T) {
	const parts = 4
	const ttl = 30 * time.Second
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	_, brokers := startCluster(t, parts)
	pcfg := publisherConfig(brokers, parts)
	p := runPublisher(t, pcfg)
	now := time.Now()

	// 400 drivers; each pings at a few random times in [now-2ttl, now],
	// published in time order so the topic's timestamps increase.
	type ping struct {
		at time.Time
		ev positions.Event
	}
	var pings []ping
	for i := range 400 {
		id := positions.DriverID("r" + strconv.Itoa(i))
		for range 1 + rng.IntN(4) {
			// Keep a second clear of the TTL edge: the edge itself is
			// the Index's business (tested there).
			off := time.Duration(rng.Int64N(int64(2 * ttl)))
			if d := off - ttl; d > -time.Second && d < time.Second {
				off += 2 * time.Second
			}
			at := now.Add(-off)
			pings = append(pings, ping{at: at, ev: positions.Event{Driver: id, Pos: randomPos(rng), Heading: positions.NoHeading,
				Status: positions.StatusAvailable, ReceiveTime: at}})
		}
	}
	slices.SortFunc(pings, func(a, b ping) int { return a.at.Compare(b.at) })
	last := make(map[positions.DriverID]positions.Event)
	seqs := make(map[positions.DriverID]uint64)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, pg := range pings {
		seqs[pg.ev.Driver]++
		pg.ev.Seq = seqs[pg.ev.Driver]
		if err := p.Publish(pg.ev); err != nil {
			t.Fatal(err)
		}
		last[pg.ev.Driver] = pg.ev
		if i%50 == 49 {
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	want := make(map[positions.DriverID]positions.Driver)
	// Records (positions and handoff removals) from the window plus the
	// worker's margin: a bound on what the rebuild may replay.
	inWindow := 0
	for _, r := range consumeAll(t, brokers, positions.DefaultTopic, int(p.Stats().Produced)) {
		if r.Timestamp.After(now.Add(-ttl - 3*time.Second)) {
			inWindow++
		}
	}
	for id, e := range last {
		if e.ReceiveTime.After(now.Add(-ttl)) {
			want[id] = positions.Driver{ID: id, Pos: geo.FromE7(e.Pos.ToE7()), Status: e.Status, Seq: e.Seq}
		}
	}

	cfg := workerConfig(brokers)
	cfg.Index.TTL = ttl
	cfg.Index.Now = func() time.Time { return now } // the clock stops: nobody ages during the test
	w := startWorker(t, cfg)
	eventually(t, "worker ready", 30*time.Second, func() bool { return caughtUp(t, w.Worker) })
	got, missed := snapshot(t, allPartitions(parts), w)
	if len(missed) > 0 {
		t.Fatalf("partitions missed: %v", missed)
	}
	compareDrivers(t, got, want)
	s := w.Stats()
	t.Logf("%d pings, %d in the window, %d replayed, %d drivers live; stats %+v", len(pings), inWindow, s.Records, len(want), s)
	if s.Records > uint64(inWindow) {
		t.Errorf("replayed %d records, more than the %d of the TTL window plus margin", s.Records, inWindow)
	}
	if s.Rebuilds != parts {
		t.Errorf("%d rebuilds, want %d", s.Rebuilds, parts)
	}
}

// TestWorkerFailover runs two workers in one group; when one stops, the
// other takes over every partition and every live driver is findable.
func TestWorkerFailover(t *testing.T) {
	const parts = 8
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	_, brokers := startCluster(t, parts)
	p := runPublisher(t, publisherConfig(brokers, parts))
	a := startWorker(t, workerConfig(brokers))
	b := startWorker(t, workerConfig(brokers))

	want := make(map[positions.DriverID]positions.Driver)
	for i := range 500 {
		id := positions.DriverID("f" + strconv.Itoa(i))
		ev := positions.Event{Driver: id, Pos: randomPos(rng), Status: positions.StatusAvailable, Seq: 1, Heading: positions.NoHeading}
		if err := p.Publish(ev); err != nil {
			t.Fatal(err)
		}
		want[id] = positions.Driver{ID: id, Pos: geo.FromE7(ev.Pos.ToE7()), Status: ev.Status, Seq: 1}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	all := allPartitions(parts)
	eventually(t, "both workers own partitions and every driver is findable", 30*time.Second, func() bool {
		if !a.Ready() || !b.Ready() || len(a.Partitions()) == 0 || len(b.Partitions()) == 0 {
			return false
		}
		got, missed := snapshot(t, all, a, b)
		return len(missed) == 0 && len(got) == len(want)
	})
	t.Logf("before: a owns %d partitions, b owns %d", len(a.Partitions()), len(b.Partitions()))

	stopped := time.Now()
	a.stop()
	eventually(t, "b owns every partition, rebuilt", 30*time.Second, func() bool {
		return len(b.Partitions()) == parts && b.Ready()
	})
	took := time.Since(stopped)
	got, missed := snapshot(t, all, b)
	if len(missed) > 0 {
		t.Fatalf("after failover b misses %v", missed)
	}
	compareDrivers(t, got, want)
	t.Logf("graceful stop of a to b owning and serving all %d partitions: %v", parts, took)
}

// TestWorkerDeadLetters puts a poison record and an invalid event in the
// middle of a partition: both go to the dead-letter topic with a reason
// and the records after them are applied.
func TestWorkerDeadLetters(t *testing.T) {
	_, brokers := startCluster(t, 1)
	prod := newRawProducer(t, brokers)
	now := time.Now()
	good := func(id string) []byte {
		return positions.AppendEvent(nil, positions.Event{Kind: positions.KindPosition, Driver: positions.DriverID(id), Pos: sfCenter,
			Status: positions.StatusAvailable, Seq: 1, Heading: positions.NoHeading, ReceiveTime: now})
	}
	badLat := good("bad")
	badLat[7] = 0x7f // lat far beyond 90 degrees
	prod.send(t, 0, "before", good("before"), now)
	prod.send(t, 0, "poison", []byte("{\"not\":\"an event\"}"), now)
	prod.send(t, 0, "bad", badLat, now)
	prod.send(t, 0, "after", good("after"), now)

	w := startWorker(t, workerConfig(brokers))
	eventually(t, "worker caught up", 30*time.Second, func() bool { return caughtUp(t, w.Worker) })
	got, _ := snapshot(t, allPartitions(1), w)
	if _, ok := got["after"]; !ok || len(got) != 2 {
		t.Fatalf("held %v, want before and after", slices.Collect(maps.Keys(got)))
	}
	letters := consumeAll(t, brokers, positions.DefaultDLQTopic, 2)
	wantReason := map[string]string{"poison": "unknown version", "bad": "lat"}
	for _, r := range letters {
		h := make(map[string]string)
		for _, kv := range r.Headers {
			h[kv.Key] = string(kv.Value)
		}
		if !strings.Contains(h[positions.HeaderReason], wantReason[string(r.Key)]) || h[positions.HeaderPartition] != "0" {
			t.Errorf("dead letter %q headers %v, want reason mentioning %q", r.Key, h, wantReason[string(r.Key)])
		}
	}
	if s := w.Stats(); s.DLQ != 2 || s.DLQDropped != 0 {
		t.Errorf("stats %+v, want 2 dead letters", s)
	}
}

// TestWorkerQueries checks the Querier contract: partitions not owned are
// Missed, counts sum, bad queries are refused.
func TestWorkerQueries(t *testing.T) {
	const parts = 2
	_, brokers := startCluster(t, parts)
	p := runPublisher(t, publisherConfig(brokers, parts))
	rng := rand.New(rand.NewPCG(testSeed(t), 4))
	for i := range 100 {
		ev := positions.Event{Driver: positions.DriverID(fmt.Sprint("q", i)), Pos: randomPos(rng), Status: positions.StatusAvailable, Seq: 1}
		if err := p.Publish(ev); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, workerConfig(brokers))
	eventually(t, "worker caught up", 30*time.Second, func() bool { return caughtUp(t, w.Worker) })

	counts, err := w.CellCounts(ctx, positions.CellCountsRequest{Partitions: []positions.Partition{0, 1, 7}, Res: 5})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range counts.Counts {
		total += n
	}
	if total != 100 || !slices.Equal(counts.Missed, []positions.Partition{7}) {
		t.Errorf("counts total %d missed %v, want 100 and [7]", total, counts.Missed)
	}
	near, err := w.Nearest(ctx, positions.NearestRequest{Partitions: []positions.Partition{0, 1, 1}, Center: sfCenter, K: 5, RadiusM: 50_000})
	if err != nil {
		t.Fatal(err)
	}
	if len(near.Candidates) != 5 || len(near.Missed) != 0 || !slices.IsSortedFunc(near.Candidates, func(a, b positions.Candidate) int {
		return int(a.DistanceM - b.DistanceM)
	}) {
		t.Errorf("nearest %+v", near)
	}
	if _, err := w.Nearest(ctx, positions.NearestRequest{Partitions: []positions.Partition{0}, Center: sfCenter, K: 0, RadiusM: 10}); !errors.Is(err, positions.ErrInvalidQuery) {
		t.Errorf("k=0: err %v, want ErrInvalidQuery", err)
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	part, err := w.Nearest(done, positions.NearestRequest{Partitions: []positions.Partition{0, 1}, Center: sfCenter, K: 5, RadiusM: 50_000})
	if err != nil || len(part.Missed)+len(part.Candidates) == 0 {
		t.Errorf("cancelled query: %+v, %v; want a partial answer", part, err)
	}
}

// TestIngestStopsItsGoroutines starts a cluster, a publisher and a worker,
// stops them, and checks that the goroutine count returns to where it was
// (a goleak-style check without the dependency).
func TestIngestStopsItsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, positions.DefaultTopic),
			kfake.SeedTopics(1, positions.DefaultDLQTopic), kfake.GroupMinSessionTimeout(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		brokers := c.ListenAddrs()
		p, err := positions.NewPublisher(publisherConfig(brokers, 2))
		if err != nil {
			t.Fatal(err)
		}
		w, err := positions.NewWorker(workerConfig(brokers))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var g errgroup.Group
		g.Go(func() error { return p.Run(ctx) })
		g.Go(func() error { return w.Run(ctx) })
		if err := p.Publish(positions.Event{Driver: "g1", Pos: sfCenter, Status: positions.StatusAvailable, Seq: 1}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "worker caught up", 30*time.Second, func() bool { return caughtUp(t, w) && w.Stats().Records == 1 })
		cancel()
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWorkerSignalsOwnedChanges: a partition that becomes ready, and one
// handed to a second worker, each signal OwnedChanged, and after the
// signal Owned shows the change.
func TestWorkerSignalsOwnedChanges(t *testing.T) {
	_, brokers := startCluster(t, 4)
	w1 := startWorker(t, workerConfig(brokers))
	wait := func(w runningWorker, what string, cond func(map[positions.Partition]int64) bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for !cond(w.Owned()) {
			select {
			case <-w.OwnedChanged():
			case <-deadline:
				t.Fatalf("%s: owned %v", what, w.Owned())
			}
		}
	}
	wait(w1, "all four ready on the first worker", func(o map[positions.Partition]int64) bool { return len(o) == 4 })
	w2 := startWorker(t, workerConfig(brokers))
	wait(w1, "the first worker gave partitions up", func(o map[positions.Partition]int64) bool { return len(o) < 4 })
	wait(w2, "the second worker owns some", func(o map[positions.Partition]int64) bool { return len(o) > 0 })
}

// TestWorkerQueriesDuringIngest queries the worker from several goroutines
// while drivers' moves stream in (each owner answers queries between
// record batches): every answer is sorted and names drivers at seqs that
// were published, and once the stream ends the answers hold every driver
// at its last seq.
func TestWorkerQueriesDuringIngest(t *testing.T) {
	const parts, drivers, moves = 4, 200, 10
	_, brokers := startCluster(t, parts)
	p := runPublisher(t, publisherConfig(brokers, parts))
	w := startWorker(t, workerConfig(brokers))
	eventually(t, "worker ready", 30*time.Second, func() bool { return w.Ready() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var g errgroup.Group
	for range 4 {
		g.Go(func() error {
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				resp, err := w.Nearest(ctx, positions.NearestRequest{Partitions: allPartitions(parts), Center: sfCenter, K: 50, RadiusM: 60_000})
				if err != nil {
					return err
				}
				for i, c := range resp.Candidates {
					if c.Seq < 1 || c.Seq > moves {
						return fmt.Errorf("driver %s at seq %d, published 1..%d", c.ID, c.Seq, moves)
					}
					if i > 0 && c.DistanceM < resp.Candidates[i-1].DistanceM {
						return fmt.Errorf("answer not sorted at %d", i)
					}
				}
			}
		})
	}
	rng := rand.New(rand.NewPCG(testSeed(t), 5))
	for seq := uint64(1); seq <= moves; seq++ {
		for i := range drivers {
			ev := positions.Event{Driver: positions.DriverID(fmt.Sprint("m", i)), Pos: randomPos(rng), Status: positions.StatusAvailable, Seq: seq}
			if err := p.Publish(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "worker caught up", 30*time.Second, func() bool { return caughtUp(t, w.Worker) })
	close(stop)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	all, missed := snapshot(t, allPartitions(parts), w.Worker)
	if len(all) != drivers || len(missed) != 0 {
		t.Fatalf("%d drivers (missed %v), want %d", len(all), missed, drivers)
	}
	for id, d := range all {
		if d.Seq != moves {
			t.Errorf("driver %s at seq %d, want %d", id, d.Seq, moves)
		}
	}
}
