package matcher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/positions"
)

// RideID identifies a ride. It mirrors dispatch.RideID (matcher sits below
// dispatch and cannot import it); dispatch converts.
type RideID string

// MaxRideIDLen bounds a RideID.
const MaxRideIDLen = 64

// Validate checks id at the boundary. '|' is reserved: it separates the
// fields of a lease value.
func (id RideID) Validate() error {
	switch {
	case id == "":
		return fmt.Errorf("%w: ride id is empty", ErrInvalidRide)
	case len(id) > MaxRideIDLen:
		return fmt.Errorf("%w: ride id is %d bytes, more than %d", ErrInvalidRide, len(id), MaxRideIDLen)
	case strings.ContainsRune(string(id), '|'):
		return fmt.Errorf("%w: ride id %q contains '|'", ErrInvalidRide, id)
	}
	return nil
}

// Token is a fencing token: it grows with every reservation of a driver,
// so a holder whose lease expired and was re-taken cannot act on it.
// Downstream writes about the assignment carry it.
type Token int64

// LeaseConfig configures Leases.
type LeaseConfig struct {
	// KeyPrefix starts every key Leases writes.
	KeyPrefix string
	// OfferTTL is how long a reservation holds a driver when Reserve is
	// given no ttl: the offer timeout. An offer the driver neither accepts
	// nor declines frees the driver by expiry.
	OfferTTL time.Duration
	// TripTTL is the expiry of a committed lease, the trip lock. Finishing
	// the trip releases it; the TTL only bounds the damage of a release
	// that never came.
	TripTTL time.Duration
	// OpTimeout bounds every Redis call, so that a Redis that is down or
	// stalled fails a ride request fast (ErrUnavailable) instead of holding
	// it for the client's own timeouts.
	OpTimeout time.Duration
	// BreakerFailures consecutive failures to reach Redis open a circuit
	// breaker for BreakerCooldown: calls then fail at once (ErrUnavailable)
	// instead of each waiting up to OpTimeout on a black-holed Redis, and
	// a recovering Redis is not hit by every queued request at once. Zero
	// turns the breaker off.
	BreakerFailures int
	BreakerCooldown time.Duration
	// BreakerSpan is how long a streak of failures must last before it
	// opens the breaker: calls that time out together in one stall of
	// this process count as one failure of the store, not several (see
	// breaker). Zero lets the count alone open it.
	BreakerSpan time.Duration
	// HeldHint is how long this process remembers a driver it saw leased
	// (its own offers and trip locks, and reservations that lost to
	// another ride), so that a match skips the driver without a round trip
	// to Redis: drivers on a trip stay available in the index until their
	// app reports so, and at hundreds of rides a second the best-ranked of
	// them are mostly someone's already. A hint only: Redis stays the
	// authority, a driver nobody remembers costs one Reserve, and one
	// remembered after it was freed elsewhere is skipped for at most this
	// long (and still tried when no other candidate is left). Zero turns
	// the hints off.
	HeldHint time.Duration
	// Now is the breaker's and the hints' clock.
	Now func() time.Time
}

// DefaultLeaseConfig returns a 15 s offer, a 6 h trip lock and 250 ms per
// Redis call.
func DefaultLeaseConfig() LeaseConfig {
	return LeaseConfig{
		KeyPrefix: "hexd:", OfferTTL: 15 * time.Second, TripTTL: 6 * time.Hour, OpTimeout: 250 * time.Millisecond,
		BreakerFailures: 5, BreakerCooldown: time.Second, BreakerSpan: 250 * time.Millisecond, HeldHint: 5 * time.Second, Now: time.Now,
	}
}

