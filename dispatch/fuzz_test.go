package dispatch_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// checkSink accepts what the gateway publishes only if it is a valid event
// that survives the wire encoding.
type checkSink struct{ t *testing.T }

func (s checkSink) Publish(ev positions.Event) error {
	if err := ev.Validate(); err != nil {
		s.t.Fatalf("gateway published an invalid event %+v: %v", ev, err)
	}
	back, err := positions.DecodeEvent(positions.AppendEvent(nil, ev))
	if err != nil || back.Driver != ev.Driver || back.Seq != ev.Seq {
		s.t.Fatalf("event %+v does not survive encoding: %+v %v", ev, back, err)
	}
	return nil
}

func (checkSink) Remove(positions.DriverID, uint64, geo.LatLng) error { return nil }

// FuzzDriverLocation throws arbitrary bodies at the position endpoint: the
// answer is 202 or a 4xx with a JSON error, never a 5xx or a panic, and
// whatever is accepted is a valid event.
func FuzzDriverLocation(f *testing.F) {
	for _, s := range []string{
		`{"lat":40.7,"lng":-73.9,"status":"available","seq":1}`,
		`{"lat":40.7,"lng":-73.9,"status":"on_trip","seq":18446744073709551615,"heading":359.9,"speed":655,"ts":"2026-11-23T18:00:00Z"}`,
		`{"lat":1e999,"lng":0,"status":"available","seq":1}`,
		`{"lat":null,"lng":0}`, `[]`, `{"status":"x"}`, `{"ts":"yesterday"}`, ``,
	} {
		f.Add(s)
	}
	signer := newSigner(f)
	tok, _ := signer.Mint(dispatch.Claims{Subject: "d1", Role: dispatch.RoleDriver, Expires: time.Now().Add(time.Hour)})
	f.Fuzz(func(t *testing.T, body string) {
		cfg := dispatch.DefaultDriversConfig()
		cfg.Sink, cfg.Signer = checkSink{t}, signer
		d, err := dispatch.NewDrivers(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		d.Routes(mux)
		req := httptest.NewRequest("POST", "/v1/drivers/d1/location", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		switch {
		case w.Code == http.StatusAccepted:
		case w.Code >= 400 && w.Code < 500:
			if !strings.Contains(w.Body.String(), `"error"`) {
				t.Fatalf("%d without a JSON error: %q", w.Code, w.Body)
			}
		default:
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body)
		}
	})
}
