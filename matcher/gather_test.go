package matcher_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func ids(cs []positions.Candidate) []positions.DriverID {
	out := make([]positions.DriverID, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

// TestGatherMatchesBruteForceAcrossShards is the boundary test: riders on
// search-cell edges (and anywhere) must get the true N nearest drivers,
// wherever the shard lines fall, compared with a brute force over every
// driver of every shard.
func TestGatherMatchesBruteForceAcrossShards(t *testing.T) {
	rng := rand.New(rand.NewPCG(seed(t), 2))
	cities := []geo.LatLng{
		{Lat: 40.7580, Lng: -73.9855}, {Lat: 51.5072, Lng: -0.1276}, {Lat: -33.8688, Lng: 151.2093},
		{Lat: 59.9139, Lng: 10.7522}, {Lat: 1.3521, Lng: 103.8198}, {Lat: 64.1466, Lng: -21.9426},
	}
	var cases, crossShard, short int
	for round := range 18 {
		pt := positions.Partitioner{ShardRes: 5 + round%3, Partitions: int32([]int{3, 7, 16}[rng.IntN(3)])}
		cl := newCluster(t, pt, 3)
		center := cities[rng.IntN(len(cities))]
		if round%4 == 3 {
			center = geo.LatLng{Lat: rng.Float64()*120 - 60, Lng: rng.Float64()*360 - 180}
		}
		// Sparse enough that the nearest driver is often cells away.
		cl.scatter(t, rng, center, 16_000, 30+rng.IntN(400))
		cfg := matcher.DefaultGatherConfig()
		cfg.Partitioner = pt
		cfg.Deadline = time.Minute // correctness here, not speed; -race is slow
		cfg.Probe = round%2 == 0
		g, err := matcher.NewGatherer(cl.owners(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			rider := offset(center, (rng.Float64()-0.5)*12_000, (rng.Float64()-0.5)*12_000)
			if i%2 == 0 {
				rider = onCellEdge(t, rng, rider)
			}
			n := 1 + rng.IntN(5)
			res, err := g.Gather(context.Background(), rider, n)
			if err != nil {
				t.Fatal(err)
			}
			cases++
			where := fmt.Sprintf("round %d (shard res %d, P %d) rider %d at %v n=%d", round, pt.ShardRes, pt.Partitions, i, rider, n)
			if res.Partial || len(res.Missed) > 0 {
				t.Fatalf("%s: partial result %+v", where, res)
			}
			var within []positions.Candidate
			for _, c := range cl.bruteNearest(rider) {
				if c.DistanceM <= res.RadiusM {
					within = append(within, c)
				}
			}
			want := ids(within[:min(n, len(within))])
			got := ids(res.Candidates[:min(n, len(res.Candidates))])
			if !slices.Equal(got, want) {
				t.Fatalf("%s: ring %d radius %.0f m: got %v, brute force %v", where, res.Ring, res.RadiusM, got, want)
			}
			if len(res.Candidates) < n {
				short++
				if res.RadiusM < cfg.MaxRadiusM && res.Ring < cfg.MaxRing {
					t.Fatalf("%s: stopped at ring %d radius %.0f m with %d < n candidates", where, res.Ring, res.RadiusM, len(res.Candidates))
				}
			}
			if len(want) > 0 {
				rp, _, _ := pt.ForPos(rider)
				if cl.partitionOf(want[0]) != rp {
					crossShard++
				}
			}
		}
	}
	t.Logf("%d cases, %d with the nearest driver in another partition than the rider, %d short of n within the max radius", cases, crossShard, short)
	if crossShard == 0 {
		t.Fatal("no case had its nearest driver across a shard line; the test does not test the boundary")
	}
}

func TestGatherPartialWhenAnOwnerIsMissingOrSlow(t *testing.T) {
	pt := positions.Partitioner{ShardRes: 7, Partitions: 12}
	center := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	tests := []struct {
		name   string
		break_ func(cl *cluster, owners matcher.StaticOwners, bad *shard)
	}{
		{"owner hangs past the deadline", func(_ *cluster, _ matcher.StaticOwners, bad *shard) { bad.setBlock(true) }},
		{"owner fails", func(_ *cluster, _ matcher.StaticOwners, bad *shard) { bad.fail = errors.New("connection reset") }},
		{"no owner published", func(cl *cluster, o matcher.StaticOwners, bad *shard) {
			for p, s := range cl.owner {
				if s == bad {
					delete(o, p)
				}
			}
		}},
		{"owner does not hold the partitions", func(_ *cluster, _ matcher.StaticOwners, bad *shard) {
			bad.indexes = map[positions.Partition]*positions.Index{}
		}},
	}
	home, _, err := pt.ForPos(center)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		for _, which := range []string{"home", "other"} {
			t.Run(tt.name+"/"+which, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, 2))
				cl := newCluster(t, pt, 3)
				cl.scatter(t, rng, center, 6000, 600)
				owners := cl.owners()
				bad := cl.owner[home]
				if which == "other" {
					bad = cl.shards[(slices.Index(cl.shards, bad)+1)%len(cl.shards)]
				}
				tt.break_(cl, owners, bad)
				cfg := matcher.DefaultGatherConfig()
				cfg.Partitioner = pt
				// Healthy owners must answer within the deadline even on a
				// loaded machine under -race; only the hung owner waits it
				// out.
				cfg.Deadline = time.Minute
				if bad.block {
					cfg.Deadline = 500 * time.Millisecond
				}
				g, err := matcher.NewGatherer(owners, cfg)
				if err != nil {
					t.Fatal(err)
				}
				res, err := g.Gather(context.Background(), center, 50)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Partial || len(res.Missed) == 0 || len(res.Answered) == 0 {
					t.Fatalf("want a partial result with answered and missed partitions, got %+v", res)
				}
				for _, p := range res.Missed {
					if cl.owner[p] != bad {
						t.Errorf("partition %d of healthy %s reported missed", p, cl.owner[p].name)
					}
				}
				for _, p := range res.Answered {
					if cl.owner[p] == bad {
						t.Errorf("partition %d of the broken owner reported answered", p)
					}
				}
				for _, c := range res.Candidates {
					if cl.owner[cl.partitionOf(c.ID)] == bad {
						t.Errorf("candidate %s from the broken owner", c.ID)
					}
				}
				if len(res.Candidates) == 0 {
					t.Error("no candidates from the healthy owners")
				}
				if st := g.Stats(); st.Gathers != 1 || st.Partial != 1 || st.MissedParts != uint64(len(res.Missed)) {
					t.Errorf("stats %+v after one partial gather missing %d partitions", st, len(res.Missed))
				}
			})
		}
	}
}

