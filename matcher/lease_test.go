package matcher_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// seed returns SEED from the environment or a fresh one, and logs it so a
// failure can be replayed with SEED=<n>.
func seed(t testing.TB) uint64 {
	t.Helper()
	s := rand.Uint64()
	if v := os.Getenv("SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", v, err)
		}
		s = n
	}
	t.Logf("seed %d (replay with SEED=%d)", s, s)
	return s
}

// testRedisOptions are FailFastOptions with timeouts that a loaded CI
// machine running -race meets: a refused connection still fails at once,
// but a slow answer is not taken for an outage.
func testRedisOptions(addr string) *redis.Options {
	o := matcher.FailFastOptions(addr)
	o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	return o
}

// testLeaseConfig is DefaultLeaseConfig with the same allowance.
func testLeaseConfig() matcher.LeaseConfig {
	c := matcher.DefaultLeaseConfig()
	c.OpTimeout = 5 * time.Second
	return c
}

func newLeases(t testing.TB) (*matcher.Leases, *redistest.Server, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(testRedisOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	l, err := matcher.NewLeases(rdb, testLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	return l, srv, rdb
}

// waitFree polls until driver has no lease (a short lease expiring in
// Redis), failing after a generous deadline.
func waitFree(t *testing.T, l *matcher.Leases, d positions.DriverID) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok, err := l.Holder(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease of %s did not expire", d)
		}
		time.Sleep(2 * time.Millisecond) // polling Redis's clock with a deadline
	}
}

