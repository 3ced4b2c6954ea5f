package dispatch_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
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
