package dispatch

import (
	"context"
	"embed"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// SupplySource answers per-cell driver counts summed over every shard. The
// engine's implementation scatter-gathers the shard owners; partitions it
// could not reach come back in missed, and the heatmap says it is partial.
type SupplySource interface {
	CellCounts(ctx context.Context, res int, f positions.Filter) (counts map[geo.Cell]int, missed []positions.Partition, err error)
}

// HeatmapCell is one hexagon of a heatmap.
type HeatmapCell struct {
	Cell     string       `json:"cell"`
	Value    float64      `json:"value"`
	Boundary [][2]float64 `json:"boundary"` // [lat, lng] corners
}

// Heatmap is the body of GET /v1/ops/heatmap.
type Heatmap struct {
	Layer       string                `json:"layer"`
	Res         int                   `json:"res"`
	Cells       []HeatmapCell         `json:"cells"`
	Partial     bool                  `json:"partial"`
	Missed      []positions.Partition `json:"missed,omitempty"`
	Truncated   bool                  `json:"truncated,omitempty"`
	GeneratedAt time.Time             `json:"generated_at"`
}

// Supply layers, answered by the shard owners.
var supplyLayers = map[string]positions.Filter{
	"supply":  positions.Available, // drivers free for a ride
	"drivers": positions.Filter{},  // every online driver
}

// LayerSurge is the surge multiplier layer (see Surge).
const LayerSurge = "surge"

// HeatmapLayers lists every layer of GET /v1/ops/heatmap.
var HeatmapLayers = []string{"supply", "drivers", LayerDemand, LayerMatched, LayerUnmatched, LayerETA, LayerSurge}

// MaxHeatmapCells bounds one heatmap answer; the busiest cells are kept.
const MaxHeatmapCells = 20000

// PolicyControl reads and changes the matching policy per region;
// *matcher.Switch implements it.
type PolicyControl interface {
	Policies() (matcher.Policy, map[geo.Cell]matcher.Policy)
	SetDefault(p matcher.Policy) error
	SetRegion(region geo.Cell, p matcher.Policy) error
}

// OpsConfig configures the ops endpoints.
type OpsConfig struct {
	Supply SupplySource
	// Outcomes, when set, serves the demand, matched, unmatched, eta and
	// surge layers; without it those layers answer 404.
	Outcomes *Outcomes
	// Metrics, when set, feeds the alert panels (/v1/ops/alerts) from this
	// process's Prometheus registry.
	Metrics prometheus.Gatherer
	// RemoteMetrics, when set, adds the metric families of other
	// processes (an api process reads its workers' lag and dead letters).
	RemoteMetrics func(context.Context) ([]*dto.MetricFamily, error)
	Alerts        AlertThresholds
	// Policy, when set, is served at /v1/ops/policy.
	Policy  PolicyControl
	Signer  *Signer
	Now     func() time.Time
	Timeout time.Duration // per heatmap request; default 2 s
	// StreamEvery is the heatmap stream's period; default 2 s.
	StreamEvery time.Duration
	// MaxStreams bounds concurrent heatmap streams; default 32.
	MaxStreams int
	// Closing ends the heatmap streams when the server shuts down.
	Closing context.Context
}

//go:embed web/ops.html
var opsFS embed.FS

// OpsRoutes are the patterns OpsHandler serves.
var OpsRoutes = []string{"GET /ops", "GET /v1/ops/heatmap", "GET /v1/ops/heatmap/stream", "GET /v1/ops/cells/{cell}",
	"GET /v1/ops/alerts", "GET /v1/ops/runtime", "GET /v1/ops/policy", "PUT /v1/ops/policy"}

// OpsHandler serves the read-only ops console at /ops and, for the ops
// role, the heatmap API (/v1/ops/heatmap, its stream and per-cell detail),
// the alert panels (/v1/ops/alerts), /v1/ops/runtime and the policy switch.
func OpsHandler(cfg OpsConfig) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.StreamEvery <= 0 {
		cfg.StreamEvery = 2 * time.Second
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 32
	}
	if cfg.Closing == nil {
		cfg.Closing = context.Background()
	}
	cfg.Alerts = cfg.Alerts.withDefaults()
	o := &opsServer{cfg: cfg, alerts: newAlertWindow(cfg.Metrics, cfg.RemoteMetrics, cfg.Alerts)}
	ops := func(f http.HandlerFunc) http.Handler { return cfg.Signer.RequireRole(cfg.Now, f, RoleOps) }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ops", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
		http.ServeFileFS(w, r, opsFS, "web/ops.html")
	})
	mux.Handle("GET /v1/ops/heatmap", ops(o.heatmap))
	mux.Handle("GET /v1/ops/heatmap/stream", ops(o.stream))
	mux.Handle("GET /v1/ops/cells/{cell}", ops(o.cellDetail))
	mux.Handle("GET /v1/ops/alerts", ops(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, o.alerts.read(r.Context(), cfg.Now()))
	}))
	mux.Handle("GET /v1/ops/runtime", ops(func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		writeJSON(w, http.StatusOK, map[string]any{
			"heap_alloc_bytes": ms.HeapAlloc, "sys_bytes": ms.Sys, "goroutines": runtime.NumGoroutine(),
		})
	}))
	mux.Handle("GET /v1/ops/policy", ops(func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Policy == nil {
			WriteError(w, &APIError{Status: http.StatusNotFound, Code: "not_found", Message: "no policy switch in this process"})
			return
		}
		writeJSON(w, http.StatusOK, policyView(cfg.Policy))
	}))
	mux.Handle("PUT /v1/ops/policy", ops(func(w http.ResponseWriter, r *http.Request) {
		if cfg.Policy == nil {
			WriteError(w, &APIError{Status: http.StatusNotFound, Code: "not_found", Message: "no policy switch in this process"})
			return
		}
		var req struct {
			Region string         `json:"region"`
			Policy matcher.Policy `json:"policy"`
		}
		if err := DecodeJSON(w, r, 1024, &req); err != nil {
			WriteError(w, err)
			return
		}
		if req.Region == "" {
			if err := cfg.Policy.SetDefault(req.Policy); err != nil {
				WriteError(w, BadField("policy", "%v", err))
				return
			}
		} else {
			var c geo.Cell
			if err := c.UnmarshalText([]byte(req.Region)); err != nil {
				WriteError(w, BadField("region", "%q is not an H3 cell", req.Region))
				return
			}
			if err := cfg.Policy.SetRegion(c, req.Policy); err != nil {
				field := "region"
				if strings.Contains(err.Error(), "policy") {
					field = "policy"
				}
				WriteError(w, BadField(field, "%v", err))
				return
			}
		}
		writeJSON(w, http.StatusOK, policyView(cfg.Policy))
	}))
	return mux
}

func policyView(p PolicyControl) map[string]any {
	def, over := p.Policies()
	regions := make(map[string]matcher.Policy, len(over))
	for c, v := range over {
		regions[c.String()] = v
	}
	return map[string]any{"default": def, "regions": regions}
}

//go:embed web/openapi.json
var openAPI []byte

// OpenAPIHandler serves the API's OpenAPI 3.1 document.
func OpenAPIHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPI)
	})
}
