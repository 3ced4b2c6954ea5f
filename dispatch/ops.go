package dispatch

import (
	"cmp"
	"context"
	"embed"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

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

// Heatmap layers served today. Demand, match outcome, ETA and surge layers
// come from ride events.
var heatmapLayers = map[string]positions.Filter{
	"supply":  positions.Available, // drivers free for a ride
	"drivers": positions.Filter{},  // every online driver
}

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
	// Policy, when set, is served at /v1/ops/policy.
	Policy  PolicyControl
	Signer  *Signer
	Now     func() time.Time
	Timeout time.Duration // per heatmap request; default 2 s
}

//go:embed web/ops.html
var opsFS embed.FS

// OpsRoutes are the patterns OpsHandler serves.
var OpsRoutes = []string{"GET /ops", "GET /v1/ops/heatmap", "GET /v1/ops/runtime", "GET /v1/ops/policy", "PUT /v1/ops/policy"}

// OpsHandler serves the ops console at /ops and the heatmap API at
// /v1/ops/heatmap (ops role), plus /v1/ops/runtime for the memory panel.
func OpsHandler(cfg OpsConfig) http.Handler {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ops", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
		http.ServeFileFS(w, r, opsFS, "web/ops.html")
	})
	mux.Handle("GET /v1/ops/heatmap", cfg.Signer.RequireRole(cfg.Now, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, err := heatmap(r, cfg)
		if err != nil {
			WriteError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, h)
	}), RoleOps))
	mux.Handle("GET /v1/ops/runtime", cfg.Signer.RequireRole(cfg.Now, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		writeJSON(w, http.StatusOK, map[string]any{
			"heap_alloc_bytes": ms.HeapAlloc, "sys_bytes": ms.Sys, "goroutines": runtime.NumGoroutine(),
		})
	}), RoleOps))
	mux.Handle("GET /v1/ops/policy", cfg.Signer.RequireRole(cfg.Now, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Policy == nil {
			WriteError(w, &APIError{Status: http.StatusNotFound, Code: "not_found", Message: "no policy switch in this process"})
			return
		}
		writeJSON(w, http.StatusOK, policyView(cfg.Policy))
	}), RoleOps))
	mux.Handle("PUT /v1/ops/policy", cfg.Signer.RequireRole(cfg.Now, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	}), RoleOps))
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

func heatmap(r *http.Request, cfg OpsConfig) (Heatmap, error) {
	q := r.URL.Query()
	layer := cmp.Or(q.Get("layer"), "supply")
	filter, ok := heatmapLayers[layer]
	if !ok {
		return Heatmap{}, BadField("layer", "unknown layer %q: want supply or drivers", layer)
	}
	res := geo.IndexRes
	if s := q.Get("res"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 7 || v > 9 {
			return Heatmap{}, BadField("res", "res %q: want 7, 8 or 9", s)
		}
		res = v
	}
	var bbox *geo.BBox
	if s := q.Get("bbox"); s != "" {
		b, err := geo.ParseBBox(s)
		if err != nil {
			return Heatmap{}, BadField("bbox", "%v", err)
		}
		bbox = &b
	}
	ctx, cancel := context.WithTimeout(r.Context(), cfg.Timeout)
	defer cancel()
	counts, missed, err := cfg.Supply.CellCounts(ctx, res, filter)
	if err != nil {
		return Heatmap{}, &APIError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error(), RetryAfter: time.Second}
	}
	h := Heatmap{Layer: layer, Res: res, Partial: len(missed) > 0, Missed: missed, GeneratedAt: cfg.Now().UTC(), Cells: []HeatmapCell{}}
	type cv struct {
		c geo.Cell
		v int
	}
	list := make([]cv, 0, len(counts))
	for c, v := range counts {
		if bbox != nil {
			center, err := geo.CellCenter(c)
			if err != nil || !bbox.Contains(center) {
				continue
			}
		}
		list = append(list, cv{c, v})
	}
	slices.SortFunc(list, func(a, b cv) int { return cmp.Or(cmp.Compare(b.v, a.v), cmp.Compare(a.c, b.c)) })
	if len(list) > MaxHeatmapCells {
		list, h.Truncated = list[:MaxHeatmapCells], true
	}
	for _, e := range list {
		corners, err := geo.Boundary(e.c)
		if err != nil {
			continue
		}
		b := make([][2]float64, len(corners))
		for i, p := range corners {
			b[i] = [2]float64{round7(p.Lat), round7(p.Lng)}
		}
		h.Cells = append(h.Cells, HeatmapCell{Cell: e.c.String(), Value: float64(e.v), Boundary: b})
	}
	return h, nil
}

// round7 keeps 1e-7 degree (about 1 cm): the JSON stays compact.
func round7(v float64) float64 { return float64(int64(v*1e7+copysignHalf(v))) / 1e7 }

func copysignHalf(v float64) float64 {
	if v < 0 {
		return -0.5
	}
	return 0.5
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
