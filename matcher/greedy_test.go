package matcher_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

var nyc = geo.LatLng{Lat: 40.7580, Lng: -73.9855}

// smallCity is n available drivers on a line east of nyc, 150 m apart,
// over 3 shards at shard res 7 (every cell edge is a shard edge).
func smallCity(t testing.TB, n int) (*cluster, *matcher.Gatherer) {
	t.Helper()
	pt := positions.Partitioner{ShardRes: 7, Partitions: 9}
	cl := newCluster(t, pt, 3)
	for i := range n {
		cl.add(t, positions.DriverID(fmt.Sprintf("d%02d", i)), offset(nyc, float64(150*(i+1)), 0), positions.StatusAvailable)
	}
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = pt
	cfg.MinCandidates = n
	cfg.Deadline = time.Minute // the tests below are about leases, not speed
	g, err := matcher.NewGatherer(cl.owners(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl, g
}

func newGreedy(t testing.TB, g *matcher.Gatherer, l *matcher.Leases, offer time.Duration) *matcher.Greedy {
	t.Helper()
	cfg := matcher.DefaultGreedyConfig()
	cfg.OfferTTL = offer
	cfg.MaxAttempts = 20
	m, err := matcher.NewGreedy(g, l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGreedyRanksByETAAndFallsBack(t *testing.T) {
	l, _, _ := newLeases(t)
	_, g := smallCity(t, 4)
	m := newGreedy(t, g, l, 0)
	ctx := context.Background()

	first, err := m.Match(ctx, matcher.MatchRequest{Ride: "r1", Pickup: nyc})
	if err != nil || first.Driver.ID != "d00" || first.Tried != 1 || first.Token <= 0 || first.ETA <= 0 {
		t.Fatalf("first match = %+v, %v; want d00 at the first try", first, err)
	}
	// d00 is this process's (a held hint): passed over without a Reserve.
	second, err := m.Match(ctx, matcher.MatchRequest{Ride: "r2", Pickup: nyc})
	if err != nil || second.Driver.ID != "d01" || second.Tried != 1 || l.Stats().Skipped != 1 {
		t.Fatalf("second match = %+v, %v, %d skipped; want d01 at the first try, d00 skipped on its hint", second, err, l.Stats().Skipped)
	}
	excl, err := m.Match(ctx, matcher.MatchRequest{Ride: "r3", Pickup: nyc, Exclude: []positions.DriverID{"d02"}})
	if err != nil || excl.Driver.ID != "d03" {
		t.Fatalf("match excluding d02 = %+v, %v; want d03", excl, err)
	}
	if _, err := m.Match(ctx, matcher.MatchRequest{Ride: "r4", Pickup: nyc, Exclude: []positions.DriverID{"d02"}}); !errors.Is(err, matcher.ErrNoDriver) {
		t.Fatalf("all taken: %v, want ErrNoDriver", err)
	}
	// A decline frees the driver for the next ride.
	if err := l.Release(ctx, second.Driver.ID, "r2", second.Token); err != nil {
		t.Fatal(err)
	}
	if again, err := m.Match(ctx, matcher.MatchRequest{Ride: "r4", Pickup: nyc}); err != nil || again.Driver.ID != "d01" {
		t.Fatalf("after decline = %+v, %v; want d01", again, err)
	}
}

// TestGreedyHeldHints: a driver another process leased costs one Reserve,
// after which this process passes it over; a hint that outlived the lease
// (freed by the other process) is still tried when nobody else is free,
// and a Release here drops the hint at once.
func TestGreedyHeldHints(t *testing.T) {
	here, srv, _ := newLeases(t)
	other := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { other.Close() })
	elsewhere, err := matcher.NewLeases(other, testLeaseConfig()) // another process
	if err != nil {
		t.Fatal(err)
	}
	_, g := smallCity(t, 2)
	m := newGreedy(t, g, here, 0)
	ctx := context.Background()

	tok, err := elsewhere.Reserve(ctx, "d00", "r-other", 0)
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Match(ctx, matcher.MatchRequest{Ride: "r1", Pickup: nyc})
	if err != nil || first.Driver.ID != "d01" || first.Tried != 2 || !here.Held("d00") {
		t.Fatalf("first = %+v, %v, d00 held %v; want d01 after one lost Reserve of d00, then d00 remembered", first, err, here.Held("d00"))
	}
	if err := elsewhere.Release(ctx, "d00", "r-other", tok); err != nil {
		t.Fatal(err)
	}
	// d01 is r1's, d00 free but remembered as taken: the hint is the last resort, not a veto.
	second, err := m.Match(ctx, matcher.MatchRequest{Ride: "r2", Pickup: nyc})
	if err != nil || second.Driver.ID != "d00" {
		t.Fatalf("second = %+v, %v; want the hinted d00, free again", second, err)
	}
	if err := here.Release(ctx, "d01", "r1", first.Token); err != nil {
		t.Fatal(err)
	}
	if here.Held("d01") {
		t.Fatal("d01 still held after this process released it")
	}
	skipped := here.Stats().Skipped
	third, err := m.Match(ctx, matcher.MatchRequest{Ride: "r3", Pickup: nyc})
	if err != nil || third.Driver.ID != "d01" || third.Tried != 1 || here.Stats().Skipped != skipped+1 {
		t.Fatalf("third = %+v, %v; want d01 at once, d00 (r2's) skipped on its hint", third, err)
	}
}

// TestGreedyWidensPastTakenDrivers: when the nearest few are all taken
// (by another process: no hint here), the match gathers a wider set and
// reserves the nearest free driver beyond them instead of answering "no
// driver".
func TestGreedyWidensPastTakenDrivers(t *testing.T) {
	here, srv, _ := newLeases(t)
	other := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { other.Close() })
	elsewhere, err := matcher.NewLeases(other, testLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	cl, g := smallCity(t, n)
	cfg := matcher.DefaultGatherConfig()
	cfg.Partitioner = positions.Partitioner{ShardRes: 7, Partitions: 9}
	cfg.MinCandidates = 3 // the first gather sees d00-d02 (and the slack)
	cfg.DupSlack = 0
	cfg.Deadline = time.Minute
	g, err = matcher.NewGatherer(cl.owners(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := newGreedy(t, g, here, 0)
	ctx := context.Background()
	for i := range 3 {
		if _, err := elsewhere.Reserve(ctx, positions.DriverID(fmt.Sprintf("d%02d", i)), "r-other", 0); err != nil {
			t.Fatal(err)
		}
	}
	got, err := m.Match(ctx, matcher.MatchRequest{Ride: "r1", Pickup: nyc})
	if err != nil || got.Driver.ID != "d03" || got.Tried != 4 || m.Widened() != 1 {
		t.Fatalf("match = %+v, %v, %d wider gathers; want d03 at the 4th try after one wider gather", got, err, m.Widened())
	}
	// Everybody taken: the wider gather finds fewer than it asked for, so
	// nobody more is in reach and the answer is no driver.
	for i := 4; i < n; i++ {
		if _, err := elsewhere.Reserve(ctx, positions.DriverID(fmt.Sprintf("d%02d", i)), "r-other", 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Match(ctx, matcher.MatchRequest{Ride: "r2", Pickup: nyc}); !errors.Is(err, matcher.ErrNoDriver) {
		t.Fatalf("all taken: %v, want ErrNoDriver", err)
	}
}

func TestRankByETA(t *testing.T) {
	cand := func(id string, m float64) positions.Candidate {
		return positions.Candidate{Driver: positions.Driver{ID: positions.DriverID(id), Pos: offset(nyc, m, 0)}, DistanceM: m}
	}
	cands := []positions.Candidate{cand("near", 100), cand("mid", 500), cand("far", 900), cand("tie", 500)}
	byDistance := matcher.Rank(cands, nyc, geo.DefaultETA.ETA)
	var got []positions.DriverID
	for _, r := range byDistance {
		got = append(got, r.ID)
	}
	if want := []positions.DriverID{"near", "mid", "tie", "far"}; !slices.Equal(got, want) {
		t.Fatalf("straight-line ranking %v, want %v", got, want)
	}
	// A road model where the far driver is on a fast road.
	fast := func(from, to geo.LatLng) time.Duration {
		if from == offset(nyc, 900, 0) {
			return time.Second
		}
		return geo.DefaultETA.ETA(from, to)
	}
	if r := matcher.Rank(cands, nyc, fast); r[0].ID != "far" || r[0].ETA != time.Second {
		t.Fatalf("custom ETA ranking starts with %+v, want far", r[0])
	}
}

// trip is a committed assignment a test goroutine still holds.
type trip struct {
	driver positions.DriverID
	ride   matcher.RideID
	token  matcher.Token
	left   int // iterations until the trip ends
}

// rider is one test matcher goroutine's loop body, shared by the
// concurrency and restart tests. It reports errors other than the
// expected ones (no driver, lease lost by a hasty offer, Redis down).
type rider struct {
	t       *testing.T
	id      int
	rng     *rand.Rand
	leases  *matcher.Leases
	normal  *matcher.Greedy
	hasty   *matcher.Greedy // 1 ms offers: commits race expiry
	log     *matcher.AssignmentLog
	trips   []trip
	n       int
	commits *atomic.Int64
	stale   *atomic.Int64
	down    *atomic.Int64
}

// retried calls f until it returns something other than ErrUnavailable
// or ctx ends, reporting in *again whether a second try was needed; a
// Redis restart makes an answer ambiguous, and Commit and Release are
// idempotent, so asking again gives the truth.
func retried(ctx context.Context, down *atomic.Int64, f func() error, again *bool) error {
	for {
		err := f()
		if !errors.Is(err, matcher.ErrUnavailable) || ctx.Err() != nil {
			return err
		}
		*again = true
		down.Add(1)
		time.Sleep(time.Millisecond) // backoff while Redis is down, not synchronisation
	}
}

// endTrips releases the trips that are over (all of them with all). A
// trip ends whatever happens to the matcher, so releases do not use the
// matcher's ctx; they retry until Redis answers.
func (r *rider) endTrips(all bool) {
	ctx := context.Background()
	kept := r.trips[:0]
	for _, tr := range r.trips {
		if tr.left > 0 && !all {
			tr.left--
			kept = append(kept, tr)
			continue
		}
		r.log.Released(tr.driver, tr.ride, tr.token) // before Release: see CheckNoDoubleAssignment
		// After an outage the first try may have freed the driver and lost
		// the answer, and another ride may have taken the driver since:
		// then ErrLeaseLost is the truth, not a failure.
		var again bool
		err := retried(ctx, r.down, func() error { return r.leases.Release(ctx, tr.driver, tr.ride, tr.token) }, &again)
		if err != nil && !(again && errors.Is(err, matcher.ErrLeaseLost)) {
			r.t.Errorf("rider %d: release of a committed trip %+v: %v", r.id, tr, err)
		}
	}
	r.trips = kept
}

func (r *rider) step(ctx context.Context) {
	r.endTrips(false)
	r.n++
	ride := matcher.RideID(fmt.Sprintf("g%d-%d", r.id, r.n))
	m, hasty := r.normal, r.rng.IntN(5) == 0
	if hasty {
		m = r.hasty
	}
	match, err := m.Match(ctx, matcher.MatchRequest{Ride: ride, Pickup: offset(nyc, r.rng.Float64()*1500, 0)})
	switch {
	case errors.Is(err, matcher.ErrNoDriver):
		return
	case errors.Is(err, matcher.ErrUnavailable):
		r.down.Add(1)
		return
	case ctx.Err() != nil:
		return
	case err != nil:
		r.t.Errorf("rider %d: match: %v", r.id, err)
		return
	}
	// An offer can expire while Redis is down (or, hasty, at once); then
	// ErrLeaseLost is the truth.
	var again bool
	if r.rng.IntN(5) == 0 { // decline
		err := retried(ctx, r.down, func() error { return r.leases.Release(ctx, match.Driver.ID, ride, match.Token) }, &again)
		if err != nil && !((hasty || again) && errors.Is(err, matcher.ErrLeaseLost)) && ctx.Err() == nil {
			r.t.Errorf("rider %d: decline: %v", r.id, err)
		}
		return
	}
	err = retried(ctx, r.down, func() error { return r.leases.Commit(ctx, match.Driver.ID, ride, match.Token) }, &again)
	switch {
	case err == nil:
		r.log.Committed(match.Driver.ID, ride, match.Token) // after Commit returned
		r.commits.Add(1)
		r.trips = append(r.trips, trip{driver: match.Driver.ID, ride: ride, token: match.Token, left: r.rng.IntN(4)})
	case errors.Is(err, matcher.ErrLeaseLost) && (hasty || again):
		r.stale.Add(1)
	case ctx.Err() != nil:
	default:
		r.t.Errorf("rider %d: commit of %+v: %v", r.id, match, err)
	}
}

func assertAllFree(t *testing.T, l *matcher.Leases, n int) {
	t.Helper()
	for i := range n {
		d := positions.DriverID(fmt.Sprintf("d%02d", i))
		if h, ok, err := l.Holder(context.Background(), d); err != nil || (ok && h.Committed) {
			t.Errorf("driver %s still held after every trip ended: %+v, %v", d, h, err)
		}
	}
}

// TestGreedyConcurrentNeverAssignsADriverTwice: 50 matchers compete for 10
// drivers over many rounds, with declines, trips of random length and
// hasty offers whose commits race their expiry; the invariant checker
// proves no driver was committed to two rides at once and no ride got two
// drivers.
func TestGreedyConcurrentNeverAssignsADriverTwice(t *testing.T) {
	l, _, _ := newLeases(t)
	_, g := smallCity(t, 10)
	normal, hasty := newGreedy(t, g, l, 5*time.Second), newGreedy(t, g, l, time.Millisecond)
	s := seed(t)
	var log matcher.AssignmentLog
	var commits, stale, down atomic.Int64
	const riders, rounds = 50, 30
	ctx := context.Background()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range riders {
		r := &rider{t: t, id: i, rng: rand.New(rand.NewPCG(s, uint64(i))), leases: l, normal: normal, hasty: hasty,
			log: &log, commits: &commits, stale: &stale, down: &down}
		wg.Go(func() {
			<-start
			for range rounds {
				r.step(ctx)
			}
			r.endTrips(true)
		})
	}
	close(start)
	wg.Wait()
	if err := log.Check(); err != nil {
		t.Fatalf("invariant: %v", err)
	}
	t.Logf("%d commits, %d hasty commits lost to expiry, %d events", commits.Load(), stale.Load(), len(log.Events()))
	if commits.Load() < 10 {
		t.Fatalf("only %d commits: the test did not exercise contention", commits.Load())
	}
	if down.Load() != 0 {
		t.Fatalf("%d Redis errors with Redis up", down.Load())
	}
	assertAllFree(t, l, 10)
}

// TestGreedySurvivesRedisRestart: matchers run while Redis (append-only,
// as production runs it) is stopped and restarted. Errors during the
// outage are ErrUnavailable, never a silent double assignment, and
// matching resumes after the restart.
func TestGreedySurvivesRedisRestart(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{AppendOnly: true})
	rdb := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	l, err := matcher.NewLeases(rdb, testLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	_, g := smallCity(t, 10)
	normal, hasty := newGreedy(t, g, l, 2*time.Second), newGreedy(t, g, l, time.Millisecond)
	s := seed(t)
	var log matcher.AssignmentLog
	var commits, stale, down atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := range 20 {
		r := &rider{t: t, id: i, rng: rand.New(rand.NewPCG(s, uint64(i))), leases: l, normal: normal, hasty: hasty,
			log: &log, commits: &commits, stale: &stale, down: &down}
		wg.Go(func() {
			for ctx.Err() == nil {
				r.step(ctx)
			}
			r.endTrips(true)
		})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				cancel()
				wg.Wait()
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond) // polling counters with a deadline
		}
	}
	waitFor("commits before the outage", func() bool { return commits.Load() >= 50 })
	srv.Stop()
	waitFor("riders to see the outage", func() bool { return down.Load() >= 40 })
	before := commits.Load()
	srv.Restart()
	waitFor("commits after the restart", func() bool { return commits.Load() >= before+50 })
	cancel()
	wg.Wait()
	if err := log.Check(); err != nil {
		t.Fatalf("invariant: %v", err)
	}
	t.Logf("%d commits (%d after the restart), %d Redis errors seen during the outage, %d hasty commits lost", commits.Load(), commits.Load()-before, down.Load(), stale.Load())
	assertAllFree(t, l, 10)
}

func TestGreedyRedisDownFailsFast(t *testing.T) {
	l, srv, _ := newLeases(t)
	_, g := smallCity(t, 5)
	m := newGreedy(t, g, l, 0)
	srv.Stop()
	start := time.Now()
	match, err := m.Match(context.Background(), matcher.MatchRequest{Ride: "r1", Pickup: nyc})
	t.Logf("match with Redis down failed in %v: %v", time.Since(start), err)
	if !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Match = %+v, %v; want ErrUnavailable", match, err)
	}
	if match.Tried != 1 {
		t.Fatalf("tried %d reservations with Redis down, want 1 (fail fast)", match.Tried)
	}
	srv.Restart()
	if _, err := m.Match(context.Background(), matcher.MatchRequest{Ride: "r1", Pickup: nyc}); err != nil {
		t.Fatalf("Match after restart: %v", err)
	}
}

func TestGreedyConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*matcher.GreedyConfig)
		ok   bool
	}{
		{"default", func(*matcher.GreedyConfig) {}, true},
		{"no eta", func(c *matcher.GreedyConfig) { c.ETA = nil }, false},
		{"negative offer", func(c *matcher.GreedyConfig) { c.OfferTTL = -1 }, false},
		{"no attempts", func(c *matcher.GreedyConfig) { c.MaxAttempts = 0 }, false},
	}
	for _, tt := range tests {
		c := matcher.DefaultGreedyConfig()
		tt.mod(&c)
		if err := c.Validate(); (err == nil) != tt.ok || (err != nil && !errors.Is(err, matcher.ErrInvalidConfig)) {
			t.Errorf("%s: Validate = %v", tt.name, err)
		}
	}
}
