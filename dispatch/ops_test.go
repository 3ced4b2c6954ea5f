package dispatch_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

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

func newOpsServer(t *testing.T) (*httptest.Server, *shards, *dispatch.Signer) {
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
	srv := httptest.NewServer(dispatch.OpsHandler(dispatch.OpsConfig{Supply: src, Signer: s}))
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
