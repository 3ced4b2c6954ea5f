package dispatch_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// fanOutCity puts n drivers online over WebSocket, 200 m apart going north
// from pickup, and waits until the worker indexed them all.
func fanOutCity(t *testing.T, e *engine, ctx context.Context, pickup geo.LatLng, ids ...string) map[string]*websocket.Conn {
	t.Helper()
	conns := map[string]*websocket.Conn{}
	for i, id := range ids {
		c := e.dialDriver(t, ctx, id)
		sendFrame(t, ctx, c, map[string]any{"type": "position", "lat": pickup.Lat + float64(i+1)*200/111195.0, "lng": pickup.Lng,
			"status": "available", "seq": 1})
		conns[id] = c
	}
	for {
		n := 0
		for _, p := range e.worker.Partitions() {
			n += p.Drivers
		}
		if n == len(ids) {
			return conns
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d drivers indexed", n, len(ids))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// nextFrame reads c until a frame of one of the types arrives.
func nextFrame(t *testing.T, ctx context.Context, c *websocket.Conn, types ...string) map[string]any {
	t.Helper()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %v: %v", types, err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		for _, ty := range types {
			if m["type"] == ty {
				return m
			}
		}
	}
}

// TestFanOutFirstAcceptWins: with FanOut 3 the three nearest drivers get
// the offer at once; the third accepts first and takes the ride, the other
// two get offer_cancelled and can no longer answer, and the winner runs the
// trip.
func TestFanOutFirstAcceptWins(t *testing.T) {
	e := newEngine(t, 10*time.Second, func(c *dispatch.DispatcherConfig) { c.FanOut = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	conns := fanOutCity(t, e, ctx, pickup, "a", "b", "c")

	code, ride, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u1", dispatch.RoleRider),
		`{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("request: %d %s", code, raw)
	}
	for _, id := range []string{"a", "b", "c"} {
		if m := nextFrame(t, ctx, conns[id], "offer"); m["ride"] != string(ride.ID) {
			t.Fatalf("offer to %s: %v", id, m)
		}
	}
	if got := e.waitState(t, ride.ID, dispatch.Offered); got.Driver != "a" {
		t.Fatalf("the ride records the nearest driver as offered, got %+v", got)
	}
	cTok := e.tok(t, "c", dispatch.RoleDriver)
	if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/accept", cTok, ""); code != http.StatusAccepted {
		t.Fatalf("accept by c: %d %s", code, raw)
	}
	got := e.waitState(t, ride.ID, dispatch.Accepted)
	if got.Driver != "c" || got.Offers != 1 {
		t.Fatalf("accepted ride %+v, want c's after one round", got)
	}
	for _, id := range []string{"a", "b"} {
		if m := nextFrame(t, ctx, conns[id], "offer_cancelled", "offer_expired"); m["type"] != "offer_cancelled" || m["ride"] != string(ride.ID) {
			t.Fatalf("%s after c won: %v", id, m)
		}
		if code, _, _ := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/accept", e.tok(t, id, dispatch.RoleDriver), ""); code != http.StatusNotFound && code != http.StatusConflict {
			t.Fatalf("late accept by %s: %d", id, code)
		}
	}
	for _, step := range []string{"arrived", "start", "complete"} {
		if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/"+step, cTok, ""); code != http.StatusOK {
			t.Fatalf("%s: %d %s", step, code, raw)
		}
	}
	// The losers were released: a new ride nearby is offered to them.
	code, ride2, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u2", dispatch.RoleRider),
		`{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("second request: %d %s", code, raw)
	}
	if m := nextFrame(t, ctx, conns["a"], "offer"); m["ride"] != string(ride2.ID) {
		t.Fatalf("a after release: %v", m)
	}
}

// TestFanOutAllDecline: the round ends when every driver declined; with
// one round allowed the ride ends as no_driver.
func TestFanOutAllDecline(t *testing.T) {
	e := newEngine(t, 10*time.Second, func(c *dispatch.DispatcherConfig) { c.FanOut, c.MaxOffers = 2, 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	conns := fanOutCity(t, e, ctx, pickup, "a", "b")
	code, ride, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u1", dispatch.RoleRider),
		`{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("request: %d %s", code, raw)
	}
	for _, id := range []string{"b", "a"} {
		nextFrame(t, ctx, conns[id], "offer")
		if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/decline", e.tok(t, id, dispatch.RoleDriver), ""); code != http.StatusAccepted {
			t.Fatalf("decline by %s: %d %s", id, code, raw)
		}
	}
	if got := e.waitState(t, ride.ID, dispatch.NoDriver); got.Declines != 1 {
		t.Fatalf("ride %+v", got)
	}
}
