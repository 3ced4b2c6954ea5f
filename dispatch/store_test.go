package dispatch_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func newStore(t *testing.T) (*dispatch.RideStore, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t)
	s, err := dispatch.NewRideStore(srv.Client(t), dispatch.DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
	return s, srv
}

// storeAndLeases is a ride store and leases over rdb, with the defaults.
func storeAndLeases(t *testing.T, rdb redis.UniversalClient) (*dispatch.RideStore, *matcher.Leases) {
	t.Helper()
	store, err := dispatch.NewRideStore(rdb, dispatch.DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
	leases, err := matcher.NewLeases(rdb, matcher.DefaultLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	return store, leases
}

func TestStoreCreateIsIdempotent(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	id := dispatch.IdempotentID("u1", "key-1")
	if id != dispatch.IdempotentID("u1", "key-1") || id == dispatch.IdempotentID("u2", "key-1") {
		t.Fatal("IdempotentID is not a function of (rider, key)")
	}
	r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, t0)
	got, created, err := s.Create(ctx, r)
	if err != nil || !created || got.ID != id {
		t.Fatalf("first create: %+v %v %v", got, created, err)
	}
	// The retry finds the same ride, even after it moved on.
	if _, err := s.Apply(ctx, id, dispatch.Event{Kind: dispatch.EvSearch, At: t0}); err != nil {
		t.Fatal(err)
	}
	again, created, err := s.Create(ctx, r)
	if err != nil || created || again.State != dispatch.Searching || again.Version != 2 {
		t.Fatalf("retry: %+v %v %v", again, created, err)
	}
	// Same key, different request.
	other, _ := dispatch.NewRide(id, "u1", geo.LatLng{Lat: 1, Lng: 1}, dropoff, t0)
	if _, _, err := s.Create(ctx, other); !errors.Is(err, dispatch.ErrIdempotencyMismatch) {
		t.Fatalf("reused key: %v", err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, dispatch.ErrRideNotFound) {
		t.Fatalf("missing ride: %v", err)
	}
}

func TestStoreConcurrentUpdatesLoseNothing(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	r, _ := dispatch.NewRide("r-cas", "u1", pickup, dropoff, t0)
	if _, _, err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	s.Apply(ctx, r.ID, dispatch.Event{Kind: dispatch.EvSearch})
	// Many writers race to make the one offer; exactly one wins, the rest
	// see an illegal transition after re-reading.
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Apply(ctx, r.ID, dispatch.Event{Kind: dispatch.EvOffer, Driver: positions.DriverID("d" + string(rune('a'+i)))})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, dispatch.ErrIllegalTransition) && !errors.Is(err, dispatch.ErrConflict) {
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	got, _ := s.Get(ctx, r.ID)
	if wins != 1 || got.State != dispatch.Offered || got.Offers != 1 || got.Version != 3 {
		t.Fatalf("wins %d, ride %+v", wins, got)
	}
}

func TestStoreEndedRidesExpire(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	r, _ := dispatch.NewRide("r-end", "u1", pickup, dropoff, t0)
	s.Create(ctx, r)
	if _, err := s.Apply(ctx, r.ID, dispatch.Event{Kind: dispatch.EvRiderCancel}); err != nil {
		t.Fatal(err)
	}
	ttl, err := srv.Client(t).PTTL(ctx, "hexd:ride:{r-end}").Result()
	if err != nil || ttl <= 23*time.Hour || ttl > 24*time.Hour {
		t.Fatalf("ended ride TTL %v, %v", ttl, err)
	}
}

func TestStoreRedisDownFailsFast(t *testing.T) {
	s, srv := newStore(t)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Get(ctx, "r1"); !errors.Is(err, dispatch.ErrStoreUnavailable) {
		t.Fatalf("Get with Redis down: %v", err)
	}
	srv.Restart()
	if _, err := s.Get(ctx, "r1"); !errors.Is(err, dispatch.ErrRideNotFound) {
		t.Fatalf("Get after restart: %v", err)
	}
}

// outboxVersions returns the versions of ride id's pending events, in
// outbox order.
func outboxVersions(t *testing.T, srv *redistest.Server, id dispatch.RideID) []uint64 {
	t.Helper()
	raw, err := srv.Client(t).LRange(context.Background(), "hexd:outbox:{"+string(id)+"}", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, b := range raw {
		e, err := dispatch.DecodeRideEvent([]byte(b))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e.Version)
	}
	return out
}

// TestStoreApplyFromStaleCopy: a write from the caller's copy of a ride
// lands on the ride as stored whatever the copy's age, refuses an event
// only when the stored ride makes it illegal, and logs every transition
// once, in version order.
func TestStoreApplyFromStaleCopy(t *testing.T) {
	d := positions.DriverID("d1")
	tests := []struct {
		name    string
		stored  []dispatch.Event // applied after the copy was taken
		ev      dispatch.Event
		more    []dispatch.Event // applied after ev, in the same write
		want    dispatch.State
		illegal bool
	}{
		{name: "current copy", ev: dispatch.Event{Kind: dispatch.EvSearch}, want: dispatch.Searching},
		{name: "stale copy, legal on both", stored: []dispatch.Event{{Kind: dispatch.EvSearch}},
			ev: dispatch.Event{Kind: dispatch.EvRiderCancel}, want: dispatch.CancelledByRider},
		{name: "stale copy, illegal on the copy only", stored: []dispatch.Event{{Kind: dispatch.EvSearch}},
			ev: dispatch.Event{Kind: dispatch.EvOffer, Driver: d}, want: dispatch.Offered},
		{name: "stale copy, illegal on the stored ride", stored: []dispatch.Event{{Kind: dispatch.EvRiderCancel}},
			ev: dispatch.Event{Kind: dispatch.EvSearch}, want: dispatch.CancelledByRider, illegal: true},
		{name: "copy two versions behind", stored: []dispatch.Event{{Kind: dispatch.EvSearch}, {Kind: dispatch.EvOffer, Driver: d}},
			ev: dispatch.Event{Kind: dispatch.EvAccept, Driver: d}, want: dispatch.Accepted},
		{name: "two events in one write", ev: dispatch.Event{Kind: dispatch.EvSearch},
			more: []dispatch.Event{{Kind: dispatch.EvOffer, Driver: d}}, want: dispatch.Offered},
		{name: "three events in one write", ev: dispatch.Event{Kind: dispatch.EvSearch},
			more: []dispatch.Event{{Kind: dispatch.EvOffer, Driver: d}, {Kind: dispatch.EvAccept, Driver: d}}, want: dispatch.Accepted},
		{name: "second event illegal: none written", ev: dispatch.Event{Kind: dispatch.EvSearch},
			more: []dispatch.Event{{Kind: dispatch.EvAccept, Driver: d}}, want: dispatch.Requested, illegal: true},
		{name: "stale copy, two events, the first illegal on the stored ride", stored: []dispatch.Event{{Kind: dispatch.EvRiderCancel}},
			ev: dispatch.Event{Kind: dispatch.EvSearch}, more: []dispatch.Event{{Kind: dispatch.EvOffer, Driver: d}},
			want: dispatch.CancelledByRider, illegal: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, srv := newStore(t)
			ctx := context.Background()
			mine, _ := dispatch.NewRide("r-from", "u1", pickup, dropoff, t0)
			if _, _, err := s.Create(ctx, mine); err != nil {
				t.Fatal(err)
			}
			for _, ev := range tt.stored {
				if _, err := s.Apply(ctx, mine.ID, ev); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := s.Get(ctx, mine.ID)
			got, err := s.ApplyFrom(ctx, mine, tt.ev, tt.more...)
			if tt.illegal != errors.Is(err, dispatch.ErrIllegalTransition) || (!tt.illegal && err != nil) {
				t.Fatalf("ApplyFrom: %v (illegal wanted: %v)", err, tt.illegal)
			}
			if got.State != tt.want {
				t.Fatalf("returned ride in %s, want %s", got.State, tt.want)
			}
			stored, _ := s.Get(ctx, mine.ID)
			wantVersion := before.Version + 1 + uint64(len(tt.more))
			if tt.illegal {
				wantVersion = before.Version
			}
			if stored.State != tt.want || stored.Version != wantVersion || got.Version != wantVersion {
				t.Fatalf("stored %s v%d, returned v%d; want %s v%d", stored.State, stored.Version, got.Version, tt.want, wantVersion)
			}
			vs := outboxVersions(t, srv, mine.ID)
			if uint64(len(vs)) != wantVersion {
				t.Fatalf("outbox versions %v, want 1..%d", vs, wantVersion)
			}
			for i, v := range vs {
				if v != uint64(i+1) {
					t.Fatalf("outbox versions %v, want 1..%d", vs, wantVersion)
				}
			}
		})
	}
}

// TestStoreApplyFromTracksTrips: a write into accepted, arrived or in_trip
// tracks the ride under its new state and drops it from the old one, also
// when the compare-and-set script is not loaded yet (the pipelined path
// falls back to loading it).
func TestStoreApplyFromTracksTrips(t *testing.T) {
	s, srv := newStore(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	d := positions.DriverID("d1")
	r, _ := dispatch.NewRide("r-trip", "u1", pickup, dropoff, t0)
	r, _, err := s.Create(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	tracked := func(st dispatch.State) bool {
		_, err := rdb.ZScore(ctx, "hexd:trips:"+st.String(), string(r.ID)).Result()
		return err == nil
	}
	for i, ev := range []dispatch.Event{{Kind: dispatch.EvSearch}, {Kind: dispatch.EvOffer, Driver: d},
		{Kind: dispatch.EvAccept, Driver: d}, {Kind: dispatch.EvArrive, Driver: d}, {Kind: dispatch.EvStart, Driver: d}} {
		if i%2 == 0 {
			rdb.ScriptFlush(ctx) // every other write finds no script loaded
		}
		prev := r.State
		if r, err = s.ApplyFrom(ctx, r, ev); err != nil {
			t.Fatalf("%s: %v", ev.Kind, err)
		}
		for _, st := range []dispatch.State{dispatch.Accepted, dispatch.Arrived, dispatch.InTrip} {
			if want := st == r.State; tracked(st) != want {
				t.Fatalf("after %s (%s -> %s): tracked in %s = %v, want %v", ev.Kind, prev, r.State, st, !want, want)
			}
		}
	}
}

// TestStoreCreateSearchingTracksTheSearch: a ride created with its search
// tracked is overdue after the deadline, a retry keeps the first deadline,
// and the same holds with the store's single commands on an
// AutoPipeliner (as the engine runs it) and with them on the plain client.
func TestStoreCreateSearchingTracksTheSearch(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ap, err := rdb.AutoPipeline()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ap.Close() })
	plain := dispatch.DefaultStoreConfig()
	piped := dispatch.DefaultStoreConfig()
	piped.Prefix, piped.Commands = "piped:", ap
	for name, cfg := range map[string]dispatch.StoreConfig{"plain": plain, "autopipelined": piped} {
		t.Run(name, func(t *testing.T) {
			s, err := dispatch.NewRideStore(rdb, cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			r, _ := dispatch.NewRide("r-"+dispatch.RideID(name), "u1", pickup, dropoff, t0)
			deadline := t0.Add(time.Minute)
			got, created, err := s.CreateSearching(ctx, r, deadline)
			if err != nil || !created || got.State != dispatch.Requested {
				t.Fatalf("create: %+v %v %v", got, created, err)
			}
			again, created, err := s.CreateSearching(ctx, r, deadline.Add(time.Hour))
			if err != nil || created || again.ID != r.ID {
				t.Fatalf("retry: %+v %v %v", again, created, err)
			}
			if ids, err := s.OverdueSearches(ctx, deadline.Add(-time.Millisecond), 10); err != nil || len(ids) != 0 {
				t.Fatalf("overdue before the deadline: %v %v", ids, err)
			}
			if ids, err := s.OverdueSearches(ctx, deadline.Add(time.Millisecond), 10); err != nil || len(ids) != 1 || ids[0] != r.ID {
				t.Fatalf("overdue after the first deadline: %v %v, want [%s] (the retry must not move it)", ids, err, r.ID)
			}
			// Writes go through the same commands client.
			if _, err := s.ApplyFrom(ctx, got, dispatch.Event{Kind: dispatch.EvSearch, At: t0}); err != nil {
				t.Fatal(err)
			}
			if cur, err := s.Get(ctx, r.ID); err != nil || cur.State != dispatch.Searching {
				t.Fatalf("after searching: %+v %v", cur, err)
			}
			if n, err := rdb.LLen(ctx, cfg.Prefix+"outbox:{"+string(r.ID)+"}").Result(); err != nil || n != 2 {
				t.Fatalf("outbox holds %d events (%v), want the request and searching", n, err)
			}
		})
	}
}
