package dispatch_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// manualClock is a clock the test moves by hand.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *manualClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// sentTo records what the dispatcher sends to drivers.
type sentTo struct {
	mu   sync.Mutex
	msgs map[positions.DriverID][]any
}

func (s *sentTo) Send(id positions.DriverID, msg any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs[id] = append(s.msgs[id], msg)
	return true
}

func (s *sentTo) got(id positions.DriverID) []any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs[id]
}

// nobodyFree is a Finder with no drivers: the expiry tests start no
// searches.
type nobodyFree struct{}

func (nobodyFree) Match(context.Context, matcher.MatchRequest) (matcher.Match, error) {
	return matcher.Match{}, matcher.ErrNoDriver
}

// TestAbandonedTripsExpire: rides whose driver stops moving them on expire
// in the sweep after StallTimeout (accepted, arrived, counted from the
// last step) or MaxTrip (in_trip), and their driver's trip lock is
// released; rides still progressing, and ended ones, are left alone.
func TestAbandonedTripsExpire(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	store, leases := storeAndLeases(t, rdb)
	clock := &manualClock{now: t0}
	sent := &sentTo{msgs: map[positions.DriverID][]any{}}
	xc := dispatch.DefaultDispatcherConfig()
	xc.Store, xc.Finder, xc.Leases, xc.Notifier, xc.Now = store, nobodyFree{}, leases, sent, clock.Now
	xc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	xc.StallTimeout, xc.MaxTrip = 0, 0 // zero means the defaults: 30 min and 6 h
	disp, err := dispatch.NewDispatcher(xc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disp.Close)

	// trip makes ride id with driver holding its trip lock, then applies
	// the steps, step i at the given offset from t0.
	type step struct {
		kind dispatch.EventKind
		at   time.Duration
	}
	trip := func(id dispatch.RideID, driver positions.DriverID, steps ...step) {
		t.Helper()
		r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, t0)
		if _, _, err := store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		tok, err := leases.Reserve(ctx, driver, matcher.RideID(id), 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := leases.Commit(ctx, driver, matcher.RideID(id), tok); err != nil {
			t.Fatal(err)
		}
		evs := []dispatch.Event{{Kind: dispatch.EvSearch, At: t0}, {Kind: dispatch.EvOffer, Driver: driver, At: t0},
			{Kind: dispatch.EvAccept, Driver: driver, Token: int64(tok), At: t0}}
		for _, s := range steps {
			evs = append(evs, dispatch.Event{Kind: s.kind, Driver: driver, At: t0.Add(s.at)})
		}
		for _, ev := range evs {
			if _, err := store.Apply(ctx, id, ev); err != nil {
				t.Fatalf("%s: %s: %v", id, ev.Kind, err)
			}
		}
	}
	trip("accepted", "d1")
	trip("arrived", "d2", step{dispatch.EvArrive, 20 * time.Minute})
	trip("in-trip", "d3", step{dispatch.EvArrive, 5 * time.Minute}, step{dispatch.EvStart, 10 * time.Minute})
	trip("completed", "d4", step{dispatch.EvArrive, time.Minute}, step{dispatch.EvStart, 2 * time.Minute},
		step{dispatch.EvComplete, 3 * time.Minute})
	trip("cancelled", "d5", step{dispatch.EvDriverCancel, time.Minute})

	passes := []struct {
		at    time.Duration
		ended int
		want  map[dispatch.RideID]dispatch.State
	}{
		// 29 min after acceptance: nothing is overdue.
		{29 * time.Minute, 0, map[dispatch.RideID]dispatch.State{"accepted": dispatch.Accepted, "arrived": dispatch.Arrived}},
		// 30 min after acceptance: the ride never arrived; the arrived one
		// arrived 10 min ago.
		{30 * time.Minute, 1, map[dispatch.RideID]dispatch.State{"accepted": dispatch.Expired, "arrived": dispatch.Arrived}},
		// 30 min after arriving: the rider never got in.
		{50 * time.Minute, 1, map[dispatch.RideID]dispatch.State{"arrived": dispatch.Expired, "in-trip": dispatch.InTrip}},
		// 6 h in the car, less a minute, then 6 h.
		{6*time.Hour + 9*time.Minute, 0, map[dispatch.RideID]dispatch.State{"in-trip": dispatch.InTrip}},
		{6*time.Hour + 10*time.Minute, 1, map[dispatch.RideID]dispatch.State{"in-trip": dispatch.Expired}},
		// Ended rides were never candidates; nothing is left to sweep.
		{48 * time.Hour, 0, map[dispatch.RideID]dispatch.State{"completed": dispatch.Completed, "cancelled": dispatch.CancelledByDriver}},
	}
	for _, p := range passes {
		clock.Set(t0.Add(p.at))
		if n := disp.Sweep(ctx); n != p.ended {
			t.Errorf("sweep at +%v ended %d rides, want %d", p.at, n, p.ended)
		}
		for id, want := range p.want {
			if got, err := store.Get(ctx, id); err != nil || got.State != want {
				t.Errorf("at +%v: %s is %s (%v), want %s", p.at, id, got.State, err, want)
			}
		}
	}
	// The expired rides' drivers are free again, and were told.
	for _, d := range []positions.DriverID{"d1", "d2", "d3"} {
		if _, held, err := leases.Holder(ctx, d); err != nil || held {
			t.Errorf("%s still held after its ride expired (%v)", d, err)
		}
		if msgs := sent.got(d); len(msgs) != 1 {
			t.Errorf("%s was sent %v, want one ride_expired", d, msgs)
		}
	}
	if s := disp.Stats(); s.Errors != 0 {
		t.Errorf("stats %+v", s)
	}
	if n := store.Entered(dispatch.Expired); n != 3 {
		t.Errorf("%d rides entered expired, want 3", n)
	}
}
