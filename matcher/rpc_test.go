package matcher_test

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func sampleNearestResponse() positions.NearestResponse {
	return positions.NearestResponse{
		Candidates: []positions.Candidate{
			{Driver: positions.Driver{ID: "d1", Pos: geo.LatLng{Lat: 40.7580123, Lng: -73.9855001}, Status: positions.StatusAvailable, Seq: 42, At: time.Unix(0, 1_800_000_000_123_456_789)}, DistanceM: 12.5, Age: 1500 * time.Millisecond},
			{Driver: positions.Driver{ID: "driver-ü", Pos: geo.LatLng{Lat: -90, Lng: 180}, Status: positions.StatusOnTrip, Seq: math.MaxUint64}, DistanceM: 0},
		},
		Missed: []positions.Partition{0, 7, math.MaxInt32},
	}
}

func TestRPCCodecRoundTrip(t *testing.T) {
	reqs := []positions.NearestRequest{
		{},
		{Partitions: []positions.Partition{3, 1, 2}, Center: geo.LatLng{Lat: 37.7749, Lng: -122.4194}, K: 9, RadiusM: 1234.5, Filter: positions.Available},
	}
	for _, req := range reqs {
		got, err := matcher.DecodeNearestRequest(matcher.AppendNearestRequest(nil, req))
		if err != nil || !reflect.DeepEqual(got, req) {
			t.Errorf("NearestRequest %+v -> %+v, %v", req, got, err)
		}
	}
	for _, resp := range []positions.NearestResponse{{}, sampleNearestResponse()} {
		got, err := matcher.DecodeNearestResponse(matcher.AppendNearestResponse(nil, resp))
		if err != nil || !reflect.DeepEqual(got, resp) {
			t.Errorf("NearestResponse %+v -> %+v, %v", resp, got, err)
		}
	}
	creq := positions.CellCountsRequest{Partitions: []positions.Partition{5}, Res: 9, Filter: positions.Available}
	if got, err := matcher.DecodeCellCountsRequest(matcher.AppendCellCountsRequest(nil, creq)); err != nil || !reflect.DeepEqual(got, creq) {
		t.Errorf("CellCountsRequest -> %+v, %v", got, err)
	}
	c9, _ := geo.CellAt(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 9)
	c7, _ := geo.CellAt(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 7)
	cresp := positions.CellCountsResponse{Counts: map[geo.Cell]int{c9: 3, c7: 100}, Missed: []positions.Partition{2}}
	if got, err := matcher.DecodeCellCountsResponse(matcher.AppendCellCountsResponse(nil, cresp)); err != nil || !reflect.DeepEqual(got, cresp) {
		t.Errorf("CellCountsResponse -> %+v, %v", got, err)
	}
}

func TestRPCDecodeRejectsBadBodies(t *testing.T) {
	good := matcher.AppendNearestResponse(nil, sampleNearestResponse())
	withCand := func(c positions.Candidate) []byte {
		return matcher.AppendNearestResponse(nil, positions.NearestResponse{Candidates: []positions.Candidate{c}})
	}
	okCand := sampleNearestResponse().Candidates[0]
	badLat, badStatus, badDist, longID := okCand, okCand, okCand, okCand
	badLat.Pos.Lat = 91
	badStatus.Status = 9
	badDist.DistanceM = math.NaN()
	longID.ID = positions.DriverID(strings.Repeat("x", positions.MaxDriverIDLen+1))
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"empty", nil, "version"},
		{"wrong version", append([]byte{2}, good[1:]...), "version 2"},
		{"truncated", good[:len(good)-3], "malformed"},
		{"trailing", append(slices.Clone(good), 0), "trailing"},
		{"huge count", []byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}, "count too large"},
		{"bad lat", withCand(badLat), "lat"},
		{"bad status", withCand(badStatus), "status"},
		{"NaN distance", withCand(badDist), "distance"},
		{"long id", withCand(longID), "id length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := matcher.DecodeNearestResponse(tt.body)
			if !errors.Is(err, matcher.ErrRPCDecode) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrRPCDecode containing %q", err, tt.want)
			}
		})
	}
	if _, err := matcher.DecodeCellCountsResponse(matcher.AppendCellCountsResponse(nil, positions.CellCountsResponse{Counts: map[geo.Cell]int{12345: 1}})); !errors.Is(err, matcher.ErrRPCDecode) {
		t.Errorf("invalid cell: %v", err)
	}
	if _, err := matcher.DecodeNearestRequest([]byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0x7f}); !errors.Is(err, matcher.ErrRPCDecode) {
		t.Errorf("partition out of range: %v", err)
	}
}