func TestLeaseLifecycle(t *testing.T) {
	l, _, _ := newLeases(t)
	ctx := context.Background()
	const d = positions.DriverID("d1")

	tok, err := l.Reserve(ctx, d, "r1", 0)
	if err != nil || tok <= 0 {
		t.Fatalf("Reserve = %d, %v", tok, err)
	}
	if again, err := l.Reserve(ctx, d, "r1", 0); err != nil || again != tok {
		t.Fatalf("retried Reserve by the same ride = %d, %v; want %d", again, err, tok)
	}
	if _, err := l.Reserve(ctx, d, "r2", 0); !errors.Is(err, matcher.ErrDriverTaken) {
		t.Fatalf("Reserve by another ride: %v, want ErrDriverTaken", err)
	}
	h, ok, err := l.Holder(ctx, d)
	if err != nil || !ok || h.Ride != "r1" || h.Token != tok || h.Committed || h.TTL <= 0 {
		t.Fatalf("Holder = %+v, %v, %v", h, ok, err)
	}
	if err := l.Commit(ctx, d, "r2", tok); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("Commit by another ride with the token: %v", err)
	}
	if err := l.Commit(ctx, d, "r1", tok+1); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("Commit with a wrong token: %v", err)
	}
	if err := l.Commit(ctx, d, "r1", tok); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := l.Commit(ctx, d, "r1", tok); err != nil {
		t.Fatalf("retried Commit: %v", err)
	}
	h, ok, err = l.Holder(ctx, d)
	if err != nil || !ok || !h.Committed || h.TTL < time.Hour {
		t.Fatalf("Holder after commit = %+v, %v, %v; want the trip lock", h, ok, err)
	}
	if _, err := l.Reserve(ctx, d, "r1", 0); !errors.Is(err, matcher.ErrDriverTaken) {
		t.Fatalf("Reserve of a driver on a trip, same ride: %v", err)
	}
	if _, err := l.Reserve(ctx, d, "r3", 0); !errors.Is(err, matcher.ErrDriverTaken) {
		t.Fatalf("Reserve of a driver on a trip: %v", err)
	}
	if err := l.Release(ctx, d, "r1", tok-1); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("Release with a stale token: %v", err)
	}
	if err := l.Release(ctx, d, "r1", tok); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, ok, _ := l.Holder(ctx, d); ok {
		t.Fatal("driver still held after Release")
	}
	tok2, err := l.Reserve(ctx, d, "r3", 0)
	if err != nil || tok2 <= tok {
		t.Fatalf("Reserve after release = %d, %v; want a token above %d", tok2, err, tok)
	}
	// Decline: release an offer; a retried release succeeds too.
	if err := l.Release(ctx, d, "r3", tok2); err != nil {
		t.Fatalf("Release of an offer: %v", err)
	}
	if err := l.Release(ctx, d, "r3", tok2); err != nil {
		t.Fatalf("retried Release: %v", err)
	}
	st := l.Stats()
	if st.Reserved != 3 || st.Taken != 3 || st.Committed != 2 || st.CommitLost != 2 || st.Released != 3 || st.ReleaseLost != 1 || st.Unavailable != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLeaseInvalidInput(t *testing.T) {
	l, _, _ := newLeases(t)
	ctx := context.Background()
	long := positions.DriverID(fmt.Sprintf("%065d", 0))
	tests := []struct {
		name   string
		driver positions.DriverID
		ride   matcher.RideID
		want   error
	}{
		{"empty driver", "", "r", positions.ErrInvalidDriver},
		{"long driver", long, "r", positions.ErrInvalidDriver},
		{"empty ride", "d", "", matcher.ErrInvalidRide},
		{"separator in ride", "d", "a|b", matcher.ErrInvalidRide},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := l.Reserve(ctx, tt.driver, tt.ride, 0); !errors.Is(err, tt.want) {
				t.Errorf("Reserve: %v, want %v", err, tt.want)
			}
			if err := l.Commit(ctx, tt.driver, tt.ride, 1); !errors.Is(err, tt.want) {
				t.Errorf("Commit: %v, want %v", err, tt.want)
			}
			if err := l.Release(ctx, tt.driver, tt.ride, 1); !errors.Is(err, tt.want) {
				t.Errorf("Release: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestReserveExactlyOneWinner races many rides for one driver, round after
// round, with the start order shuffled by the seed.
func TestReserveExactlyOneWinner(t *testing.T) {
	l, _, _ := newLeases(t)
	rng := rand.New(rand.NewPCG(seed(t), 0))
	ctx := context.Background()
	const riders, rounds = 40, 30
	for round := range rounds {
		d := positions.DriverID("d" + strconv.Itoa(round%3))
		order := rng.Perm(riders)
		start := make(chan struct{})
		tokens := make([]matcher.Token, riders)
		errs := make([]error, riders)
		var wg sync.WaitGroup
		for _, i := range order {
			wg.Go(func() {
				<-start
				ride := matcher.RideID(fmt.Sprintf("r%d-%d", round, i))
				tokens[i], errs[i] = l.Reserve(ctx, d, ride, 0)
				if errs[i] == nil {
					errs[i] = l.Commit(ctx, d, ride, tokens[i])
				}
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: rides %d and %d both won driver %s", round, winner, i, d)
			case err == nil:
				winner = i
			case !errors.Is(err, matcher.ErrDriverTaken):
				t.Fatalf("round %d: ride %d: %v", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won driver %s", round, d)
		}
		h, ok, err := l.Holder(ctx, d)
		if err != nil || !ok || !h.Committed || h.Token != tokens[winner] || h.Ride != matcher.RideID(fmt.Sprintf("r%d-%d", round, winner)) {
			t.Fatalf("round %d: holder %+v, %v, %v; want ride %d", round, h, ok, err, winner)
		}
		if err := l.Release(ctx, d, h.Ride, h.Token); err != nil {
			t.Fatalf("round %d: release: %v", round, err)
		}
	}
}

func TestStaleTokenCannotCommitAfterExpiry(t *testing.T) {
	l, _, _ := newLeases(t)
	ctx := context.Background()
	const d = positions.DriverID("d1")
	old, err := l.Reserve(ctx, d, "slow", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitFree(t, l, d)
	if err := l.Commit(ctx, d, "slow", old); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("Commit after expiry: %v, want ErrLeaseLost", err)
	}
	cur, err := l.Reserve(ctx, d, "fast", 0)
	if err != nil || cur <= old {
		t.Fatalf("re-Reserve = %d, %v; want a token above %d", cur, err, old)
	}
	// The stale holder comes back: it can neither commit nor free the
	// driver.
	if err := l.Commit(ctx, d, "slow", old); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("stale Commit: %v, want ErrLeaseLost", err)
	}
	if err := l.Release(ctx, d, "slow", old); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("stale Release: %v, want ErrLeaseLost", err)
	}
	if err := l.Commit(ctx, d, "fast", cur); err != nil {
		t.Fatalf("current Commit: %v", err)
	}
}

func TestRedisDownFailsFast(t *testing.T) {
	l, srv, _ := newLeases(t)
	ctx := context.Background()
	const d = positions.DriverID("d1")
	tok, err := l.Reserve(ctx, d, "r1", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	start := time.Now()
	_, err = l.Reserve(ctx, d, "r2", 0)
	t.Logf("Reserve with Redis down failed in %v: %v", time.Since(start), err)
	if !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Reserve: %v, want ErrUnavailable", err)
	}
	if err := l.Commit(ctx, d, "r1", tok); !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Commit: %v, want ErrUnavailable", err)
	}
	if err := l.Release(ctx, d, "r1", tok); !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Release: %v, want ErrUnavailable", err)
	}
	if _, _, err := l.Holder(ctx, d); !errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Holder: %v, want ErrUnavailable", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Reserve(cctx, d, "r2", 0); !errors.Is(err, context.Canceled) || errors.Is(err, matcher.ErrUnavailable) {
		t.Fatalf("Reserve with a cancelled ctx: %v, want context.Canceled only", err)
	}

	// The restart lost the data (no persistence): the old token must not
	// commit, and new tokens keep growing (the fence is seeded from the
	// clock).
	srv.Restart()
	if err := l.Commit(ctx, d, "r1", tok); !errors.Is(err, matcher.ErrLeaseLost) {
		t.Fatalf("Commit of a pre-restart token: %v, want ErrLeaseLost", err)
	}
	tok2, err := l.Reserve(ctx, d, "r2", 0)
	if err != nil {
		t.Fatalf("Reserve after restart: %v", err)
	}
	if tok2 <= tok {
		t.Fatalf("token after restart %d is not above %d", tok2, tok)
	}
}

func TestLeaseConfigValidate(t *testing.T) {
	ok := matcher.DefaultLeaseConfig()
	tests := []struct {
		name string
		mod  func(*matcher.LeaseConfig)
		ok   bool
	}{
		{"default", func(*matcher.LeaseConfig) {}, true},
		{"zero offer", func(c *matcher.LeaseConfig) { c.OfferTTL = 0 }, false},
		{"trip shorter than offer", func(c *matcher.LeaseConfig) { c.TripTTL = time.Second }, false},
		{"no op timeout", func(c *matcher.LeaseConfig) { c.OpTimeout = 0 }, false},
	}
	for _, tt := range tests {
		c := ok
		tt.mod(&c)
		if err := c.Validate(); (err == nil) != tt.ok || (err != nil && !errors.Is(err, matcher.ErrInvalidConfig)) {
			t.Errorf("%s: Validate = %v", tt.name, err)
		}
	}
}

func TestLeaseBreakerOpensAndRecovers(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(matcher.FailFastOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	cfg := matcher.DefaultLeaseConfig()
	cfg.BreakerFailures, cfg.BreakerCooldown, cfg.BreakerSpan, cfg.Now = 3, time.Second, 0, clock.Now
	l, err := matcher.NewLeases(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reserve := func() error {
		_, err := l.Reserve(ctx, "d1", matcher.RideID(fmt.Sprintf("r%d", time.Now().UnixNano())), 0)
		if errors.Is(err, matcher.ErrDriverTaken) {
			return nil // Redis answered
		}
		return err
	}
	if err := reserve(); err != nil {
		t.Fatal(err)
	}
	if got := l.RetryAfter(); got != time.Second {
		t.Fatalf("RetryAfter while closed = %v, want one cooldown", got)
	}
	srv.Stop()
	for i := range 3 {
		if err := reserve(); !errors.Is(err, matcher.ErrUnavailable) || strings.Contains(err.Error(), "circuit") {
			t.Fatalf("failure %d: %v, want a Redis error", i, err)
		}
	}
	if err := reserve(); !errors.Is(err, matcher.ErrUnavailable) || !strings.Contains(err.Error(), "circuit open") {
		t.Fatalf("after 3 failures: %v, want the breaker open", err)
	}
	clock.Advance(300 * time.Millisecond)
	if got := l.RetryAfter(); got != 700*time.Millisecond {
		t.Fatalf("RetryAfter = %v, want the rest of the cooldown", got)
	}
	srv.Restart()
	if err := reserve(); !strings.Contains(fmt.Sprint(err), "circuit open") {
		t.Fatalf("Redis back but cooldown not over: %v, want still open", err)
	}
	clock.Advance(time.Second)
	if err := reserve(); err != nil {
		t.Fatalf("half-open probe: %v", err)
	}
	if err := reserve(); err != nil {
		t.Fatalf("after a good probe: %v", err)
	}
	// A failed probe opens the breaker again at once.
	srv.Stop()
	for range 3 {
		reserve()
	}
	clock.Advance(2 * time.Second)
	if err := reserve(); !errors.Is(err, matcher.ErrUnavailable) || strings.Contains(err.Error(), "circuit") {
		t.Fatalf("probe: %v, want a Redis error", err)
	}
	if err := reserve(); !strings.Contains(fmt.Sprint(err), "circuit open") {
		t.Fatalf("after a failed probe: %v, want open", err)
	}
	if st := l.Stats(); st.Unavailable != 10 {
		t.Fatalf("stats %+v, want 10 unavailable", st)
	}
}

// TestLeaseBreakerSpan: failures that land together (calls in flight
// through one stall of the process) do not open the breaker; a streak
// that lasts BreakerSpan does, and a success ends the streak.
func TestLeaseBreakerSpan(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(matcher.FailFastOptions(srv.Addr))
	t.Cleanup(func() { rdb.Close() })
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	cfg := matcher.DefaultLeaseConfig()
	cfg.BreakerFailures, cfg.BreakerCooldown, cfg.BreakerSpan, cfg.Now = 3, time.Second, 250*time.Millisecond, clock.Now
	l, err := matcher.NewLeases(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := 0
	reserve := func() error {
		n++
		_, err := l.Reserve(ctx, "d1", matcher.RideID("r"+strconv.Itoa(n)), 0)
		if errors.Is(err, matcher.ErrDriverTaken) {
			return nil // Redis answered
		}
		return err
	}
	wantRedisErr := func(what string) {
		t.Helper()
		if err := reserve(); !errors.Is(err, matcher.ErrUnavailable) || strings.Contains(err.Error(), "circuit") {
			t.Fatalf("%s: %v, want a Redis error with the breaker closed", what, err)
		}
	}
	srv.Stop()
	for i := range 6 {
		wantRedisErr(fmt.Sprintf("failure %d at one instant", i))
	}
	clock.Advance(100 * time.Millisecond)
	wantRedisErr("failure 100 ms into the streak")
	clock.Advance(200 * time.Millisecond)
	wantRedisErr("the failure that spans 300 ms") // observed after the call: it opens
	if err := reserve(); !strings.Contains(fmt.Sprint(err), "circuit open") {
		t.Fatalf("after a 300 ms streak: %v, want the breaker open", err)
	}

	// A success in between starts the count again.
	srv.Restart()
	clock.Advance(2 * time.Second)
	if err := reserve(); err != nil {
		t.Fatalf("half-open probe: %v", err)
	}
	srv.Stop()
	wantRedisErr("first failure of a new streak")
	clock.Advance(time.Second)
	srv.Restart()
	if err := reserve(); err != nil {
		t.Fatalf("Redis back: %v", err)
	}
	srv.Stop()
	for i := range 2 {
		wantRedisErr(fmt.Sprintf("failure %d after a success", i))
	}
}