// Validate checks c.
func (c LeaseConfig) Validate() error {
	switch {
	case c.OfferTTL < time.Millisecond:
		return fmt.Errorf("%w: OfferTTL %v must be at least 1ms", ErrInvalidConfig, c.OfferTTL)
	case c.TripTTL < c.OfferTTL:
		return fmt.Errorf("%w: TripTTL %v is shorter than OfferTTL %v", ErrInvalidConfig, c.TripTTL, c.OfferTTL)
	case c.OpTimeout <= 0:
		return fmt.Errorf("%w: OpTimeout %v must be positive", ErrInvalidConfig, c.OpTimeout)
	case c.BreakerFailures < 0:
		return fmt.Errorf("%w: BreakerFailures %d is negative", ErrInvalidConfig, c.BreakerFailures)
	case c.BreakerFailures > 0 && c.BreakerCooldown <= 0:
		return fmt.Errorf("%w: BreakerCooldown %v must be positive with a breaker", ErrInvalidConfig, c.BreakerCooldown)
	case c.BreakerFailures > 0 && c.Now == nil:
		return fmt.Errorf("%w: Now is nil", ErrInvalidConfig)
	case c.HeldHint < 0:
		return fmt.Errorf("%w: HeldHint %v is negative", ErrInvalidConfig, c.HeldHint)
	case c.HeldHint > 0 && c.Now == nil:
		return fmt.Errorf("%w: Now is nil", ErrInvalidConfig)
	case c.BreakerSpan < 0:
		return fmt.Errorf("%w: BreakerSpan %v is negative", ErrInvalidConfig, c.BreakerSpan)
	}
	return nil
}

// FailFastOptions returns go-redis options for addr tuned for the ride
// path: short dial, read and pool timeouts and one retry, so that a dead
// Redis costs a ride request a few hundred milliseconds, not seconds.
//
// The pool is larger than go-redis's default (10 per GOMAXPROCS): a
// connection stays taken until its goroutine runs again to read the
// reply, so on a busy process (two cores, hundreds of rides in flight,
// each a few round trips) twenty were all taken and calls failed with a
// pool timeout while Redis itself idled. Connections are dialled as
// needed and close after go-redis's idle timeout; none are kept warm,
// since a pool that redials in the background while Redis is down keeps
// failing after Redis is back until its dial backoff ends.
//
// RESP2: on RESP3 go-redis looks for push notifications on the connection
// before every command (a read that finds nothing, 2% of the engine's CPU
// under match-e2e), and nothing here subscribes, tracks keys or reads a
// reply RESP2 lacks.
func FailFastOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		Protocol:              2,
		PoolSize:              64,
		DialTimeout:           200 * time.Millisecond,
		DialerRetries:         1,
		ReadTimeout:           200 * time.Millisecond,
		WriteTimeout:          200 * time.Millisecond,
		PoolTimeout:           200 * time.Millisecond,
		MaxRetries:            1,
		ContextTimeoutEnabled: true,
	}
}

// Leases reserves drivers for rides, exactly one ride per driver at a time.
//
// A driver's lease is one Redis key holding "state|token|ride":
//
//   - Reserve takes it when absent (SET NX PX, inside a script that first
//     draws the token with INCR) in state "o" (offered) for the offer
//     timeout.
//   - Commit turns the caller's offered lease into the trip lock (state
//     "c", TripTTL) with a compare-and-set: only the current token for the
//     same ride succeeds. The lease itself is the persisted assignment: no
//     second key can disagree with it, and while it exists no other ride
//     can reserve the driver.
//   - Release deletes the lease with a compare-and-delete (decline, cancel,
//     trip finished); a stale token deletes nothing.
//
// Keys of one driver share a hash tag, so the scripts work on Redis
// Cluster. The token counter is seeded from Redis's clock in milliseconds
// the first time it is used, so tokens keep growing across a restart that
// lost the data (unless a driver was reserved more than once a millisecond,
// which the offer flow cannot do). The ride in the value makes a token from
// before a restart useless for another ride even if numbers collided.
//
// A Redis without persistence loses trip locks on restart; production runs
// it with appendonly, and the matcher's Available filter (drivers on a trip
// report on_trip) is the second guard.
//
// Leases is safe for concurrent use. All lease state lives in Redis; the
// process keeps only hints (see LeaseConfig.HeldHint).
type Leases struct {
	rdb     redis.UniversalClient
	cfg     LeaseConfig
	stats   leaseCounters
	breaker *breaker // nil: off

	// heldMu guards held: drivers seen leased, until when (HeldHint).
	heldMu sync.Mutex
	held   map[positions.DriverID]time.Time
	hinted int // held entries added since the last prune
}