// rpcCluster serves every shard of cl over loopback HTTP and returns
// owners that reach them through RPCClients.
func rpcCluster(t testing.TB, cl *cluster) (matcher.StaticOwners, map[*shard]*httptest.Server) {
	return rpcClusterWith(t, cl, false)
}

// rpcClusterWith is rpcCluster; h2c serves and dials unencrypted HTTP/2
// instead of HTTP/1.1, to compare the two.
func rpcClusterWith(t testing.TB, cl *cluster, h2c bool) (matcher.StaticOwners, map[*shard]*httptest.Server) {
	t.Helper()
	servers := make(map[*shard]*httptest.Server)
	hc := matcher.DefaultRPCHTTPClient()
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		hc.Transport.(*http.Transport).Protocols = &p
	}
	clients := make(map[*shard]*matcher.RPCClient)
	for _, s := range cl.shards {
		srv := httptest.NewUnstartedServer(matcher.NewRPCHandler(s))
		if h2c {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			p.SetHTTP1(true)
			srv.Config.Protocols = &p
		}
		srv.Start()
		t.Cleanup(srv.Close)
		servers[s] = srv
		clients[s] = matcher.NewRPCClient(strings.TrimPrefix(srv.URL, "http://"), hc)
	}
	t.Cleanup(hc.CloseIdleConnections)
	o := make(matcher.StaticOwners)
	for p, s := range cl.owner {
		o[p] = matcher.OwnerRef{Name: s.name, Querier: clients[s]}
	}
	return o, servers
}

