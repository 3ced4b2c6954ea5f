package dispatch

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
)

// TestCASResendIsIdempotent: a client that resends a compare-and-set whose
// reply it lost (go-redis retries on a read timeout) gets success, and the
// outbox holds the transition once.
func TestCASResendIsIdempotent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s, err := NewRideStore(rdb, DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
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
		res, err := casScript.Run(ctx, rdb, []string{s.key(r.ID), s.outboxKey(r.ID)}, "1", "2", data, 0, out).Slice()
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
