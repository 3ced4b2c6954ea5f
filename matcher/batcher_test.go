package matcher_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// crossing is two riders and two drivers on one street in one region:
// served in arrival order, the first rider takes the driver nearest to it
// and leaves the second a long drive (greedy: 400 m + 1700 m); the batch
// crosses them (700 m + 600 m).
type crossing struct {
	cl             *cluster
	g              *matcher.Gatherer
	r1, r2, d1, d2 geo.LatLng
}

func newCrossing(t *testing.T) crossing {
	t.Helper()
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 4}
	shard, err := geo.ShardCell(nyc, pt.ShardRes)
	if err != nil {
		t.Fatal(err)
	}
	center, _ := geo.CellCenter(shard) // everything well inside one region
	x := crossing{cl: newCluster(t, pt, 2), r1: center, r2: offset(center, 1000, 0), d1: offset(center, 400, 0), d2: offset(center, -700, 0)}
	for _, p := range []geo.LatLng{x.r1, x.r2, x.d1, x.d2} {
		if _, c, _ := pt.ForPos(p); c != shard {
			t.Fatalf("%v is outside the region", p)
		}
	}
	x.cl.add(t, "d1", x.d1, positions.StatusAvailable)
	x.cl.add(t, "d2", x.d2, positions.StatusAvailable)
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner, cfg.Deadline = pt, time.Minute
	if x.g, err = matcher.NewGatherer(x.cl.owners(), cfg); err != nil {
		t.Fatal(err)
	}
	return x
}

func newBatcher(t *testing.T, g *matcher.Gatherer, l *matcher.Leases, window time.Duration, maxRiders int) *matcher.Batcher {
	t.Helper()
	cfg := matcher.DefaultBatcherConfig()
	cfg.Partitioner = positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 4}
	cfg.Batch.Window, cfg.Batch.MaxRiders = window, maxRiders
	b, err := matcher.NewBatcher(g, l, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// matchAll runs the requests concurrently, each joining the window after
// the one before (arrival order decides greedy's plan), and returns the
// matches by ride.
func matchAll(t *testing.T, m *matcher.Batcher, reqs ...matcher.MatchRequest) map[matcher.RideID]matcher.Match {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	out := map[matcher.RideID]matcher.Match{}
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := m.Match(ctx, r)
			if err != nil {
				t.Errorf("%s: %v", r.Ride, err)
				return
			}
			mu.Lock()
			out[r.Ride] = got
			mu.Unlock()
		}()
		// Wait until it has joined (or a full window took it away).
		deadline := time.Now().Add(5 * time.Second)
		for m.Waiting() < i+1 && m.Stats().Riders == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s never joined a window", r.Ride)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	return out
}

func TestBatcherBeatsGreedyOnCrossing(t *testing.T) {
	x := newCrossing(t)
	l, _, _ := newLeases(t)
	b := newBatcher(t, x.g, l, 300*time.Millisecond, 256)
	got := matchAll(t, b, matcher.MatchRequest{Ride: "r1", Pickup: x.r1}, matcher.MatchRequest{Ride: "r2", Pickup: x.r2})
	if got["r1"].Driver.ID != "d2" || got["r2"].Driver.ID != "d1" {
		t.Fatalf("batched: r1 <- %s, r2 <- %s; want d2, d1", got["r1"].Driver.ID, got["r2"].Driver.ID)
	}
	// Each match's distance is to its own rider's pickup, whichever
	// rider's gather found the driver.
	for ride, pickup := range map[matcher.RideID]geo.LatLng{"r1": x.r1, "r2": x.r2} {
		m := got[ride]
		if want := geo.DistanceM(m.Driver.Pos, pickup); math.Abs(m.Driver.DistanceM-want) > 0.01 {
			t.Errorf("%s: distance %.1f m, want %.1f m to its pickup", ride, m.Driver.DistanceM, want)
		}
	}
	st := b.Stats()
	if st.Windows != 1 || st.Riders != 2 || st.Assigned != 2 || st.GreedyETA <= st.BatchedETA {
		t.Fatalf("stats %+v", st)
	}
	// The same riders served one by one (greedy) get the worse pairing.
	l2, _, _ := newLeases(t)
	gr, err := matcher.NewGreedy(x.g, l2, matcher.DefaultGreedyConfig())
	if err != nil {
		t.Fatal(err)
	}
	m1, err1 := gr.Match(context.Background(), matcher.MatchRequest{Ride: "r1", Pickup: x.r1})
	m2, err2 := gr.Match(context.Background(), matcher.MatchRequest{Ride: "r2", Pickup: x.r2})
	if err1 != nil || err2 != nil || m1.Driver.ID != "d1" || m2.Driver.ID != "d2" {
		t.Fatalf("greedy: %s %v, %s %v", m1.Driver.ID, err1, m2.Driver.ID, err2)
	}
	if batched, greedy := got["r1"].ETA+got["r2"].ETA, m1.ETA+m2.ETA; batched*13 > greedy*10 {
		t.Fatalf("batched total ETA %v is not 30%% under greedy's %v", batched, greedy)
	}
}

func TestBatcherFallsBackOnContentionAndRespectsExclude(t *testing.T) {
	x := newCrossing(t)
	l, _, _ := newLeases(t)
	b := newBatcher(t, x.g, l, 200*time.Millisecond, 256)
	// Another ride holds d2 already: r1's planned driver is taken, and it
	// falls back to d1.
	if _, err := l.Reserve(context.Background(), "d2", "other", time.Minute); err != nil {
		t.Fatal(err)
	}
	got := matchAll(t, b, matcher.MatchRequest{Ride: "r1", Pickup: x.r1})
	if got["r1"].Driver.ID != "d1" {
		t.Fatalf("r1 <- %q, want the fallback d1", got["r1"].Driver.ID)
	}
	// A rider who declined d1 before is never planned d1 again.
	ctx := context.Background()
	_, err := b.Match(ctx, matcher.MatchRequest{Ride: "r3", Pickup: x.r1, Exclude: []positions.DriverID{"d1"}})
	if err == nil {
		t.Fatal("r3 matched although d1 is excluded and d2 taken")
	}
}

func TestBatcherClosesFullWindowsAtOnce(t *testing.T) {
	x := newCrossing(t)
	l, _, _ := newLeases(t)
	b := newBatcher(t, x.g, l, time.Minute, 2) // only a full window closes in time
	start := time.Now()
	got := matchAll(t, b, matcher.MatchRequest{Ride: "r1", Pickup: x.r1}, matcher.MatchRequest{Ride: "r2", Pickup: x.r2})
	if len(got) != 2 || time.Since(start) > 10*time.Second {
		t.Fatalf("full window: %d matches after %v", len(got), time.Since(start))
	}
	// Close plans what is still open.
	done := make(chan error, 1)
	go func() {
		_, err := b.Match(context.Background(), matcher.MatchRequest{Ride: "r9", Pickup: x.r1})
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for b.Waiting() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("r9 never joined a window")
		}
		time.Sleep(time.Millisecond)
	}
	b.Close()
	if err := <-done; !errors.Is(err, matcher.ErrClosed) {
		t.Fatalf("r9, waiting at Close: %v, want ErrClosed", err)
	}
	if _, err := b.Match(context.Background(), matcher.MatchRequest{Ride: "r10", Pickup: x.r1}); err != matcher.ErrClosed {
		t.Fatalf("after Close: %v", err)
	}
}
