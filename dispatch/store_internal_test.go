package dispatch

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// newRedisStore returns a store with the default config over a fresh
// redis-server, and the store's client.
func newRedisStore(t *testing.T) (*RideStore, *redis.Client) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	s, err := NewRideStore(rdb, DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
	return s, rdb
}

// TestCASResendIsIdempotent: a client that resends a compare-and-set whose
// reply it lost (go-redis retries on a read timeout) gets success, and the
// outbox holds the transition once.
func TestCASResendIsIdempotent(t *testing.T) {
	s, rdb := newRedisStore(t)
	ctx := context.Background()
	r, _ := NewRide("r1", "u1", geo.LatLng{Lat: 1, Lng: 1}, geo.LatLng{Lat: 2, Lng: 2}, time.Unix(0, 0))
	if _, _, err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	next := r
	if err := next.Apply(Event{Kind: EvSearch, At: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(next)
	out, _ := json.Marshal(NewRideEvent(next, EvSearch.String(), r.State))
	run := func() int64 {
		res, err := casScript.Run(ctx, rdb, []string{s.key(r.ID), s.outboxKey(r.ID)}, "1", "2", data, 0, string(r.ID), "0", "", out).Slice()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := res[0].(int64)
		return n
	}
	if first, resend := run(), run(); first != 1 || resend != 1 {
		t.Fatalf("first %d, resend %d; want 1, 1", first, resend)
	}
	if n, _ := rdb.LLen(ctx, s.outboxKey(r.ID)).Result(); n != 2 { // requested + searching
		t.Fatalf("outbox holds %d events, want 2", n)
	}
	// A different write from the old version is still refused.
	other := next
	other.Offers = 99
	data, _ = json.Marshal(other)
	if n := run(); n != 0 {
		t.Fatalf("a conflicting write got %d, want 0", n)
	}
}

// TestScriptsWriteTheSweepSets: on a single Redis the scripts that write a
// ride also move it between the sweeps' sorted sets, in the same atomic
// step: a created ride is in the searches, an accepted one leaves them and
// enters the accepted trips, a refused write moves it nowhere, and a
// create retried after the search ended does not track the ride again.
func TestScriptsWriteTheSweepSets(t *testing.T) {
	s, rdb := newRedisStore(t)
	ctx := context.Background()
	members := func(key string) []string {
		t.Helper()
		m, err := rdb.ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	r, _ := NewRide("r1", "u1", geo.LatLng{Lat: 1, Lng: 1}, geo.LatLng{Lat: 2, Lng: 2}, time.Unix(0, 0))
	deadline := time.UnixMilli(5000)
	if _, created, err := s.CreateSearching(ctx, r, deadline); err != nil || !created {
		t.Fatalf("create: created %v, %v", created, err)
	}
	if score, err := rdb.ZScore(ctx, s.searchesKey(), "r1").Result(); err != nil || score != 5000 {
		t.Fatalf("searches score %v, %v; want 5000", score, err)
	}
	if _, err := s.Apply(ctx, "r1", Event{Kind: EvSearch, At: time.UnixMilli(5500)}); err != nil {
		t.Fatal(err)
	}
	cur, err := s.Apply(ctx, "r1", Event{Kind: EvOffer, Driver: "d1", ETA: time.Minute, At: time.UnixMilli(6000)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, "r1", Event{Kind: EvAccept, Driver: "d1", At: time.UnixMilli(7000)}); err != nil {
		t.Fatal(err)
	}
	if m := members(s.searchesKey()); len(m) != 0 {
		t.Fatalf("searches after accept: %v, want none", m)
	}
	if score, err := rdb.ZScore(ctx, s.tripsKey(Accepted), "r1").Result(); err != nil || score != 7000 {
		t.Fatalf("accepted trips score %v, %v; want 7000", score, err)
	}
	// A write from a stale version is refused and moves the ride nowhere.
	stale := cur
	if err := stale.Apply(Event{Kind: EvAccept, Driver: "d1", At: time.UnixMilli(8000)}); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(stale)
	res, err := s.cas(ctx, "r1", cur.Version, stale, data, 0, nil, true, s.leaving(cur.State, stale.State))
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := res[0].(int64); code != 0 {
		t.Fatalf("stale write replied %v, want 0", res)
	}
	if score, _ := rdb.ZScore(ctx, s.tripsKey(Accepted), "r1").Result(); score != 7000 {
		t.Fatalf("accepted trips score %v after a refused write, want 7000", score)
	}
	if _, err := s.Apply(ctx, "r1", Event{Kind: EvArrive, Driver: "d1", At: time.UnixMilli(9000)}); err != nil {
		t.Fatal(err)
	}
	if m := members(s.tripsKey(Accepted)); len(m) != 0 {
		t.Fatalf("accepted trips after arrive: %v, want none", m)
	}
	if m := members(s.tripsKey(Arrived)); len(m) != 1 || m[0] != "r1" {
		t.Fatalf("arrived trips: %v, want [r1]", m)
	}
	// The rider's retry of the request finds the ride and tracks nothing.
	if _, created, err := s.CreateSearching(ctx, r, deadline); err != nil || created {
		t.Fatalf("retried create: created %v, %v", created, err)
	}
	if m := members(s.searchesKey()); len(m) != 0 {
		t.Fatalf("searches after a retried create: %v, want none", m)
	}
}

// TestRecentCopyNeverDecides: a store writing from its remembered copy of a
// ride that another process moved on writes onto the ride as stored, and a
// check or the state machine judges only the stored ride.
func TestRecentCopyNeverDecides(t *testing.T) {
	srv := redistest.Start(t)
	here, err := NewRideStore(srv.Client(t), DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
	there, err := NewRideStore(srv.Client(t), DefaultStoreConfig()) // another process
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	at := time.Unix(100, 0)
	r, _ := NewRide("r-recent", "u1", geo.LatLng{Lat: 1, Lng: 1}, geo.LatLng{Lat: 2, Lng: 2}, at)
	if _, _, err := here.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, ok := here.recall(r.ID); !ok || got.Version != 1 {
		t.Fatalf("here remembers %+v %v, want version 1", got, ok)
	}
	if _, err := there.Apply(ctx, r.ID, Event{Kind: EvSearch, At: at}); err != nil {
		t.Fatal(err)
	}
	// here's copy (requested, v1) is stale; a check that refuses
	// "searching" must see the stored ride, not pass on the copy.
	seen := []State{}
	_, err = here.applyChecked(ctx, r.ID, Event{Kind: EvRiderCancel, At: at}, func(cur Ride) error {
		seen = append(seen, cur.State)
		if cur.State == Searching {
			return ErrConflict
		}
		return nil
	})
	if err != ErrConflict || len(seen) != 2 || seen[0] != Requested || seen[1] != Searching {
		t.Fatalf("check saw %v, err %v; want the stale copy then the stored ride refused", seen, err)
	}
	// Without the check the cancel lands on the stored version.
	got, err := here.applyChecked(ctx, r.ID, Event{Kind: EvRiderCancel, At: at}, nil)
	if err != nil || got.Version != 3 || got.State != CancelledByRider {
		t.Fatalf("cancel from a stale copy: %+v %v, want version 3 cancelled", got, err)
	}
	if _, ok := here.recall(r.ID); ok {
		t.Fatal("an ended ride is still remembered")
	}
}
