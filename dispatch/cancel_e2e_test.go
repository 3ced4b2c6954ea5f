package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// dialWS opens the WebSocket at path on e with token, closed when the test
// ends.
func (e *engine) dialWS(t *testing.T, ctx context.Context, path, token string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+path,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// dialDriver opens driver id's WebSocket.
func (e *engine) dialDriver(t *testing.T, ctx context.Context, id string) *websocket.Conn {
	t.Helper()
	return e.dialWS(t, ctx, "/v1/drivers/ws", e.tok(t, id, dispatch.RoleDriver))
}

// wsFrames dials path on e with token and returns its frames; the channel
// closes when the connection ends.
func (e *engine) wsFrames(t *testing.T, ctx context.Context, path, token string) (*websocket.Conn, <-chan map[string]any) {
	t.Helper()
	c := e.dialWS(t, ctx, path, token)
	ch := make(chan map[string]any, 64)
	go func() {
		defer close(ch)
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			select {
			case ch <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return c, ch
}

// awaitFrame reads frames until one satisfies ok; an error frame fails
// the test.
func awaitFrame(t *testing.T, frames <-chan map[string]any, what string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	for f := range frames {
		if ok(f) {
			return f
		}
		if f["type"] == "error" {
			t.Fatalf("waiting for %s: error frame %v", what, f)
		}
	}
	t.Fatalf("connection closed before %s", what)
	return nil
}

// sendFrame writes m as JSON on c.
func sendFrame(t *testing.T, ctx context.Context, c *websocket.Conn, m map[string]any) {
	t.Helper()
	b, _ := json.Marshal(m)
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
}

// apiError decodes an error body.
func apiError(t *testing.T, raw string) dispatch.APIError {
	t.Helper()
	var body struct{ Error dispatch.APIError }
	if err := json.Unmarshal([]byte(raw), &body); err != nil || body.Error.Code == "" {
		t.Fatalf("not a JSON error body: %q (%v)", raw, err)
	}
	return body.Error
}

// TestCancelInEveryState takes a ride through the real API to each state
// and cancels it there as the rider (DELETE) and as the driver (POST
// .../cancel): legal cancels end the ride, the rider's WebSocket shows the
// end and closes, and the driver is free for the next ride; illegal ones
// are 409 illegal_transition and change nothing.
func TestCancelInEveryState(t *testing.T) {
	e := newEngine(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := []struct {
		at        dispatch.State
		byDriver  bool
		wantCode  int
		wantState dispatch.State // after the cancel
	}{
		{dispatch.Requested, false, 200, dispatch.CancelledByRider},
		{dispatch.Searching, false, 200, dispatch.CancelledByRider},
		{dispatch.Offered, false, 200, dispatch.CancelledByRider},
		{dispatch.Offered, true, 409, dispatch.Offered}, // a driver declines an offer, it does not cancel it
		{dispatch.Accepted, false, 200, dispatch.CancelledByRider},
		{dispatch.Accepted, true, 200, dispatch.CancelledByDriver},
		{dispatch.Arrived, false, 200, dispatch.CancelledByRider},
		{dispatch.Arrived, true, 200, dispatch.CancelledByDriver},
		{dispatch.InTrip, false, 409, dispatch.InTrip},
		{dispatch.InTrip, true, 409, dispatch.InTrip},
		{dispatch.Completed, false, 409, dispatch.Completed},
		{dispatch.Completed, true, 409, dispatch.Completed},
		{dispatch.CancelledByRider, false, 409, dispatch.CancelledByRider}, // twice
		{dispatch.CancelledByDriver, true, 409, dispatch.CancelledByDriver},
	}
	for i, tt := range tests {
		who := "rider"
		if tt.byDriver {
			who = "driver"
		}
		t.Run(tt.at.String()+"/"+who, func(t *testing.T) {
			// Each case has its own place, 0.5° of longitude (about 40 km)
			// from the others, its own driver and riders.
			place := geo.LatLng{Lat: 40.7580, Lng: -73.9855 + 0.5*float64(i)}
			body := fmt.Sprintf(`{"pickup":{"lat":%f,"lng":%f},"dropoff":{"lat":%f,"lng":%f}}`, place.Lat, place.Lng, place.Lat-0.05, place.Lng)
			driverID := fmt.Sprintf("cd%d", i)
			rider := e.tok(t, fmt.Sprintf("cu%d", i), dispatch.RoleRider)
			driver := e.tok(t, driverID, dispatch.RoleDriver)
			var (
				conn   *websocket.Conn
				offers <-chan map[string]any
			)
			online := func(seq int) {
				sendFrame(t, ctx, conn, map[string]any{"type": "position", "lat": place.Lat + 300/111195.0, "lng": place.Lng, "status": "available", "seq": seq})
			}
			withDriver := tt.at != dispatch.Requested && tt.at != dispatch.Searching
			if withDriver {
				conn, offers = e.wsFrames(t, ctx, "/v1/drivers/ws", driver)
				online(1)
			}

			// Take the ride to tt.at.
			var id dispatch.RideID
			if tt.at == dispatch.Requested {
				// The search starts with the request; a ride that is
				// still requested is made in the store.
				id = dispatch.RideID(fmt.Sprintf("requested-%d", i))
				r, _ := dispatch.NewRide(id, dispatch.RiderID(fmt.Sprintf("cu%d", i)), place, dropoff, time.Now())
				if _, _, err := e.store.Create(ctx, r); err != nil {
					t.Fatal(err)
				}
			} else {
				code, v, raw := e.do(t, "POST", "/v1/rides", rider, body)
				if code != http.StatusCreated {
					t.Fatalf("request: %d %s", code, raw)
				}
				id = v.ID
			}
			path := "/v1/rides/" + string(id)
			_, watch := e.wsFrames(t, ctx, path+"/ws", rider)
			if withDriver {
				awaitFrame(t, offers, "the offer", func(m map[string]any) bool { return m["type"] == "offer" && m["ride"] == string(id) })
			}
			if tt.at == dispatch.Searching {
				e.waitState(t, id, dispatch.Searching)
			}
			// The harness wires no WebSocket actions: the driver answers
			// over HTTP.
			step := func(action string, want dispatch.State) {
				t.Helper()
				if code, _, raw := e.do(t, "POST", path+"/"+action, driver, ""); code/100 != 2 {
					t.Fatalf("%s: %d %s", action, code, raw)
				}
				e.waitState(t, id, want)
			}
			switch tt.at {
			case dispatch.Accepted, dispatch.Arrived, dispatch.InTrip, dispatch.Completed, dispatch.CancelledByRider, dispatch.CancelledByDriver:
				step("accept", dispatch.Accepted)
			}
			switch tt.at {
			case dispatch.Arrived, dispatch.InTrip, dispatch.Completed:
				step("arrived", dispatch.Arrived)
			}
			switch tt.at {
			case dispatch.InTrip, dispatch.Completed:
				step("start", dispatch.InTrip)
			}
			switch tt.at {
			case dispatch.Completed:
				step("complete", dispatch.Completed)
			case dispatch.CancelledByRider:
				if code, _, raw := e.do(t, "DELETE", path, rider, ""); code != 200 {
					t.Fatalf("first cancel: %d %s", code, raw)
				}
			case dispatch.CancelledByDriver:
				step("cancel", dispatch.CancelledByDriver)
			}
			before, err := e.store.Get(ctx, id)
			if err != nil || before.State != tt.at {
				t.Fatalf("set-up reached %s (%v), want %s", before.State, err, tt.at)
			}

			// Cancel.
			var (
				code int
				v    dispatch.RideView
				raw  string
			)
			if tt.byDriver {
				code, v, raw = e.do(t, "POST", path+"/cancel", driver, "")
			} else {
				code, v, raw = e.do(t, "DELETE", path, rider, "")
			}
			if code != tt.wantCode {
				t.Fatalf("cancel: %d %s, want %d", code, raw, tt.wantCode)
			}
			if code != http.StatusOK {
				if ae := apiError(t, raw); ae.Code != "illegal_transition" || !strings.Contains(ae.Message, tt.at.String()) {
					t.Errorf("refused cancel answered %+v", ae)
				}
				if after, _ := e.store.Get(ctx, id); after.State != tt.wantState || after.Version != before.Version {
					t.Errorf("a refused cancel changed the ride: %s v%d -> %s v%d", before.State, before.Version, after.State, after.Version)
				}
				return
			}
			if v.State != tt.wantState || v.ID != id {
				t.Fatalf("cancel answered %s", raw)
			}
			// The rider's WebSocket shows the end, then closes.
			awaitFrame(t, watch, tt.wantState.String(), func(m map[string]any) bool { return m["type"] == "ride" && m["state"] == tt.wantState.String() })
			for range watch {
			}
			if !withDriver {
				return
			}
			if tt.at == dispatch.Offered {
				awaitFrame(t, offers, "offer_cancelled", func(m map[string]any) bool { return m["type"] == "offer_cancelled" && m["ride"] == string(id) })
			}
			if tt.wantState == dispatch.CancelledByRider && tt.at > dispatch.Offered {
				// The driver had accepted: its app is told the trip is off.
				awaitFrame(t, offers, "ride_cancelled", func(m map[string]any) bool { return m["type"] == "ride_cancelled" && m["ride"] == string(id) })
			}
			// The driver is free: the next ride nearby is offered to it.
			online(2)
			code, next, raw := e.do(t, "POST", "/v1/rides", e.tok(t, fmt.Sprintf("cu%d-next", i), dispatch.RoleRider), body)
			if code != http.StatusCreated {
				t.Fatalf("next request: %d %s", code, raw)
			}
			awaitFrame(t, offers, "the next offer", func(m map[string]any) bool { return m["type"] == "offer" && m["ride"] == string(next.ID) })
		})
	}
}