// LeaseStats counts lease outcomes since Leases was made; cmd exports
// them as Prometheus counters.
type LeaseStats struct {
	Reserved, Taken       uint64 // Reserve: won, lost to another ride
	Committed, CommitLost uint64 // Commit: won, token not current
	Released, ReleaseLost uint64 // Release: done (or nothing left), another holder
	Unavailable           uint64 // any call that failed to reach Redis
	Skipped               uint64 // candidates a match passed over on a HeldHint
}

type leaseCounters struct {
	reserved, taken, committed, commitLost, released, releaseLost, unavailable, skipped atomic.Uint64
}

// Stats returns the counters.
func (l *Leases) Stats() LeaseStats {
	c := &l.stats
	return LeaseStats{
		Reserved: c.reserved.Load(), Taken: c.taken.Load(),
		Committed: c.committed.Load(), CommitLost: c.commitLost.Load(),
		Released: c.released.Load(), ReleaseLost: c.releaseLost.Load(),
		Unavailable: c.unavailable.Load(), Skipped: c.skipped.Load(),
	}
}

// hint remembers driver as leased for HeldHint, or for d when shorter.
func (l *Leases) hint(driver positions.DriverID, d time.Duration) {
	if l.cfg.HeldHint <= 0 {
		return
	}
	now := l.cfg.Now()
	l.heldMu.Lock()
	defer l.heldMu.Unlock()
	if l.held == nil {
		l.held = make(map[positions.DriverID]time.Time)
	}
	if l.hinted++; l.hinted >= 1024 && l.hinted >= len(l.held)/2 { // keep the map to the drivers hinted lately
		l.hinted = 0
		for id, until := range l.held {
			if !now.Before(until) {
				delete(l.held, id)
			}
		}
	}
	l.held[driver] = now.Add(min(d, l.cfg.HeldHint))
}

// forget drops driver's hint: this process released its lease.
func (l *Leases) forget(driver positions.DriverID) {
	if l.cfg.HeldHint <= 0 {
		return
	}
	l.heldMu.Lock()
	delete(l.held, driver)
	l.heldMu.Unlock()
}

// Held reports whether this process saw driver leased within HeldHint
// (see LeaseConfig.HeldHint): a hint, not the lease's state in Redis.
func (l *Leases) Held(driver positions.DriverID) bool {
	if l.cfg.HeldHint <= 0 {
		return false
	}
	now := l.cfg.Now()
	l.heldMu.Lock()
	until, ok := l.held[driver]
	l.heldMu.Unlock()
	return ok && now.Before(until)
}

// NewLeases returns Leases over rdb.
func NewLeases(rdb redis.UniversalClient, cfg LeaseConfig) (*Leases, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidConfig)
	}
	l := &Leases{rdb: rdb, cfg: cfg}
	if cfg.BreakerFailures > 0 {
		l.breaker = &breaker{failures: cfg.BreakerFailures, cooldown: cfg.BreakerCooldown, span: cfg.BreakerSpan, now: cfg.Now}
	}
	return l, nil
}

// RetryAfter is how long a client told ErrUnavailable should wait before
// trying again (the API's Retry-After): the rest of the breaker's cooldown
// while it is open, else one cooldown (or a second without a breaker).
func (l *Leases) RetryAfter() time.Duration {
	if d := l.breaker.retryAfter(); d > 0 {
		return d
	}
	if l.breaker != nil {
		return l.cfg.BreakerCooldown
	}
	return time.Second
}

