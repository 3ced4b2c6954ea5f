package dispatch_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// countingSink takes positions without a broker: the benchmark below
// measures the gateway's HTTP handling, not the Kafka client.
type countingSink struct{ n int }

func (s *countingSink) Publish(positions.Event) error { s.n++; return nil }
func (s *countingSink) Remove(positions.DriverID, uint64, geo.LatLng) error {
	return nil
}

// BenchmarkDriverLocationHandler is one POST /v1/drivers/{id}/location
// through the routes (auth, body decoding, validation, the 202 answer),
// without the network: the gateway's own CPU and allocations per
// position, the bulk of a busy engine's requests.
func BenchmarkDriverLocationHandler(b *testing.B) {
	signer, err := dispatch.NewSigner([]byte("bench-secret-0123456789abcdef0123"))
	if err != nil {
		b.Fatal(err)
	}
	sink := &countingSink{}
	cfg := dispatch.DefaultDriversConfig()
	cfg.Sink, cfg.Signer = sink, signer
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dispatch.NewDrivers(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	mux := http.NewServeMux()
	d.Routes(mux)
	tok, err := signer.Mint(dispatch.Claims{Subject: "d42", Role: dispatch.RoleDriver, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"lat":37.7749,"lng":-122.4194,"heading":90,"speed":8.5,"status":"available","seq":1}`)
	rd := bytes.NewReader(body)
	req := httptest.NewRequest("POST", "/v1/drivers/d42/location", rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	if sink.n == 0 {
		b.Fatal("no position reached the sink")
	}
}
