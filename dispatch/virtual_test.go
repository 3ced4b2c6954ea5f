package dispatch_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	vclock "github.com/hexdispatch/hexdispatch/internal/clock"
)

// waitIdle polls until the dispatcher has nothing to do.
func waitIdle(t *testing.T, ctx context.Context, d *dispatch.Dispatcher) {
	t.Helper()
	for !d.Idle() {
		select {
		case <-ctx.Done():
			t.Fatal("dispatcher never idle")
		case <-time.After(time.Millisecond):
		}
	}
}

// TestDispatcherOnVirtualClock: with the dispatcher on a virtual clock the
// offer timeout, the retry pauses and the search deadline happen when the
// clock is moved, not when wall time passes, and Idle holds between the
// moves.
func TestDispatcherOnVirtualClock(t *testing.T) {
	v := vclock.NewVirtual(time.Now())
	const offer, deadline = 10 * time.Second, time.Minute
	e := newEngine(t, offer, func(c *dispatch.DispatcherConfig) {
		c.Clock, c.Now, c.RetryEvery, c.SearchDeadline = v, v.Now, time.Second, deadline
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	conns := fanOutCity(t, e, ctx, pickup, "a")
	start := v.Now()

	code, ride, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u1", dispatch.RoleRider),
		`{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("request: %d %s", code, raw)
	}
	if m := nextFrame(t, ctx, conns["a"], "offer"); m["ride"] != string(ride.ID) {
		t.Fatalf("offer: %v", m)
	}
	waitIdle(t, ctx, e.disp)
	if next, ok := v.Next(); !ok || next.Sub(start) != offer {
		t.Fatalf("next timer at %v (%v), want the offer timeout %v", next.Sub(start), ok, offer)
	}
	// A wall-clock wait changes nothing: the offer stands.
	time.Sleep(50 * time.Millisecond)
	if !e.disp.Idle() {
		t.Fatal("busy without the clock moving")
	}
	if r, _ := e.store.Get(ctx, ride.ID); r.State != dispatch.Offered {
		t.Fatalf("before the timeout: %s, want offered", r.State)
	}

	// The timeout: the driver hears offer_expired, the search goes on
	// without it and, nobody else being near, pauses RetryEvery.
	v.Advance(start.Add(offer))
	if m := nextFrame(t, ctx, conns["a"], "offer_expired"); m["ride"] != string(ride.ID) {
		t.Fatalf("expiry: %v", m)
	}
	waitIdle(t, ctx, e.disp)
	if r, _ := e.store.Get(ctx, ride.ID); r.State != dispatch.Searching {
		t.Fatalf("after the timeout: %s, want searching", r.State)
	}
	if next, _ := v.Next(); next.Sub(start) != offer+time.Second {
		t.Fatalf("next timer at %v, want the retry at %v", next.Sub(start), offer+time.Second)
	}

	// Step the retries one timer at a time, as the city simulation does,
	// up to the deadline: no_driver.
	for v.Fire(start.Add(deadline)) {
		waitIdle(t, ctx, e.disp)
	}
	e.waitState(t, ride.ID, dispatch.NoDriver)
	if st := e.disp.Stats(); st.TimedOut != 1 || st.NoDriver != 1 {
		t.Fatalf("stats %+v: want 1 timed out, 1 no_driver", st)
	}
	// The gateway's traffic: one position in; the offer and its expiry out.
	if tr := e.drivers.Traffic(); tr.FramesIn != 1 || tr.FramesOut != 2 || tr.Queued != 0 {
		t.Fatalf("traffic %+v: want 1 frame in, 2 out, none queued", tr)
	}
}