// do runs one Redis call under OpTimeout and the breaker.
func (l *Leases) do(ctx context.Context, f func(ctx context.Context) error) error {
	if _, err := l.breaker.admit(); err != nil {
		l.stats.unavailable.Add(1)
		return err
	}
	octx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
	defer cancel()
	err := f(octx)
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		l.breaker.observe(true)
	case ctx.Err() != nil:
		l.breaker.neutral()
	default:
		l.breaker.observe(false)
	}
	return err
}

// Lease is a driver's current lease as stored.
type Lease struct {
	Driver    positions.DriverID
	Ride      RideID
	Token     Token
	Committed bool          // the trip lock, not an offer
	TTL       time.Duration // time left
}

const (
	stateOffered   = "o"
	stateCommitted = "c"
)

func (l *Leases) leaseKey(d positions.DriverID) string {
	return l.cfg.KeyPrefix + "driver:{" + string(d) + "}:lease"
}

func (l *Leases) fenceKey(d positions.DriverID) string {
	return l.cfg.KeyPrefix + "driver:{" + string(d) + "}:fence"
}

func leaseValue(state string, tok Token, ride RideID) string {
	return state + "|" + strconv.FormatInt(int64(tok), 10) + "|" + string(ride)
}

// reserveScript: KEYS lease, fence; ARGV ride, ttl ms. Returns the new
// token, the held token when the same ride already holds an offer (a
// retried Reserve is idempotent), or 0 when another ride holds the driver.
var reserveScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local st, tok, ride = string.match(cur, '^(%a)|(%d+)|(.*)$')
  if st == 'o' and ride == ARGV[1] then return tonumber(tok) end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
end
local tok = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], 'o|' .. string.format('%d', tok) .. '|' .. ARGV[1], 'NX', 'PX', ARGV[2])
return tok
`)

// Reserve takes driver's lease for ride for ttl (the offer timeout; zero
// means OfferTTL) and returns its fencing token. It returns ErrDriverTaken
// when another ride holds the driver, and an error wrapping ErrUnavailable
// when Redis cannot be reached; in that case the caller must not assume
// either outcome (a lease that was taken expires by itself).
func (l *Leases) Reserve(ctx context.Context, driver positions.DriverID, ride RideID, ttl time.Duration) (Token, error) {
	if err := checkIDs(driver, ride); err != nil {
		return 0, err
	}
	if ttl == 0 {
		ttl = l.cfg.OfferTTL
	}
	if ttl < time.Millisecond {
		return 0, fmt.Errorf("%w: lease ttl %v is under 1ms", ErrInvalidConfig, ttl)
	}
	var n int64
	err := l.do(ctx, func(ctx context.Context) (err error) {
		n, err = reserveScript.Run(ctx, l.rdb, []string{l.leaseKey(driver), l.fenceKey(driver)}, string(ride), ttl.Milliseconds()).Int64()
		return err
	})
	if err != nil {
		return 0, l.wrap(ctx, "reserve", driver, err)
	}
	if n == 0 {
		l.stats.taken.Add(1)
		l.hint(driver, l.cfg.HeldHint)
		return 0, fmt.Errorf("reserve driver %s for ride %s: %w", driver, ride, ErrDriverTaken)
	}
	l.stats.reserved.Add(1)
	l.hint(driver, ttl)
	return Token(n), nil
}

// commitScript: KEYS lease; ARGV offered value, committed value, trip ttl
// ms. 1: committed (or already committed by the same token), 0: lost.
var commitScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if cur == ARGV[2] then return 1 end
return 0
`)

// Commit makes ride's offered lease on driver the trip lock, if token is
// still current. It returns ErrLeaseLost when the lease expired or was
// re-taken: the accept came too late and the driver may be someone else's.
// Committing twice with the same token succeeds (a retried accept).
func (l *Leases) Commit(ctx context.Context, driver positions.DriverID, ride RideID, token Token) error {
	if err := checkIDs(driver, ride); err != nil {
		return err
	}
	var n int64
	err := l.do(ctx, func(ctx context.Context) (err error) {
		n, err = commitScript.Run(ctx, l.rdb, []string{l.leaseKey(driver)},
			leaseValue(stateOffered, token, ride), leaseValue(stateCommitted, token, ride), l.cfg.TripTTL.Milliseconds()).Int64()
		return err
	})
	if err != nil {
		return l.wrap(ctx, "commit", driver, err)
	}
	if n != 1 {
		l.stats.commitLost.Add(1)
		return fmt.Errorf("commit driver %s to ride %s with token %d: %w", driver, ride, token, ErrLeaseLost)
	}
	l.stats.committed.Add(1)
	l.hint(driver, l.cfg.HeldHint)
	return nil
}

