package matcher_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func newRegistry(t *testing.T, ttl time.Duration) (*matcher.Registry, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	cfg := matcher.DefaultRegistryConfig()
	cfg.TTL = ttl
	cfg.OpTimeout = 5 * time.Second // not a timing test
	reg, err := matcher.NewRegistry(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg, srv
}

func TestRegistryFence(t *testing.T) {
	reg, _ := newRegistry(t, time.Minute)
	ctx := context.Background()
	a := matcher.Owner{Addr: "10.0.0.1:7000", Fence: 5}
	b := matcher.Owner{Addr: "10.0.0.2:7000", Fence: 6}
	steps := []struct {
		name string
		p    positions.Partition
		o    matcher.Owner
		want error
	}{
		{"first owner", 0, a, nil},
		{"heartbeat", 0, a, nil},
		{"older generation", 0, matcher.Owner{Addr: b.Addr, Fence: 4}, matcher.ErrStaleOwner},
		{"newer generation takes over", 0, b, nil},
		{"late heartbeat of the old owner", 0, a, matcher.ErrStaleOwner},
		{"other partition is independent", 1, a, nil},
	}
	for _, s := range steps {
		if err := reg.Publish(ctx, s.p, s.o); !errors.Is(err, s.want) || (s.want == nil && err != nil) {
			t.Fatalf("%s: Publish = %v, want %v", s.name, err, s.want)
		}
	}
	got, err := reg.Resolve(ctx, []positions.Partition{0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != b || got[1] != a {
		t.Fatalf("Resolve = %v; want 0->%v, 1->%v", got, b, a)
	}
	if err := reg.Withdraw(ctx, 0, a); err != nil {
		t.Fatal(err)
	}
	if got, _ := reg.Resolve(ctx, []positions.Partition{0}); got[0] != b {
		t.Fatalf("the old owner's Withdraw removed the new owner: %v", got)
	}
	if err := reg.Withdraw(ctx, 0, b); err != nil {
		t.Fatal(err)
	}
	if got, _ := reg.Resolve(ctx, []positions.Partition{0}); len(got) != 0 {
		t.Fatalf("after Withdraw: %v", got)
	}
	if err := reg.Publish(ctx, 0, matcher.Owner{Addr: "a|b", Fence: 1}); !errors.Is(err, matcher.ErrInvalidConfig) {
		t.Fatalf("bad address: %v", err)
	}
}

func TestRegistryEntryExpires(t *testing.T) {
	reg, _ := newRegistry(t, 20*time.Millisecond)
	ctx := context.Background()
	if err := reg.Publish(ctx, 3, matcher.Owner{Addr: "w1", Fence: 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := reg.Resolve(ctx, []positions.Partition{3})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("owner without heartbeat did not expire")
		}
		time.Sleep(2 * time.Millisecond) // polling Redis's expiry with a deadline
	}
	// After expiry an older generation may publish again (the fence lives
	// in the entry; a dead owner leaves nothing behind).
	if err := reg.Publish(ctx, 3, matcher.Owner{Addr: "w0", Fence: 0}); err != nil {
		t.Fatal(err)
	}
}

// stubQuerier is a Querier that only records its name.
type stubQuerier struct{ name string }

func (s stubQuerier) Nearest(context.Context, positions.NearestRequest) (positions.NearestResponse, error) {
	return positions.NearestResponse{}, nil
}
func (s stubQuerier) CellCounts(context.Context, positions.CellCountsRequest) (positions.CellCountsResponse, error) {
	return positions.CellCountsResponse{}, nil
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestResolverCacheStaleAndRedisDown(t *testing.T) {
	reg, srv := newRegistry(t, time.Minute)
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	var dials atomic.Int32
	dial := func(addr string) (positions.Querier, error) {
		if addr == "unreachable" {
			return nil, errors.New("dial refused")
		}
		dials.Add(1)
		return stubQuerier{addr}, nil
	}
	cfg := matcher.DefaultResolverConfig()
	cfg.Now = clock.Now
	res, err := matcher.NewResolver(reg, dial, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for p, addr := range map[positions.Partition]string{0: "w1", 1: "w1", 2: "w2", 4: "unreachable"} {
		if err := reg.Publish(ctx, p, matcher.Owner{Addr: addr, Fence: 1}); err != nil {
			t.Fatal(err)
		}
	}
	groupsOf := func() (map[string][]positions.Partition, []positions.Partition) {
		groups, missing := res.Lookup(ctx, []positions.Partition{0, 1, 2, 3, 4})
		out := make(map[string][]positions.Partition)
		for _, g := range groups {
			if g.Querier.(stubQuerier).name != g.Owner {
				t.Fatalf("group %s has the querier of %s", g.Owner, g.Querier.(stubQuerier).name)
			}
			out[g.Owner] = g.Partitions
		}
		return out, missing
	}
	g, missing := groupsOf()
	if !slices.Equal(g["w1"], []positions.Partition{0, 1}) || !slices.Equal(g["w2"], []positions.Partition{2}) || !slices.Equal(missing, []positions.Partition{3, 4}) {
		t.Fatalf("Lookup = %v, missing %v", g, missing)
	}
	// A rebalance moves partition 1 to w2; the cache still says w1.
	if err := reg.Publish(ctx, 1, matcher.Owner{Addr: "w2", Fence: 2}); err != nil {
		t.Fatal(err)
	}
	if g, _ := groupsOf(); !slices.Equal(g["w1"], []positions.Partition{0, 1}) {
		t.Fatalf("within CacheTTL: %v", g)
	}
	// w1 says it does not own 1 any more: re-resolve only that one.
	res.Stale("w1", []positions.Partition{1})
	if got := res.Cached(); !slices.Equal(got, []positions.Partition{0, 2, 4}) {
		t.Fatalf("cached after Stale = %v", got)
	}
	if g, _ := groupsOf(); !slices.Equal(g["w1"], []positions.Partition{0}) || !slices.Equal(g["w2"], []positions.Partition{1, 2}) {
		t.Fatalf("after Stale: %v", g)
	}
	// Stale from an owner that is no longer cached for a partition does
	// not drop the new owner.
	res.Stale("w1", []positions.Partition{1})
	if got := res.Cached(); !slices.Contains(got, 1) {
		t.Fatalf("Stale by a former owner dropped the new owner: %v", got)
	}
	if d := dials.Load(); d != 2 {
		t.Fatalf("%d successful dials for 2 addresses; clients are not kept", d)
	}

	// Redis down: expired cache entries are still served.
	srv.Stop()
	clock.Advance(time.Hour)
	if _, err := res.Resolve(ctx, []positions.Partition{0}); !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Resolve with Redis down: %v", err)
	}
	if g, missing := groupsOf(); !slices.Equal(g["w1"], []positions.Partition{0}) || !slices.Equal(missing, []positions.Partition{3, 4}) {
		t.Fatalf("with Redis down: %v, missing %v", g, missing)
	}
	// The failure refreshed the stale entries: within CacheTTL nobody
	// asks the dead Redis again.
	if _, err := res.Resolve(ctx, []positions.Partition{0, 1, 2}); err != nil {
		t.Fatalf("Resolve from the refreshed cache: %v", err)
	}
}

func TestHeartbeatPublishesWithdrawsAndReportsLoss(t *testing.T) {
	reg, _ := newRegistry(t, 60*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	var ownedMu sync.Mutex
	ownedSet := map[positions.Partition]int64{7: 3, 8: 3, 9: 3}
	owned := func() map[positions.Partition]int64 {
		ownedMu.Lock()
		defer ownedMu.Unlock()
		return maps.Clone(ownedSet)
	}
	lostc := make(chan positions.Partition, 16)
	lost := func(p positions.Partition, err error) {
		if !errors.Is(err, matcher.ErrStaleOwner) {
			t.Errorf("lost %d with %v", p, err)
		}
		select {
		case lostc <- p:
		default:
		}
	}
	done := make(chan error, 1)
	go func() { done <- reg.Heartbeat(ctx, "w1", owned, lost) }()

	waitOwners := func(want map[positions.Partition]matcher.Owner) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := reg.Resolve(context.Background(), []positions.Partition{7, 8})
			if err == nil && len(got) == len(want) {
				same := true
				for p, o := range want {
					same = same && got[p] == o
				}
				if same {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("owners = %v, %v; want %v", got, err, want)
			}
			time.Sleep(2 * time.Millisecond) // polling with a deadline
		}
	}
	w1 := matcher.Owner{Addr: "w1", Fence: 3}
	w2 := matcher.Owner{Addr: "w2", Fence: 4}
	waitPart9 := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := reg.Resolve(context.Background(), []positions.Partition{9})
			if err == nil && (len(got) == 1) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("partition 9 owners = %v, %v; want present %v", got, err, want)
			}
			time.Sleep(2 * time.Millisecond) // polling with a deadline
		}
	}
	waitOwners(map[positions.Partition]matcher.Owner{7: w1, 8: w1})
	waitPart9(true)
	// The worker gives 9 up: the next beat withdraws it.
	ownedMu.Lock()
	delete(ownedSet, 9)
	ownedMu.Unlock()
	waitPart9(false)
	// A newer generation gives 8 to w2: w1's heartbeat is told it lost it
	// and cannot take it back.
	if err := reg.Publish(context.Background(), 8, w2); err != nil {
		t.Fatal(err)
	}
	if p := <-lostc; p != 8 {
		t.Fatalf("lost %d, want 8", p)
	}
	waitOwners(map[positions.Partition]matcher.Owner{7: w1, 8: w2})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Heartbeat returned %v", err)
	}
	got, err := reg.Resolve(context.Background(), []positions.Partition{7, 8})
	if err != nil || len(got) != 1 || got[8] != w2 {
		t.Fatalf("after shutdown: %v, %v; want only 8 -> w2", got, err)
	}
}

// TestHeartbeatOnChange: with a long TTL (beats a minute apart), a
// partition that becomes owned is published as soon as the worker signals
// the change, not at the next beat.
func TestHeartbeatOnChange(t *testing.T) {
	reg, _ := newRegistry(t, 3*time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	var ownedMu sync.Mutex
	ownedSet := map[positions.Partition]int64{}
	owned := func() map[positions.Partition]int64 {
		ownedMu.Lock()
		defer ownedMu.Unlock()
		return maps.Clone(ownedSet)
	}
	changed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() { done <- reg.HeartbeatOn(ctx, "w1", owned, nil, changed) }()
	time.Sleep(50 * time.Millisecond) // the first beat has nothing to publish
	ownedMu.Lock()
	ownedSet[4] = 2
	ownedMu.Unlock()
	changed <- struct{}{}
	deadline := time.Now().Add(10 * time.Second) // far below the minute to the next beat
	for {
		got, err := reg.Resolve(context.Background(), []positions.Partition{4})
		if err == nil && got[4] == (matcher.Owner{Addr: "w1", Fence: 2}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition 4 not published after the change signal: %v %v", got, err)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("HeartbeatOn returned %v", err)
	}
}
