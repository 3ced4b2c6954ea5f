package dispatch

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
)

// FuzzRideRequestBody throws arbitrary bodies at the ride request decoder:
// either both points come back valid, or an APIError with a 4xx status
// that names the field or the body, never a panic.
func FuzzRideRequestBody(f *testing.F) {
	for _, s := range []string{
		`{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`,
		`{"pickup":{"lat":91,"lng":0},"dropoff":{"lat":0,"lng":0}}`,
		`{"pickup":{"lat":"x","lng":0}}`, `{"dropoff":null}`, `{"pickup":{}}`, `[]`, ``, `{"pickup":{"lat":1e999,"lng":0}}`,
		`{"pickup":{"lat":1,"lng":1},"dropoff":{"lat":1,"lng":1},"extra":true}`,
		strings.Repeat(`{"a":`, 3000),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("POST", "/v1/rides", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		req, err := decodeRideRequest(httptest.NewRecorder(), r)
		if err == nil {
			if req.Pickup == nil || req.Dropoff == nil || req.Pickup.Validate() != nil || req.Dropoff.Validate() != nil {
				t.Fatalf("accepted %q as %+v", body, req)
			}
			return
		}
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status < 400 || ae.Status >= 500 || ae.Message == "" {
			t.Fatalf("body %q: error %v is not a 4xx APIError with a message", body, err)
		}
	})
}

// FuzzPolicyBody throws arbitrary bodies at PUT /v1/ops/policy: 200 with
// the policies, or a 4xx JSON error, never a 5xx or a panic.
func FuzzPolicyBody(f *testing.F) {
	for _, s := range []string{
		`{"policy":"batched"}`, `{"policy":"greedy","region":"852a1073fffffff"}`, `{"policy":"x"}`,
		`{"region":"nothex","policy":"greedy"}`, `{"region":"8a2a1072b59ffff","policy":"batched"}`, `{}`, `nul`, ``,
	} {
		f.Add(s)
	}
	s, err := NewSigner([]byte("fuzz-policy-secret-0123456789"))
	if err != nil {
		f.Fatal(err)
	}
	tok, err := s.Mint(Claims{Subject: "ops", Role: RoleOps, Expires: farFuture})
	if err != nil {
		f.Fatal(err)
	}
	h := OpsHandler(OpsConfig{Signer: s, Policy: &fakePolicy{}})
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest("PUT", "/v1/ops/policy", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+tok)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK && (w.Code < 400 || w.Code >= 500 || !strings.Contains(w.Body.String(), `"error"`)) {
			t.Fatalf("body %q: %d %s", body, w.Code, w.Body.String())
		}
	})
}

var farFuture = time.Now().Add(24 * time.Hour)

// fakePolicy checks like matcher.Switch: a known policy, a shard cell.
type fakePolicy struct {
	def     matcher.Policy
	regions map[geo.Cell]matcher.Policy
}

func (p *fakePolicy) Policies() (matcher.Policy, map[geo.Cell]matcher.Policy) {
	return p.def, maps.Clone(p.regions)
}

func (p *fakePolicy) SetDefault(v matcher.Policy) error {
	if !v.Valid() {
		return fmt.Errorf("unknown policy %q", v)
	}
	p.def = v
	return nil
}

func (p *fakePolicy) SetRegion(c geo.Cell, v matcher.Policy) error {
	if c.Resolution() != geo.DefaultShardRes {
		return fmt.Errorf("region %s: want a res-%d shard cell", c, geo.DefaultShardRes)
	}
	if !v.Valid() {
		return fmt.Errorf("unknown policy %q", v)
	}
	if p.regions == nil {
		p.regions = map[geo.Cell]matcher.Policy{}
	}
	p.regions[c] = v
	return nil
}