// releaseScript: KEYS lease; ARGV offered value, committed value. 1:
// deleted, 2: no lease at all, 0: another ride or token holds it.
var releaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then return 2 end
if cur == ARGV[1] or cur == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

// Release frees driver from ride's lease, offered or committed (decline,
// cancel, trip finished), if token is current. Releasing a lease that no
// longer exists (expired, or released by an earlier try whose answer was
// lost) succeeds, so a retried Release is idempotent. When another ride or
// a newer token holds the driver nothing is deleted and ErrLeaseLost is
// returned, which callers that only want the driver free may ignore.
func (l *Leases) Release(ctx context.Context, driver positions.DriverID, ride RideID, token Token) error {
	if err := checkIDs(driver, ride); err != nil {
		return err
	}
	var n int64
	err := l.do(ctx, func(ctx context.Context) (err error) {
		n, err = releaseScript.Run(ctx, l.rdb, []string{l.leaseKey(driver)},
			leaseValue(stateOffered, token, ride), leaseValue(stateCommitted, token, ride)).Int64()
		return err
	})
	if err != nil {
		return l.wrap(ctx, "release", driver, err)
	}
	if n == 0 {
		l.stats.releaseLost.Add(1)
		return fmt.Errorf("release driver %s from ride %s with token %d: %w", driver, ride, token, ErrLeaseLost)
	}
	l.stats.released.Add(1)
	l.forget(driver)
	return nil
}

// Holder returns driver's current lease; ok is false when the driver is
// free.
func (l *Leases) Holder(ctx context.Context, driver positions.DriverID) (lease Lease, ok bool, err error) {
	if err := driver.Validate(); err != nil {
		return Lease{}, false, err
	}
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	err = l.do(ctx, func(ctx context.Context) error {
		pipe := l.rdb.Pipeline()
		get = pipe.Get(ctx, l.leaseKey(driver))
		pttl = pipe.PTTL(ctx, l.leaseKey(driver))
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Lease{}, false, l.wrap(ctx, "holder", driver, err)
	}
	v, err := get.Result()
	if errors.Is(err, redis.Nil) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, l.wrap(ctx, "holder", driver, err)
	}
	st, rest, ok1 := strings.Cut(v, "|")
	tok, ride, ok2 := strings.Cut(rest, "|")
	n, perr := strconv.ParseInt(tok, 10, 64)
	if !ok1 || !ok2 || perr != nil || (st != stateOffered && st != stateCommitted) {
		return Lease{}, false, fmt.Errorf("holder of driver %s: malformed lease value %q", driver, v)
	}
	return Lease{Driver: driver, Ride: RideID(ride), Token: Token(n), Committed: st == stateCommitted, TTL: pttl.Val()}, true, nil
}

func checkIDs(driver positions.DriverID, ride RideID) error {
	if err := driver.Validate(); err != nil {
		return err
	}
	return ride.Validate()
}

// wrap classifies a Redis failure: the caller's own cancellation stays a
// context error; everything else (refused, timed out, loading, a broken
// connection) is ErrUnavailable.
func (l *Leases) wrap(ctx context.Context, op string, driver positions.DriverID, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s driver %s: %w", op, driver, ctx.Err())
	}
	if errors.Is(err, ErrUnavailable) { // the breaker said so; counted in do
		return fmt.Errorf("%s driver %s: %w", op, driver, err)
	}
	l.stats.unavailable.Add(1)
	return fmt.Errorf("%s driver %s: %w: %w", op, driver, ErrUnavailable, err)
}
