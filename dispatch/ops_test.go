package dispatch_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// shards sums CellCounts over real indexes, one per partition; down marks
// partitions that do not answer.
type shards struct {
	mu   sync.Mutex
	idx  []*positions.Index
	down map[positions.Partition]bool
}

func (s *shards) CellCounts(_ context.Context, res int, f positions.Filter) (map[geo.Cell]int, []positions.Partition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[geo.Cell]int{}
	var missed []positions.Partition
	for i, x := range s.idx {
		if s.down[positions.Partition(i)] {
			missed = append(missed, positions.Partition(i))
			continue
		}
		c, err := x.CellCounts(res, f)
		if err != nil {
			return nil, nil, err
		}
		for k, v := range c {
			out[k] += v
		}
	}
	return out, missed, nil
}

func newOpsServer(t *testing.T, opts ...func(*dispatch.OpsConfig)) (*httptest.Server, *shards, *dispatch.Signer) {
	t.Helper()
	src := &shards{down: map[positions.Partition]bool{}}
	p := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 2}
	for range 2 {
		x, err := positions.NewIndex(positions.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		src.idx = append(src.idx, x)
	}
	// Drivers in two clusters, each cluster's drivers in the partition its
	// shard hashes to.
	add := func(id string, pos geo.LatLng, st positions.Status) {
		part, _, err := p.ForPos(pos)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := src.idx[part].Upsert(positions.DriverID(id), pos, st, 1, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		add("m"+string(rune('0'+i)), geo.LatLng{Lat: 40.7580 + float64(i)*1e-5, Lng: -73.9855}, positions.StatusAvailable)
	}
	add("m-busy", geo.LatLng{Lat: 40.7580, Lng: -73.9856}, positions.StatusOnTrip)
	add("b0", geo.LatLng{Lat: 40.6782, Lng: -73.9442}, positions.StatusAvailable)
	s, err := dispatch.NewSigner([]byte("ops-test-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := dispatch.OpsConfig{Supply: src, Signer: s}
	for _, o := range opts {
		o(&cfg)
	}
	srv := httptest.NewServer(dispatch.OpsHandler(cfg))
	t.Cleanup(srv.Close)
	return srv, src, s
}

func get(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func mint(t *testing.T, s *dispatch.Signer, role dispatch.Role) string {
	t.Helper()
	tok, err := s.Mint(dispatch.Claims{Subject: "x", Role: role, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestHeatmapAggregatesShards(t *testing.T) {
	srv, src, s := newOpsServer(t)
	ops := mint(t, s, dispatch.RoleOps)
	mid, _ := geo.CellAt(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 9)
	cases := []struct {
		query string
		want  map[string]float64
	}{
		{"layer=supply&res=9", map[string]float64{mid.String(): 3}},
		{"layer=drivers&res=9", map[string]float64{mid.String(): 4}},
	}
	for _, c := range cases {
		code, body := get(t, srv.URL+"/v1/ops/heatmap?"+c.query, ops)
		if code != 200 {
			t.Fatalf("%s: %d %s", c.query, code, body)
		}
		var h dispatch.Heatmap
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatal(err)
		}
		total := 0.0
		got := map[string]float64{}
		for _, cell := range h.Cells {
			got[cell.Cell] = cell.Value
			total += cell.Value
			if len(cell.Boundary) < 5 {
				t.Fatalf("cell %s has %d corners", cell.Cell, len(cell.Boundary))
			}
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Fatalf("%s: cell %s = %v, want %v (all %v)", c.query, k, got[k], v, got)
			}
		}
		if h.Partial || len(h.Cells) != 2 {
			t.Fatalf("%s: %d cells, partial %v", c.query, len(h.Cells), h.Partial)
		}
	}
	// bbox keeps only Manhattan's cell.
	_, body := get(t, srv.URL+"/v1/ops/heatmap?layer=drivers&bbox=40.74,-74.0,40.77,-73.97", ops)
	var h dispatch.Heatmap
	json.Unmarshal(body, &h)
	if len(h.Cells) != 1 || h.Cells[0].Cell != mid.String() {
		t.Fatalf("bbox heatmap = %+v", h.Cells)
	}
	// A shard that does not answer makes the map partial, not an error.
	src.mu.Lock()
	src.down[1] = true
	src.mu.Unlock()
	_, body = get(t, srv.URL+"/v1/ops/heatmap", ops)
	json.Unmarshal(body, &h)
	if !h.Partial || len(h.Missed) != 1 || h.Missed[0] != 1 {
		t.Fatalf("partial heatmap = partial %v missed %v", h.Partial, h.Missed)
	}
}

func TestHeatmapAuthAndValidation(t *testing.T) {
	srv, _, s := newOpsServer(t)
	ops := mint(t, s, dispatch.RoleOps)
	tests := []struct {
		path, token string
		code        int
		field       string
	}{
		{"/v1/ops/heatmap", "", 401, ""},
		{"/v1/ops/heatmap", "garbage", 401, ""},
		{"/v1/ops/heatmap", mint(t, s, dispatch.RoleDriver), 403, ""},
		{"/v1/ops/heatmap", mint(t, s, dispatch.RoleRider), 403, ""},
		{"/v1/ops/runtime", mint(t, s, dispatch.RoleRider), 403, ""},
		{"/v1/ops/heatmap?layer=weather", ops, 400, "layer"},
		{"/v1/ops/heatmap?res=12", ops, 400, "res"},
		{"/v1/ops/heatmap?bbox=1,2,3", ops, 400, "bbox"},
		{"/v1/ops/runtime", ops, 200, ""},
		{"/v1/ops/alerts", mint(t, s, dispatch.RoleDriver), 403, ""},
		{"/v1/ops/alerts", ops, 200, ""},
		{"/v1/ops/heatmap?layer=demand", ops, 404, ""}, // no ride-events reader here
		{"/v1/ops/heatmap/stream?layer=surge", ops, 404, ""},
		{"/v1/ops/heatmap/stream?res=3", ops, 400, "res"},
		{"/v1/ops/heatmap/stream", "", 401, ""},
		{"/v1/ops/cells/nothex", ops, 400, "cell"},
		{"/v1/ops/cells/8a2a1072b59ffff", mint(t, s, dispatch.RoleRider), 403, ""},
		{"/v1/ops/cells/852a1073fffffff", ops, 400, "cell"}, // res 5
	}
	for _, tt := range tests {
		code, body := get(t, srv.URL+tt.path, tt.token)
		if code != tt.code {
			t.Errorf("%s with %q: %d %s, want %d", tt.path, tt.token, code, body, tt.code)
			continue
		}
		if tt.field != "" && !strings.Contains(string(body), `"field":"`+tt.field+`"`) {
			t.Errorf("%s: body %s does not name field %s", tt.path, body, tt.field)
		}
	}
	code, body := get(t, srv.URL+"/ops", "")
	if code != 200 || !strings.Contains(string(body), "<canvas id=\"map\">") {
		t.Fatalf("/ops = %d", code)
	}
}

func TestPolicyEndpoint(t *testing.T) {
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 2}
	gc := matcher.DefaultGatherConfig()
	gc.Partitioner = pt
	g, err := matcher.NewGatherer(matcher.LocalOwners{Querier: emptyQuerier{}}, gc)
	if err != nil {
		t.Fatal(err)
	}
	// No Redis call is made by a policy change; the client is never used.
	l, err := matcher.NewLeases(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), matcher.DefaultLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	gr, _ := matcher.NewGreedy(g, l, matcher.DefaultGreedyConfig())
	bc := matcher.DefaultBatcherConfig()
	bc.Partitioner = pt
	b, _ := matcher.NewBatcher(g, l, nil, bc)
	defer b.Close()
	sw, err := matcher.NewSwitch(gr, b, pt, matcher.PolicyGreedy)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := dispatch.NewSigner([]byte("ops-test-secret-0123456789"))
	srv := httptest.NewServer(dispatch.OpsHandler(dispatch.OpsConfig{Supply: &shards{}, Signer: s, Policy: sw}))
	defer srv.Close()
	ops := mint(t, s, dispatch.RoleOps)
	put := func(token, body string) (int, string) {
		req, _ := http.NewRequest("PUT", srv.URL+"/v1/ops/policy", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	region, _ := geo.ShardCell(geo.LatLng{Lat: 40.758, Lng: -73.9855}, geo.DefaultShardRes)
	if code, body := put(ops, `{"region":"`+region.String()+`","policy":"batched"}`); code != 200 || !strings.Contains(body, `"`+region.String()+`":"batched"`) {
		t.Fatalf("set region: %d %s", code, body)
	}
	if sw.PolicyFor(geo.LatLng{Lat: 40.758, Lng: -73.9855}) != matcher.PolicyBatched {
		t.Fatal("the switch did not change")
	}
	if code, body := put(ops, `{"policy":"batched"}`); code != 200 || !strings.Contains(body, `"default":"batched"`) {
		t.Fatalf("set default: %d %s", code, body)
	}
	for _, bad := range []struct{ body, field string }{
		{`{"policy":"fastest"}`, "policy"},
		{`{"region":"zz","policy":"greedy"}`, "region"},
		{`{"region":"872a100d7ffffff","policy":"greedy"}`, "region"}, // res 7, not a shard
	} {
		if code, body := put(ops, bad.body); code != 400 || !strings.Contains(body, `"field":"`+bad.field+`"`) {
			t.Errorf("%s: %d %s", bad.body, code, body)
		}
	}
	if code, _ := put(mint(t, s, dispatch.RoleRider), `{"policy":"greedy"}`); code != 403 {
		t.Fatalf("rider changed the policy: %d", code)
	}
	if code, body := get(t, srv.URL+"/v1/ops/policy", ops); code != 200 || !strings.Contains(string(body), `"default":"batched"`) {
		t.Fatalf("get: %d %s", code, body)
	}
}

type emptyQuerier struct{}

func (emptyQuerier) Nearest(context.Context, positions.NearestRequest) (positions.NearestResponse, error) {
	return positions.NearestResponse{}, nil
}

func (emptyQuerier) CellCounts(context.Context, positions.CellCountsRequest) (positions.CellCountsResponse, error) {
	return positions.CellCountsResponse{}, nil
}

// withOutcomes serves the ride-event layers from o.
func withOutcomes(o *dispatch.Outcomes) func(*dispatch.OpsConfig) {
	return func(c *dispatch.OpsConfig) { c.Outcomes = o }
}

func heatmapValues(t *testing.T, srv *httptest.Server, token, query string) map[string]float64 {
	t.Helper()
	code, body := get(t, srv.URL+"/v1/ops/heatmap?"+query, token)
	if code != 200 {
		t.Fatalf("%s: %d %s", query, code, body)
	}
	var h dispatch.Heatmap
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("%s: %v in %s", query, err, body)
	}
	out := map[string]float64{}
	for _, c := range h.Cells {
		if len(c.Boundary) < 5 {
			t.Fatalf("cell %s has %d corners", c.Cell, len(c.Boundary))
		}
		out[c.Cell] = c.Value
	}
	return out
}

// TestHeatmapRideEventLayers: demand, matched, unmatched, eta and surge
// come from the ride events; surge divides the demand by the supply the
// shards report.
func TestHeatmapRideEventLayers(t *testing.T) {
	// The middle of a minute: the requests are fresh (no decay) wherever
	// in the minute the test runs.
	clk := &manualClock{now: time.Now().Truncate(time.Minute).Add(30 * time.Second)}
	o := newOutcomes(t, clk)
	srv, _, s := newOpsServer(t, withOutcomes(o))
	ops := mint(t, s, dispatch.RoleOps)
	ts, bk := cellOf(t, timesSquare, 9).String(), cellOf(t, brooklyn, 9).String()
	// Times Square: 3 available drivers; 8 requests, one without a driver.
	// Brooklyn: 1 available driver, one accepted request.
	for i := range 8 {
		eta := 100.0
		if i == 0 {
			eta = 0
		}
		for _, e := range rideEvents(fmt.Sprint("t", i), timesSquare, clk.Now(), eta) {
			o.Add(e)
		}
	}
	for _, e := range rideEvents("b", brooklyn, clk.Now(), 40) {
		o.Add(e)
	}
	tests := []struct {
		layer string
		want  map[string]float64
	}{
		{"demand", map[string]float64{ts: 8, bk: 1}},
		{"matched", map[string]float64{ts: 7, bk: 1}},
		{"unmatched", map[string]float64{ts: 1}},
		{"eta", map[string]float64{ts: 100, bk: 40}},
		// Times Square: D = 8 (fresh), S = 3: 1 + (8/4 - 1)/2 = 1.5.
		// Brooklyn: D = 1, S = 1: balance, 1.0.
		{"surge", map[string]float64{ts: 1.5, bk: 1}},
	}
	for _, tt := range tests {
		got := heatmapValues(t, srv, ops, "layer="+tt.layer)
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("layer %s = %v, want %v", tt.layer, got, tt.want)
		}
	}
	// The tooltip's view of one cell has every layer.
	code, body := get(t, srv.URL+"/v1/ops/cells/"+ts, ops)
	if code != 200 {
		t.Fatalf("cell detail: %d %s", code, body)
	}
	var d dispatch.CellDetail
	json.Unmarshal(body, &d)
	if d.Supply != 3 || d.Drivers != 4 || *d.Demand != 8 || *d.Matched != 7 || *d.Unmatched != 1 || *d.ETA != 100 || *d.Surge != 1.5 {
		t.Fatalf("cell detail = %s", body)
	}
	// A cell with drivers and no rides: zero counts, no ETA, surge 1.
	empty := cellOf(t, geo.LatLng{Lat: 40.7, Lng: -74.0}, 8).String()
	_, body = get(t, srv.URL+"/v1/ops/cells/"+empty, ops)
	d = dispatch.CellDetail{}
	json.Unmarshal(body, &d)
	if *d.Demand != 0 || d.ETA != nil || *d.Surge != 1 || d.Res != 8 {
		t.Fatalf("empty cell detail = %s", body)
	}
}

// TestHeatmapStream: the stream starts with every cell, then sends only
// what changed: a driver who moves shows as a new cell and a deleted one.
func TestHeatmapStream(t *testing.T) {
	closing, stop := context.WithCancel(context.Background())
	defer stop()
	srv, src, s := newOpsServer(t, func(c *dispatch.OpsConfig) { c.StreamEvery, c.Closing = 20*time.Millisecond, closing })
	req, _ := http.NewRequest("GET", srv.URL+"/v1/ops/heatmap/stream?layer=drivers", nil)
	req.Header.Set("Authorization", "Bearer "+mint(t, s, dispatch.RoleOps))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	type delta struct {
		Full bool                   `json:"full"`
		Set  []dispatch.HeatmapCell `json:"set"`
		Del  []string               `json:"del"`
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	next := func() delta {
		t.Helper()
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var d delta
				if err := json.Unmarshal([]byte(data), &d); err != nil {
					t.Fatalf("%v in %s", err, data)
				}
				return d
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return delta{}
	}
	first := next()
	if !first.Full || len(first.Set) != 2 || len(first.Set[0].Boundary) < 5 {
		t.Fatalf("first event = %+v, want both cells in full", first)
	}
	if d := next(); d.Full || len(d.Set)+len(d.Del) != 0 {
		t.Fatalf("unchanged heatmap sent %+v", d)
	}
	// b0 drives from Brooklyn to Queens.
	queens := geo.LatLng{Lat: 40.7282, Lng: -73.7949}
	src.mu.Lock()
	for _, x := range src.idx {
		x.Remove("b0", 2)
	}
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 2}
	part, _, _ := pt.ForPos(queens)
	src.idx[part].Upsert("b0", queens, positions.StatusAvailable, 3, time.Now())
	src.mu.Unlock()
	for range 50 {
		d := next()
		if len(d.Set) == 0 && len(d.Del) == 0 {
			continue
		}
		if len(d.Set) != 1 || d.Set[0].Cell != cellOf(t, queens, 9).String() || len(d.Set[0].Boundary) < 5 ||
			len(d.Del) != 1 || d.Del[0] != cellOf(t, brooklyn, 9).String() {
			t.Fatalf("delta = %+v, want Queens set and Brooklyn deleted", d)
		}
		// Shutdown ends the stream.
		stop()
		for sc.Scan() {
		}
		return
	}
	t.Fatal("no delta after the driver moved")
}

func TestAlerts(t *testing.T) {
	reg := prometheus.NewRegistry()
	match := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hexd_match_latency_seconds", Buckets: []float64{.01, .1, 1, 2, 5}})
	httpH := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hexd_http_request_duration_seconds"}, []string{"route", "method", "code"})
	dlq := prometheus.NewCounter(prometheus.CounterOpts{Name: "hexd_positions_dead_letters_total"})
	lag := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hexd_positions_consumer_lag"}, []string{"partition"})
	reg.MustRegister(match, httpH, dlq, lag)
	clk := &manualClock{now: time.Now()}
	srv, _, s := newOpsServer(t, func(c *dispatch.OpsConfig) { c.Metrics, c.Now = reg, clk.Now })
	ops := mint(t, s, dispatch.RoleOps)
	read := func() dispatch.Alerts {
		t.Helper()
		code, body := get(t, srv.URL+"/v1/ops/alerts", ops)
		if code != 200 {
			t.Fatalf("alerts: %d %s", code, body)
		}
		var a dispatch.Alerts
		if err := json.Unmarshal(body, &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	state := func(a dispatch.Alerts) map[string]string {
		m := map[string]string{}
		for _, x := range a.Alerts {
			m[x.Name] = x.State
		}
		return m
	}
	// A bad start: slow matches, 5xx, a dead letter, a lagging partition.
	for range 90 {
		match.Observe(0.05)
	}
	for range 10 {
		match.Observe(1.5)
	}
	for range 95 {
		httpH.WithLabelValues("POST /v1/rides", "POST", "202").Observe(0.01)
	}
	for range 5 {
		httpH.WithLabelValues("POST /v1/rides", "POST", "503").Observe(0.01)
	}
	dlq.Inc()
	lag.WithLabelValues("3").Set(50_000)
	lag.WithLabelValues("1").Set(10)
	a := read()
	if got := fmt.Sprint(state(a)); got != "map[consumer_lag:alert error_rate:alert match_p99:alert memory:ok]" {
		t.Fatalf("states = %s (%+v)", got, a)
	}
	if a.MatchP99 == nil || *a.MatchP99 < 1 || *a.MatchP99 > 2 || a.ErrorRate != 0.05 || a.DeadLetters != 1 ||
		len(a.Lag) != 2 || a.Lag[1].Partition != 3 || a.Lag[1].Records != 50_000 {
		t.Fatalf("alerts = %+v", a)
	}
	// A minute later, only fast matches and good answers: the window has
	// moved past the bad start.
	clk.Add(61 * time.Second)
	for range 100 {
		match.Observe(0.05)
		httpH.WithLabelValues("POST /v1/rides", "POST", "202").Observe(0.01)
	}
	lag.WithLabelValues("3").Set(0)
	a = read()
	if got := fmt.Sprint(state(a)); got != "map[consumer_lag:ok error_rate:ok match_p99:ok memory:ok]" {
		t.Fatalf("states a minute later = %s (%+v)", got, a)
	}
	if *a.MatchP99 > 0.1 || a.Matches != 100 || a.WindowSeconds < 60 {
		t.Fatalf("a minute later: p99 %v over %v matches in %v s", *a.MatchP99, a.Matches, a.WindowSeconds)
	}
	// Without the metrics in this process the panels say unknown.
	srv2, _, s2 := newOpsServer(t)
	_, body := get(t, srv2.URL+"/v1/ops/alerts", mint(t, s2, dispatch.RoleOps))
	json.Unmarshal(body, &a)
	if got := fmt.Sprint(state(a)); got != "map[consumer_lag:unknown error_rate:unknown match_p99:unknown memory:ok]" {
		t.Fatalf("states without metrics = %s", got)
	}
}
