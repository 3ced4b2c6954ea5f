package dispatch_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// TestAPIErrorsNameTheProblem sends the real API what clients get wrong
// (tokens, roles, other people's rides, bodies, coordinates) and checks
// that each answer is a 4xx JSON error whose code, field and message say
// what was wrong. TestAuthorizationMatrix covers the status of every
// endpoint for every caller; this covers what the answers say.
func TestAPIErrorsNameTheProblem(t *testing.T) {
	e := newEngine(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rider := e.tok(t, "u1", dispatch.RoleRider)
	expired, err := e.signer.Mint(dispatch.Claims{Subject: "u1", Role: dispatch.RoleRider, Expires: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	otherSigner, err := dispatch.NewSigner([]byte("not-the-engine-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := otherSigner.Mint(dispatch.Claims{Subject: "u1", Role: dispatch.RoleRider, Expires: time.Now().Add(time.Hour)})

	// A ride of u1's, searching in a place with no drivers.
	ok := `{"pickup":{"lat":-33.8688,"lng":151.2093},"dropoff":{"lat":-33.8,"lng":151.2}}`
	code, ride, raw := e.do(t, "POST", "/v1/rides", rider, ok, "Idempotency-Key", "errs-1")
	if code != http.StatusCreated {
		t.Fatalf("%d %s", code, raw)
	}
	path := "/v1/rides/" + string(ride.ID)

	tests := []struct {
		name, method, path, token, body string
		hdr                             []string
		status                          int
		code, field, says               string // says: a substring of the message
	}{
		{name: "no token", method: "POST", path: "/v1/rides", body: ok, status: 401, code: "unauthenticated", says: "bearer token"},
		{name: "basic auth", method: "POST", path: "/v1/rides", token: "x", body: ok, hdr: []string{"Authorization", "Basic dTE6cHc="},
			status: 401, code: "unauthenticated", says: "bearer token"},
		{name: "expired token", method: "POST", path: "/v1/rides", token: expired, body: ok, status: 401, code: "invalid_token", says: "expired"},
		{name: "another secret's token", method: "POST", path: "/v1/rides", token: foreign, body: ok, status: 401, code: "invalid_token", says: "signature"},
		{name: "garbage token", method: "POST", path: "/v1/rides", token: "garbage", body: ok, status: 401, code: "invalid_token", says: "malformed"},
		{name: "driver requests a ride", method: "POST", path: "/v1/rides", token: e.tok(t, "d1", dispatch.RoleDriver), body: ok,
			status: 403, code: "forbidden", says: "driver"},
		{name: "rider steps a trip", method: "POST", path: path + "/arrived", token: rider, status: 403, code: "forbidden", says: "rider"},
		{name: "rider posts a driver's position", method: "POST", path: "/v1/drivers/d1/location", token: rider,
			body: `{"lat":1,"lng":1,"status":"available","seq":1}`, status: 403, code: "forbidden", says: "rider"},
		{name: "another rider's ride", method: "GET", path: path, token: e.tok(t, "u2", dispatch.RoleRider), status: 404, code: "not_found"},
		{name: "another rider cancels", method: "DELETE", path: path, token: e.tok(t, "u2", dispatch.RoleRider), status: 404, code: "not_found"},
		{name: "a driver not on the ride", method: "POST", path: path + "/cancel", token: e.tok(t, "d1", dispatch.RoleDriver), status: 404, code: "not_found"},
		{name: "no such ride", method: "GET", path: "/v1/rides/rnope", token: rider, status: 404, code: "not_found"},
		{name: "ride id too long", method: "GET", path: "/v1/rides/" + strings.Repeat("r", 65), token: rider, status: 400, code: "invalid_field", field: "id"},
		{name: "truncated JSON", method: "POST", path: "/v1/rides", token: rider, body: `{"pickup":{"lat":1`, status: 400, code: "invalid_json", says: "ends in the middle"},
		{name: "malformed JSON", method: "POST", path: "/v1/rides", token: rider, body: `{"pickup" {}}`, status: 400, code: "invalid_json", says: "malformed"},
		{name: "empty body", method: "POST", path: "/v1/rides", token: rider, status: 400, code: "invalid_json", says: "empty"},
		{name: "not JSON", method: "POST", path: "/v1/rides", token: rider, body: ok, hdr: []string{"Content-Type", "text/plain"},
			status: 415, code: "unsupported_media_type", says: "application/json"},
		{name: "unknown field", method: "POST", path: "/v1/rides", token: rider,
			body: `{"pickup":{"lat":1,"lng":1},"dropoff":{"lat":1,"lng":1},"tip":5}`, status: 400, code: "invalid_field", field: "tip"},
		{name: "pickup latitude below -90", method: "POST", path: "/v1/rides", token: rider,
			body: `{"pickup":{"lat":-90.5,"lng":1},"dropoff":{"lat":1,"lng":1}}`, status: 400, code: "invalid_field", field: "pickup", says: "lat"},
		{name: "dropoff longitude above 180", method: "POST", path: "/v1/rides", token: rider,
			body: `{"pickup":{"lat":1,"lng":1},"dropoff":{"lat":1,"lng":181}}`, status: 400, code: "invalid_field", field: "dropoff", says: "lng"},
		{name: "a number too large for a float", method: "POST", path: "/v1/rides", token: rider,
			body: `{"pickup":{"lat":1e999,"lng":1},"dropoff":{"lat":1,"lng":1}}`, status: 400, code: "invalid_field", field: "pickup.lat"},
		{name: "idempotency key too long", method: "POST", path: "/v1/rides", token: rider, body: ok,
			hdr: []string{"Idempotency-Key", strings.Repeat("k", 129)}, status: 400, code: "invalid_field", field: "Idempotency-Key"},
		{name: "idempotency key reused for another ride", method: "POST", path: "/v1/rides", token: rider,
			body: `{"pickup":{"lat":-33.8688,"lng":151.2093},"dropoff":{"lat":-33.9,"lng":151.2}}`, hdr: []string{"Idempotency-Key", "errs-1"},
			status: 422, code: "idempotency_mismatch"},
		{name: "offline at an impossible place", method: "POST", path: "/v1/drivers/d1/offline", token: e.tok(t, "d1", dispatch.RoleDriver),
			body: `{"seq":2,"lat":100,"lng":1}`, status: 400, code: "invalid_field", field: "lat"},
		{name: "position with NaN-like garbage", method: "POST", path: "/v1/drivers/d1/location", token: e.tok(t, "d1", dispatch.RoleDriver),
			body: `{"lat":"NaN","lng":1,"status":"available","seq":1}`, status: 400, code: "invalid_field", field: "lat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := append([]string{"Content-Type", "application/json"}, tt.hdr...)
			code, _, raw := e.do(t, tt.method, tt.path, tt.token, tt.body, hdr...)
			if code != tt.status {
				t.Fatalf("%d %s, want %d", code, raw, tt.status)
			}
			ae := apiError(t, raw)
			if ae.Code != tt.code || ae.Field != tt.field || !strings.Contains(ae.Message, tt.says) {
				t.Fatalf("error %+v, want code %q field %q saying %q", ae, tt.code, tt.field, tt.says)
			}
		})
	}
	if got, _ := e.store.Get(ctx, ride.ID); got.State.Terminal() {
		t.Fatalf("the ride ended: %s", got.State)
	}

	// The rider's WebSocket: only the ride's rider (or ops) may watch, and
	// a refusal is a JSON error before the upgrade.
	base := "ws" + strings.TrimPrefix(e.srv.URL, "http")
	for _, tt := range []struct {
		name, path, token string
		status            int
	}{
		{"no token", path + "/ws", "", 401},
		{"expired token", path + "/ws", expired, 401},
		{"another rider", path + "/ws", e.tok(t, "u2", dispatch.RoleRider), 404},
		{"a driver", path + "/ws", e.tok(t, "d1", dispatch.RoleDriver), 404},
		{"no such ride", "/v1/rides/rnope/ws", rider, 404},
	} {
		_, resp, err := websocket.Dial(ctx, base+tt.path+"?access_token="+tt.token, nil)
		if err == nil || resp == nil || resp.StatusCode != tt.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Errorf("watch as %s: %d %v, want %d with a JSON error", tt.name, status, err, tt.status)
		}
	}
	if _, resp, err := websocket.Dial(ctx, base+"/v1/drivers/ws?access_token="+e.tok(t, "d1", dispatch.RoleDriver)[:20], nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("driver WebSocket with a truncated token: %v", err)
	}
}
