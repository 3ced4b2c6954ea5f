package dispatch_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// TestOpenAPIListsEveryRoute keeps the document and the routes in step:
// every route the API registers is a path of the document.
func TestOpenAPIListsEveryRoute(t *testing.T) {
	w := httptest.NewRecorder()
	dispatch.OpenAPIHandler().ServeHTTP(w, httptest.NewRequest("GET", "/openapi.json", nil))
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("document: %v %q", err, doc.OpenAPI)
	}
	// Register the real handlers on a recording mux.
	rec := &recordingMux{}
	signer := newSigner(t)
	dc := dispatch.DefaultDriversConfig()
	dc.Sink, dc.Signer = nopSink{}, signer
	drivers, err := dispatch.NewDrivers(dc)
	if err != nil {
		t.Fatal(err)
	}
	drivers.Routes(rec)
	rides, err := dispatch.NewRides(dispatch.RidesConfig{Store: &dispatch.RideStore{}, Dispatcher: &dispatch.Dispatcher{},
		Leases: nopLeases{}, Signer: signer, Now: time.Now, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	rides.Routes(rec)
	routes := append(rec.patterns, dispatch.OpsRoutes...)
	if len(routes) < 15 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("%s is not in openapi.json", r)
		}
	}
}

type recordingMux struct{ patterns []string }

func (m *recordingMux) Handle(p string, _ http.Handler) { m.patterns = append(m.patterns, p) }

type nopSink struct{}

func (nopSink) Publish(positions.Event) error                       { return nil }
func (nopSink) Remove(positions.DriverID, uint64, geo.LatLng) error { return nil }

type nopLeases struct{}

func (nopLeases) Commit(context.Context, positions.DriverID, matcher.RideID, matcher.Token) error {
	return nil
}
func (nopLeases) Release(context.Context, positions.DriverID, matcher.RideID, matcher.Token) error {
	return nil
}