func TestGatherOverRPCMatchesInProcess(t *testing.T) {
	rng := rand.New(rand.NewPCG(seed(t), 5))
	pt := positions.Partitioner{ShardRes: 6, Partitions: 12}
	cl := newCluster(t, pt, 3)
	cl.scatter(t, rng, nyc, 20_000, 3000)
	remote, servers := rpcCluster(t, cl)
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	cfg.Deadline = time.Minute // equality here, not speed
	local, err := matcher.NewGatherer(cl.owners(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	over, err := matcher.NewGatherer(remote, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 60 {
		p := offset(nyc, (rng.Float64()-0.5)*18_000, (rng.Float64()-0.5)*18_000)
		a, err1 := local.Gather(ctx, p, 5)
		b, err2 := over.Gather(ctx, p, 5)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if b.Partial || !reflect.DeepEqual(a, b) {
			t.Fatalf("pickup %d %v: over RPC %+v, in process %+v", i, p, b, a)
		}
	}
	// A worker process dies: its partitions are missed, the rest answer.
	dead := cl.shards[2]
	servers[dead].Close()
	for i := range 10 {
		p := offset(nyc, (rng.Float64()-0.5)*18_000, (rng.Float64()-0.5)*18_000)
		res, err := over.Gather(ctx, p, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range res.Missed {
			if cl.owner[part] != dead {
				t.Fatalf("pickup %d: partition %d of a live worker missed", i, part)
			}
		}
		for _, part := range res.Answered {
			if cl.owner[part] == dead {
				t.Fatalf("pickup %d: partition %d of the dead worker answered", i, part)
			}
		}
	}
}

func TestRPCErrorsAndDeadline(t *testing.T) {
	s := newShard("s")
	srv := httptest.NewServer(matcher.NewRPCHandler(s))
	t.Cleanup(srv.Close)
	c := matcher.NewRPCClient(strings.TrimPrefix(srv.URL, "http://"), nil)
	ctx := context.Background()

	// The querier's validation error comes back as a 400.
	s.mu.Lock()
	s.indexes[0] = mustIndex(t)
	s.mu.Unlock()
	_, err := c.Nearest(ctx, positions.NearestRequest{Partitions: []positions.Partition{0}, Center: geo.LatLng{Lat: 1, Lng: 1}, K: 0, RadiusM: 10})
	if !errors.Is(err, matcher.ErrRPC) || !strings.Contains(err.Error(), "400") {
		t.Fatalf("invalid k: %v, want a 400", err)
	}
	// Malformed body.
	resp, err := http.Post(srv.URL+matcher.RPCNearestPath, "application/octet-stream", strings.NewReader("junk"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("junk body: %s", resp.Status)
	}
	// A hung owner: the caller's deadline travels with the request and
	// both sides give up.
	s.setBlock(true)
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.Nearest(dctx, positions.NearestRequest{Partitions: []positions.Partition{0}, Center: geo.LatLng{Lat: 1, Lng: 1}, K: 1, RadiusM: 10}); !errors.Is(err, matcher.ErrRPC) {
		t.Fatalf("hung owner: %v", err)
	}
	s.setBlock(false)
	// Cell counts travel too.
	if _, err := c.CellCounts(ctx, positions.CellCountsRequest{Partitions: []positions.Partition{0}, Res: 9}); err != nil {
		t.Fatalf("CellCounts: %v", err)
	}
}

func mustIndex(t testing.TB) *positions.Index {
	t.Helper()
	cfg := positions.DefaultConfig()
	cfg.Now = func() time.Time { return t0 }
	x, err := positions.NewIndex(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func FuzzDecodeNearestRequest(f *testing.F) {
	f.Add(matcher.AppendNearestRequest(nil, positions.NearestRequest{Partitions: []positions.Partition{1, 2}, Center: geo.LatLng{Lat: 1, Lng: 2}, K: 5, RadiusM: 100, Filter: positions.Available}))
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := matcher.DecodeNearestRequest(b)
		if err != nil {
			return
		}
		again, err := matcher.DecodeNearestRequest(matcher.AppendNearestRequest(nil, req))
		if err != nil || !reflect.DeepEqual(again, req) && !hasNaN(req.Center.Lat, req.Center.Lng, req.RadiusM) {
			t.Fatalf("round trip of %+v: %+v, %v", req, again, err)
		}
	})
}

func FuzzDecodeNearestResponse(f *testing.F) {
	f.Add(matcher.AppendNearestResponse(nil, sampleNearestResponse()))
	f.Add(matcher.AppendNearestResponse(nil, positions.NearestResponse{}))
	f.Add([]byte{1, 1, 2, 'd', '1'})
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := matcher.DecodeNearestResponse(b)
		if err != nil {
			return
		}
		for _, c := range resp.Candidates {
			if c.ID.Validate() != nil || c.Pos.Validate() != nil || !c.Status.Valid() || !(c.DistanceM >= 0) {
				t.Fatalf("decoded an invalid candidate %+v", c)
			}
		}
		again, err := matcher.DecodeNearestResponse(matcher.AppendNearestResponse(nil, resp))
		if err != nil || !reflect.DeepEqual(again, resp) {
			t.Fatalf("round trip of %+v: %+v, %v", resp, again, err)
		}
	})
}

func FuzzDecodeCellCounts(f *testing.F) {
	c7, _ := geo.CellAt(geo.LatLng{Lat: 1, Lng: 2}, 7)
	f.Add(matcher.AppendCellCountsResponse(nil, positions.CellCountsResponse{Counts: map[geo.Cell]int{c7: 4}, Missed: []positions.Partition{1}}))
	f.Add(matcher.AppendCellCountsRequest(nil, positions.CellCountsRequest{Partitions: []positions.Partition{1}, Res: 9}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if req, err := matcher.DecodeCellCountsRequest(b); err == nil {
			if again, err := matcher.DecodeCellCountsRequest(matcher.AppendCellCountsRequest(nil, req)); err != nil || !reflect.DeepEqual(again, req) {
				t.Fatalf("request round trip of %+v: %+v, %v", req, again, err)
			}
		}
		if resp, err := matcher.DecodeCellCountsResponse(b); err == nil {
			for c := range resp.Counts {
				if geo.CheckCell(c) != nil {
					t.Fatalf("decoded invalid cell %x", uint64(c))
				}
			}
		}
	})
}

func hasNaN(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) {
			return true
		}
	}
	return false
}

// TestGatherAcrossProcessesWithRegistry is the cross-process path end to
// end: workers serve the query RPC on loopback and publish their
// partitions in Redis; the matcher resolves owners there and dials them.
// A worker dies, gathers are partial; a newer generation moves its
// partitions, gathers are complete again.
func TestGatherAcrossProcessesWithRegistry(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	rcfg := matcher.DefaultRegistryConfig()
	rcfg.OpTimeout = 5 * time.Second
	reg, err := matcher.NewRegistry(rdb, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed(t), 6))
	pt := positions.Partitioner{ShardRes: 6, Partitions: 6}
	cl := newCluster(t, pt, 3)
	cl.scatter(t, rng, nyc, 15_000, 2000)
	_, servers := rpcCluster(t, cl)
	addr := func(s *shard) string { return strings.TrimPrefix(servers[s].URL, "http://") }
	ctx := context.Background()
	publish := func(fence int64) {
		t.Helper()
		for p, s := range cl.owner {
			if err := reg.Publish(ctx, p, matcher.Owner{Addr: addr(s), Fence: fence}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(1)
	hc := matcher.DefaultRPCHTTPClient()
	t.Cleanup(hc.CloseIdleConnections)
	res, err := matcher.NewResolver(reg, matcher.DialRPC(hc), matcher.DefaultResolverConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	cfg.Deadline = time.Minute // a dead worker refuses connections at once
	g, err := matcher.NewGatherer(res, cfg)
	if err != nil {
		t.Fatal(err)
	}
	local, err := matcher.NewGatherer(cl.owners(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pickups := make([]geo.LatLng, 20)
	for i := range pickups {
		pickups[i] = offset(nyc, (rng.Float64()-0.5)*12_000, (rng.Float64()-0.5)*12_000)
	}
	check := func(phase string, wantPartial bool) {
		t.Helper()
		partial := 0
		for i, p := range pickups {
			got, err := g.Gather(ctx, p, 5)
			if err != nil {
				t.Fatal(err)
			}
			if got.Partial {
				partial++
				continue
			}
			// Only the first n are exact; the extras depend on how the
			// partitions are grouped by owner, which a rebalance changes.
			want, _ := local.Gather(ctx, p, 5)
			if !reflect.DeepEqual(ids(got.Candidates[:min(5, len(got.Candidates))]), ids(want.Candidates[:min(5, len(want.Candidates))])) {
				t.Fatalf("%s: pickup %d: %v, in process %v", phase, i, ids(got.Candidates), ids(want.Candidates))
			}
		}
		if wantPartial && partial == 0 || !wantPartial && partial > 0 {
			t.Fatalf("%s: %d of %d gathers partial", phase, partial, len(pickups))
		}
	}
	check("healthy", false)

	dead := cl.shards[1]
	servers[dead].Close()
	check("worker dead", true)

	live := cl.shards[0]
	for p, s := range cl.owner {
		if s == dead {
			live.mu.Lock()
			live.indexes[p] = dead.indexes[p]
			live.mu.Unlock()
			cl.owner[p] = live
		}
	}
	publish(2)
	check("after rebalance", false)
}
