package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// roundTrips counts what a go-redis client sends: round trips (a pipeline
// is one) and commands, by name. It instruments the real client; nothing
// is faked.
type roundTrips struct {
	mu    sync.Mutex
	trips int
	cmds  map[string]int
}

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

func (c *roundTrips) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.trips++
	for _, cmd := range cmds {
		c.cmds[cmd.Name()]++
	}
}

// take returns the counts since the last take and starts again.
func (c *roundTrips) take() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for n, k := range c.cmds {
		names = append(names, fmt.Sprintf("%s %d", n, k))
	}
	slices.Sort(names)
	trips := c.trips
	c.trips, c.cmds = 0, map[string]int{}
	return trips, strings.Join(names, ", ")
}

// oneDriver is a Finder with one driver, reserved through the real
// Leases: the gather is not what this test counts.
type oneDriver struct {
	leases *matcher.Leases
	id     positions.DriverID
}

func (f oneDriver) Match(ctx context.Context, req matcher.MatchRequest) (matcher.Match, error) {
	if slices.Contains(req.Exclude, f.id) {
		return matcher.Match{}, matcher.ErrNoDriver
	}
	tok, err := f.leases.Reserve(ctx, f.id, req.Ride, 0)
	if err != nil {
		return matcher.Match{}, err
	}
	c := positions.Candidate{Driver: positions.Driver{ID: f.id, Pos: pickup}}
	return matcher.Match{Ride: req.Ride, Driver: c, Token: tok, Tried: 1}, nil
}

// offers hands the dispatcher's offers to the test.
type offers chan dispatch.OfferMessage

func (o offers) Send(_ positions.DriverID, msg any) bool {
	if m, ok := msg.(dispatch.OfferMessage); ok {
		o <- m
	}
	return true
}

