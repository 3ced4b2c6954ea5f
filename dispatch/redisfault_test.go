package dispatch_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// TestRedisOutageDuringMatching stops the real redis-server with a ride in
// flight: new requests get 503 with Retry-After and a JSON error while it
// is down; after the restart requests are matched again, the driver
// committed to the ride in flight is not offered another, and both rides
// reach completed.
func TestRedisOutageDuringMatching(t *testing.T) {
	e := newEngine(t, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	conns := fanOutCity(t, e, ctx, pickup, "d1", "d2")
	body := `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`

	// Ride A, accepted by the nearest driver: in flight through the outage.
	code, a, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u1", dispatch.RoleRider), body)
	if code != http.StatusCreated {
		t.Fatalf("ride A: %d %s", code, raw)
	}
	nextFrame(t, ctx, conns["d1"], "offer")
	d1 := e.tok(t, "d1", dispatch.RoleDriver)
	if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(a.ID)+"/accept", d1, ""); code != http.StatusAccepted {
		t.Fatalf("accept A: %d %s", code, raw)
	}
	e.waitState(t, a.ID, dispatch.Accepted)

	e.redis.Stop()
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/rides", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.tok(t, "u2", dispatch.RoleRider))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("request with Redis down: %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"))
	}
	// A trip step fails cleanly too, and changes nothing once Redis is back.
	if code, _, _ := e.do(t, "POST", "/v1/rides/"+string(a.ID)+"/arrived", d1, ""); code != http.StatusServiceUnavailable {
		t.Fatalf("arrived with Redis down: %d", code)
	}
	e.redis.Restart()

	// Ride B: retried as a client would until Redis answers again.
	var b dispatch.RideView
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, b, raw = e.do(t, "POST", "/v1/rides", e.tok(t, "u2", dispatch.RoleRider), body, "Idempotency-Key", "b")
		if code == http.StatusCreated || code == http.StatusOK {
			break
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("ride B after the restart: %d %s", code, raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// d1 holds ride A's trip lock, so B goes to d2.
	if m := nextFrame(t, ctx, conns["d2"], "offer"); m["ride"] != string(b.ID) {
		t.Fatalf("offer to d2: %v", m)
	}
	d2 := e.tok(t, "d2", dispatch.RoleDriver)
	if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(b.ID)+"/accept", d2, ""); code != http.StatusAccepted {
		t.Fatalf("accept B: %d %s", code, raw)
	}
	if got := e.waitState(t, b.ID, dispatch.Accepted); got.Driver != "d2" {
		t.Fatalf("ride B %+v", got)
	}
	if got, _ := e.store.Get(ctx, a.ID); got.State != dispatch.Accepted || got.Driver != "d1" {
		t.Fatalf("ride A after the outage %+v", got)
	}
	for _, step := range []string{"arrived", "start", "complete"} {
		for _, r := range []struct {
			id  dispatch.RideID
			tok string
		}{{a.ID, d1}, {b.ID, d2}} {
			if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(r.id)+"/"+step, r.tok, ""); code != http.StatusOK {
				t.Fatalf("%s %s: %d %s", r.id, step, code, raw)
			}
		}
	}
	e.waitState(t, a.ID, dispatch.Completed)
	e.waitState(t, b.ID, dispatch.Completed)
}