// TestGatherRecoversAfterRebalance: an owner dies mid-gather, the result is
// partial; a newer generation moves its partitions to a live worker; the
// gather after that is complete again, through the Redis registry and the
// resolver's stale-owner path.
func TestGatherRecoversAfterRebalance(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	rcfg := matcher.DefaultRegistryConfig()
	rcfg.OpTimeout = 5 * time.Second // not a timing test
	reg, err := matcher.NewRegistry(rdb, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	pt := positions.Partitioner{ShardRes: 7, Partitions: 6}
	center := geo.LatLng{Lat: 51.5072, Lng: -0.1276}
	rng := rand.New(rand.NewPCG(3, 4))
	cl := newCluster(t, pt, 2)
	cl.scatter(t, rng, center, 5000, 400)
	ctx := context.Background()
	byName := map[string]*shard{}
	for p, s := range cl.owner {
		byName[s.name] = s
		if err := reg.Publish(ctx, p, matcher.Owner{Addr: s.name, Fence: 1}); err != nil {
			t.Fatal(err)
		}
	}
	dial := func(addr string) (positions.Querier, error) {
		if s, ok := byName[addr]; ok {
			return s, nil
		}
		return nil, fmt.Errorf("unknown owner %s", addr)
	}
	res, err := matcher.NewResolver(reg, dial, matcher.DefaultResolverConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	cfg.MaxRing = 1
	cfg.Deadline = time.Minute // the dead owner fails at once, as a refused connection does
	g, err := matcher.NewGatherer(res, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	full, err := g.Gather(ctx, center, n)
	if err != nil || full.Partial {
		t.Fatalf("healthy gather: %+v, %v", full, err)
	}

	dead := cl.shards[1]
	dead.fail = errors.New("connection refused")
	part, err := g.Gather(ctx, center, n)
	if err != nil || !part.Partial {
		t.Fatalf("gather with a dead owner: %+v, %v", part, err)
	}
	// Rebalance: generation 2 gives every partition to shard0, which
	// rebuilds their indexes (here: copies them).
	live := cl.shards[0]
	for p, s := range cl.owner {
		if s == dead {
			live.indexes[p] = dead.indexes[p]
			cl.owner[p] = live
		}
		if err := reg.Publish(ctx, p, matcher.Owner{Addr: live.name, Fence: 2}); err != nil {
			t.Fatal(err)
		}
	}
	again, err := g.Gather(ctx, center, n)
	if err != nil || again.Partial {
		t.Fatalf("gather after rebalance: %+v, %v", again, err)
	}
	if !slices.Equal(ids(again.Candidates[:n]), ids(full.Candidates[:n])) {
		t.Fatalf("after rebalance %v, before %v", ids(again.Candidates[:n]), ids(full.Candidates[:n]))
	}
}

// TestGatherDedupesByFreshestSeq: a driver caught mid-handoff is in two
// shards; the gather keeps the fresher position only.
func TestGatherDedupesByFreshestSeq(t *testing.T) {
	pt := positions.Partitioner{ShardRes: 7, Partitions: 2}
	center := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	cl := newCluster(t, pt, 2)
	near, far := offset(center, 100, 0), offset(center, 900, 0)
	// Put the stale copy in one shard and the fresh one in the other,
	// whatever the partitions of the two points are.
	if _, err := cl.shards[0].index(t, 0).Upsert("d1", near, positions.StatusAvailable, 5, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.shards[1].index(t, 1).Upsert("d1", far, positions.StatusAvailable, 6, t0); err != nil {
		t.Fatal(err)
	}
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	cfg.Deadline = time.Minute // not a timing test
	g, err := matcher.NewGatherer(cl.owners(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.Gather(context.Background(), center, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 1 || res.Candidates[0].Seq != 6 {
		t.Fatalf("candidates %+v, want d1 once at seq 6", res.Candidates)
	}
}

func TestGatherInvalidInput(t *testing.T) {
	g, err := matcher.NewGatherer(matcher.StaticOwners{}, matcher.DefaultGatherConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []geo.LatLng{{Lat: 91}, {Lng: 181}} {
		if _, err := g.Gather(context.Background(), p, 1); !errors.Is(err, matcher.ErrInvalidQuery) {
			t.Errorf("Gather(%v): %v, want ErrInvalidQuery", p, err)
		}
	}
	if _, err := g.Gather(context.Background(), geo.LatLng{}, positions.MaxK); !errors.Is(err, matcher.ErrInvalidQuery) {
		t.Errorf("huge n: %v", err)
	}
	res, err := g.Gather(context.Background(), geo.LatLng{Lat: 1, Lng: 1}, 1)
	if err != nil || !res.Partial || len(res.Candidates) != 0 {
		t.Errorf("no owners at all: %+v, %v; want partial and empty", res, err)
	}
}

func TestGatherConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*matcher.GatherConfig)
		ok   bool
	}{
		{"default", func(*matcher.GatherConfig) {}, true},
		{"no partitions", func(c *matcher.GatherConfig) { c.Partitioner.Partitions = 0 }, false},
		{"shard finer than search", func(c *matcher.GatherConfig) { c.Partitioner.ShardRes = 8 }, false},
		{"n zero", func(c *matcher.GatherConfig) { c.MinCandidates = 0 }, false},
		{"ring zero", func(c *matcher.GatherConfig) { c.MaxRing = 0 }, false},
		{"radius zero", func(c *matcher.GatherConfig) { c.MaxRadiusM = 0 }, false},
		{"no deadline", func(c *matcher.GatherConfig) { c.Deadline = 0 }, false},
		{"negative slack", func(c *matcher.GatherConfig) { c.DupSlack = -1 }, false},
		{"no cache", func(c *matcher.GatherConfig) { c.PlanCache = 0 }, false},
	}
	for _, tt := range tests {
		c := matcher.DefaultGatherConfig()
		tt.mod(&c)
		if err := c.Validate(); (err == nil) != tt.ok || (err != nil && !errors.Is(err, matcher.ErrInvalidConfig)) {
			t.Errorf("%s: Validate = %v", tt.name, err)
		}
	}
}