// TestRideRoundTrips counts the Redis round trips of one ride's whole
// life, request to completion, through the real store, dispatcher, leases
// and driver actions on a real redis-server, and keeps them from growing
// (the count is exact: the same code sends the same commands). The relay
// is left out: it drains many rides per round trip. Run with -v for the
// commands of each step.
func TestRideRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	count := &roundTrips{cmds: map[string]int{}}
	rdb.AddHook(count)
	watch := srv.Client(t) // the test's own reads, not counted
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	const driver = positions.DriverID("d1")
	sent := make(offers, 1)
	disp, store, leases := oneDriverDispatcher(t, rdb, driver, sent)
	rides, err := dispatch.NewRides(dispatch.RidesConfig{Store: store, Dispatcher: disp, Leases: leases, Signer: newSigner(t),
		Now: time.Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}

	// ride runs one ride and returns the round trips of each step.
	ride := func(id dispatch.RideID) map[string]int {
		trips := map[string]int{}
		took := func(step string) {
			n, cmds := count.take()
			trips[step] = n
			t.Logf("ride %s, %s: %d round trips (%s)", id, step, n, cmds)
		}
		count.take()
		// The request handler's part: create the ride with its search
		// tracked, then start the search.
		startSearch(t, disp, store, id)
		if o := <-sent; o.Ride != id {
			t.Fatalf("offer of %s, want %s", o.Ride, id)
		}
		took("request to offer")
		if _, err := rides.DriverAction(ctx, driver, id, dispatch.EvAccept); err != nil {
			t.Fatal(err)
		}
		// The search ends (accept written, search untracked) on its own
		// goroutine: wait for its last write.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := watch.ZScore(ctx, "hexd:searches", string(id)).Result()
			if errors.Is(err, redis.Nil) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("search of %s still tracked: %v", id, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took("accept")
		for _, step := range []dispatch.EventKind{dispatch.EvArrive, dispatch.EvStart, dispatch.EvComplete} {
			if _, err := rides.DriverAction(ctx, driver, id, step); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
		}
		took("arrived, start, complete")
		return trips
	}
	ride("r-warm") // loads the scripts
	trips := ride("r-counted")
	total := 0
	for _, n := range trips {
		total += n
	}
	t.Logf("one ride, request to completion: %d Redis round trips", total)
	// The budget, as counted when it was set: request to offer 3 (create
	// with the search's tracking in one pipeline, reserve, then searching
	// and offered in one write), accept 2 (commit the lease, write
	// accepted with the trip's tracking, the search untracked by that
	// write; the answer to an offer of this process needs no read), the
	// three trip steps 4 (one write each, which tracks the new state and
	// untracks the last, from the store's copy of the ride without a read;
	// the lease's release after complete).
	if want := 3; trips["request to offer"] > want {
		t.Errorf("request to offer: %d round trips, budget %d", trips["request to offer"], want)
	}
	if want := 2; trips["accept"] > want {
		t.Errorf("accept: %d round trips, budget %d", trips["accept"], want)
	}
	if want := 4; trips["arrived, start, complete"] > want {
		t.Errorf("arrived, start, complete: %d round trips, budget %d", trips["arrived, start, complete"], want)
	}
	if want := 9; total > want {
		t.Errorf("one ride: %d round trips, budget %d", total, want)
	}
}

// TestRideLeavesTheSweepSets follows one ride's entries in the sorted sets
// the sweeps read (the searches, the rides in each assigned state) from
// request to completion: in the set of its state from the write that put
// it there, out of it from the write that moved it on. On a single Redis
// the write itself moves the entries; over a client whose keys may live
// on other nodes (a Ring, here of one shard) separate commands do, and the
// sets end the same.
func TestRideLeavesTheSweepSets(t *testing.T) {
	srv := redistest.Start(t)
	clients := map[string]func() redis.UniversalClient{
		"single": func() redis.UniversalClient { return srv.Client(t) },
		"ring": func() redis.UniversalClient {
			r := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"only": srv.Addr}})
			t.Cleanup(func() { r.Close() })
			return r
		},
	}
	watch := srv.Client(t)
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sets := []string{"hexd:searches", "hexd:trips:accepted", "hexd:trips:arrived", "hexd:trips:in_trip"}
	for name, client := range clients {
		t.Run(name, func(t *testing.T) {
			watch.FlushAll(ctx)
			const driver = positions.DriverID("d1")
			sent := make(offers, 1)
			disp, store, leases := oneDriverDispatcher(t, client(), driver, sent)
			rides, err := dispatch.NewRides(dispatch.RidesConfig{Store: store, Dispatcher: disp, Leases: leases, Signer: newSigner(t),
				Now: time.Now, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			id := dispatch.RideID("r-" + name)
			// in returns the sets that hold the ride, waiting up to 10 s
			// for them to be want (the search ends on its own goroutine).
			in := func(want ...string) {
				t.Helper()
				deadline := time.Now().Add(10 * time.Second)
				for {
					var got []string
					for _, k := range sets {
						if _, err := watch.ZScore(ctx, k, string(id)).Result(); err == nil {
							got = append(got, k)
						}
					}
					if slices.Equal(got, want) {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("ride in %v, want %v", got, want)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			startSearch(t, disp, store, id)
			<-sent
			in("hexd:searches")
			if _, err := rides.DriverAction(ctx, driver, id, dispatch.EvAccept); err != nil {
				t.Fatal(err)
			}
			in("hexd:trips:accepted")
			for _, step := range []struct {
				kind dispatch.EventKind
				set  []string
			}{
				{dispatch.EvArrive, []string{"hexd:trips:arrived"}},
				{dispatch.EvStart, []string{"hexd:trips:in_trip"}},
				{dispatch.EvComplete, nil},
			} {
				if _, err := rides.DriverAction(ctx, driver, id, step.kind); err != nil {
					t.Fatalf("%s: %v", step.kind, err)
				}
				in(step.set...)
			}
		})
	}
}

// oneDriverDispatcher is a dispatcher over rdb whose every match is
// driver (oneDriver), sending its offers to n, with the store and leases
// it uses; it closes with the test.
func oneDriverDispatcher(t *testing.T, rdb redis.UniversalClient, driver positions.DriverID, n dispatch.Notifier) (*dispatch.Dispatcher, *dispatch.RideStore, *matcher.Leases) {
	t.Helper()
	store, leases := storeAndLeases(t, rdb)
	xc := dispatch.DefaultDispatcherConfig()
	xc.Store, xc.Finder, xc.Leases, xc.Notifier = store, oneDriver{leases: leases, id: driver}, leases, n
	xc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	disp, err := dispatch.NewDispatcher(xc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disp.Close)
	return disp, store, leases
}

// startSearch does what the ride request handler does for a new ride id:
// create the ride with its search tracked, then start the search.
func startSearch(t *testing.T, disp *dispatch.Dispatcher, store *dispatch.RideStore, id dispatch.RideID) dispatch.Ride {
	t.Helper()
	r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, time.Now())
	stored, _, err := store.CreateSearching(context.Background(), r, disp.SearchUntil(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if err := disp.StartTracked(stored); err != nil {
		t.Fatal(err)
	}
	return stored
}

// answersAtOnce accepts every offer from inside Send, before the search
// can reach its wait: the fastest driver there can be.
type answersAtOnce struct {
	disp     **dispatch.Dispatcher
	answered chan bool
}

func (a answersAtOnce) Send(driver positions.DriverID, msg any) bool {
	if m, ok := msg.(dispatch.OfferMessage); ok {
		a.answered <- (*a.disp).Answer(m.Ride, driver, true)
	}
	return true
}

// TestAnswerBeforeTheSearchWaits: an accept that arrives while the offer
// is still being sent is taken, not refused as "no pending offer".
func TestAnswerBeforeTheSearchWaits(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	var disp *dispatch.Dispatcher
	n := answersAtOnce{disp: &disp, answered: make(chan bool, 1)}
	disp, store, _ := oneDriverDispatcher(t, rdb, "d1", n)
	r := startSearch(t, disp, store, "r-fast")
	if !<-n.answered {
		t.Fatal("the accept sent with the offer was refused")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := store.Get(ctx, r.ID)
		if err == nil && got.State == dispatch.Accepted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ride %+v (%v), want accepted", got, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSearchOfARideSearchedElsewhere: a search started for a ride that
// another search already moved on (another process's, or one that ended)
// writes nothing, since searching is recorded with the first offer from
// the ride as requested, and lets the driver it reserved go; a second
// start of a ride searching here does nothing. The ride a search offers
// has its events in order: requested, searching, offered.
func TestSearchOfARideSearchedElsewhere(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const driver = positions.DriverID("d1")
	sent := make(offers, 4)
	disp, store, leases := oneDriverDispatcher(t, rdb, driver, sent)

	r, _ := dispatch.NewRide("r-owned", "u1", pickup, dropoff, time.Now())
	if _, _, err := store.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	owned, err := store.Apply(ctx, r.ID, dispatch.Event{Kind: dispatch.EvSearch, At: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := disp.StartTracked(r); err != nil { // r: the copy as requested
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		active, _ := disp.Active()
		_, held, err := leases.Holder(ctx, driver)
		if active == 0 && !held && err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d searches active, driver held %v (%v)", active, held, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got, _ := store.Get(ctx, r.ID); got.State != dispatch.Searching || got.Version != owned.Version {
		t.Fatalf("the ride another search owns was written: %+v", got)
	}
	select {
	case o := <-sent:
		t.Fatalf("offered %+v for a ride searched elsewhere", o)
	default:
	}

	first := startSearch(t, disp, store, "r-twice")
	if o := <-sent; o.Ride != first.ID {
		t.Fatalf("offer of %s, want %s", o.Ride, first.ID)
	}
	if err := disp.StartTracked(first); err != nil {
		t.Fatalf("second start: %v", err)
	}
	if got, _ := store.Get(ctx, first.ID); got.State != dispatch.Offered || got.Version != 3 {
		t.Fatalf("ride %+v, want offered at version 3 (requested, searching, offered)", got)
	}
	if vs := outboxVersions(t, srv, first.ID); !slices.Equal(vs, []uint64{1, 2, 3}) {
		t.Fatalf("outbox versions %v, want [1 2 3]", vs)
	}
}

// TestFirstOfferPhases checks that the phases of a ride's way to its first
// offer are each counted once and add up to no more than the match
// latency they split.
func TestFirstOfferPhases(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	sent := make(offers, 1)
	disp, store, _ := oneDriverDispatcher(t, rdb, "d1", sent)
	startSearch(t, disp, store, "r-phases")
	if o := <-sent; o.Ride != "r-phases" {
		t.Fatalf("offer of %s", o.Ride)
	}
	// The send phase ends after the notifier returns: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for disp.PhaseLatency(dispatch.PhaseSend).Count == 0 {
		if time.Now().After(deadline) {
			t.Fatal("send phase never observed")
		}
		time.Sleep(time.Millisecond)
	}
	match := disp.MatchLatency()
	var inMatch time.Duration
	for p := range dispatch.NumPhases {
		s := disp.PhaseLatency(p)
		if s.Count != 1 {
			t.Errorf("phase %s: %d observations, want 1", p, s.Count)
		}
		if p == dispatch.PhaseFind || p == dispatch.PhaseRecord {
			inMatch += s.Sum
		}
	}
	if match.Count != 1 || inMatch > match.Sum || inMatch <= 0 {
		t.Errorf("find and record took %v, the match %v (%d observed)", inMatch, match.Sum, match.Count)
	}
	if got := fmt.Sprint(dispatch.PhaseStart, dispatch.PhaseFind, dispatch.PhaseRecord, dispatch.PhaseSend, dispatch.NumPhases); got != "start find record send Phase(4)" {
		t.Errorf("phase names %q", got)
	}
}
