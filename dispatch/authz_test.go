package dispatch_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/positions"
)

// TestAuthorizationMatrix calls every ride and driver endpoint as every
// kind of caller, against someone else's resources as well as the
// caller's own, and checks the status. Rides are set up directly in the
// store so each call meets the state it needs.
func TestAuthorizationMatrix(t *testing.T) {
	e := newEngine(t, 5e9)
	ctx := context.Background()
	// r-offered: rider u1, offered to d1 (a state any answer would change,
	// so answers are expected to be refused before they are applied).
	// r-accepted: rider u1, assigned to d1.
	mk := func(id dispatch.RideID, evs ...dispatch.Event) {
		r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, t0)
		if _, _, err := e.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if _, err := e.store.Apply(ctx, id, ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("r-offered", dispatch.Event{Kind: dispatch.EvSearch}, dispatch.Event{Kind: dispatch.EvOffer, Driver: "d1"})
	mk("r-accepted", dispatch.Event{Kind: dispatch.EvSearch}, dispatch.Event{Kind: dispatch.EvOffer, Driver: "d1"},
		dispatch.Event{Kind: dispatch.EvAccept, Driver: "d1"})

	callers := map[string]string{
		"none":        "",
		"forged":      "eyJzdWIiOiJ1MSIsInJvbGUiOiJvcHMiLCJleHAiOjk5OTk5OTk5OTl9.AAAA",
		"rider-owner": e.tok(t, "u1", dispatch.RoleRider),
		"rider-other": e.tok(t, "u2", dispatch.RoleRider),
		"driver-own":  e.tok(t, "d1", dispatch.RoleDriver),
		"driver-oth":  e.tok(t, "d2", dispatch.RoleDriver),
		"ops":         e.tok(t, "o1", dispatch.RoleOps),
	}
	pos := `{"lat":40.7,"lng":-73.9,"status":"available","seq":1}`
	ride := `{"pickup":{"lat":40.7,"lng":-73.9},"dropoff":{"lat":40.71,"lng":-73.91}}`
	tests := []struct {
		method, path, body string
		want               map[string]int // caller -> status; absent callers: 401 for none/forged, 403 otherwise
	}{
		{"POST", "/v1/drivers/d1/location", pos, map[string]int{"driver-own": 202}},
		{"POST", "/v1/drivers/d1/offline", `{"seq":2,"lat":40.7,"lng":-73.9}`, map[string]int{"driver-own": 202}},
		{"POST", "/v1/rides", ride, map[string]int{"rider-owner": 201, "rider-other": 201}},
		{"GET", "/v1/rides/r-accepted", "", map[string]int{"rider-owner": 200, "rider-other": 404, "driver-own": 200, "driver-oth": 404, "ops": 200}},
		// Answers: only the offered driver gets past the checks (409: no
		// search of this process waits for it, since the ride was made by
		// hand).
		{"POST", "/v1/rides/r-offered/accept", "", map[string]int{"driver-own": 409, "driver-oth": 404}},
		{"POST", "/v1/rides/r-offered/decline", "", map[string]int{"driver-own": 409, "driver-oth": 404}},
		{"POST", "/v1/rides/r-accepted/start", "", map[string]int{"driver-own": 409, "driver-oth": 404}},
		{"POST", "/v1/rides/r-accepted/arrived", "", map[string]int{"driver-own": 200, "driver-oth": 404}},
		{"DELETE", "/v1/rides/r-offered", "", map[string]int{"rider-owner": 200, "rider-other": 404}},
	}
	for _, tt := range tests {
		for _, who := range []string{"none", "forged", "rider-other", "driver-oth", "ops", "driver-own", "rider-owner"} {
			want, ok := tt.want[who]
			if !ok {
				want = http.StatusForbidden
				if who == "none" || who == "forged" {
					want = http.StatusUnauthorized
				}
			}
			code, _, raw := e.do(t, tt.method, tt.path, callers[who], tt.body, "Content-Type", "application/json")
			if code != want {
				t.Errorf("%s %s as %s: %d %s, want %d", tt.method, tt.path, who, code, raw, want)
			}
		}
	}
	// The rides made above by the two riders belong to them alone.
	if got, _ := e.store.Get(ctx, "r-accepted"); got.State != dispatch.Arrived || got.Driver != positions.DriverID("d1") {
		t.Fatalf("r-accepted = %+v", got)
	}
}
