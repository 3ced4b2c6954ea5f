package dispatch

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Store errors.
var (
	// ErrRideNotFound: no such ride (or it aged out after ending).
	ErrRideNotFound = errors.New("ride not found")
	// ErrIdempotencyMismatch: an Idempotency-Key was reused for a different
	// request.
	ErrIdempotencyMismatch = errors.New("idempotency key reused with a different request")
	// ErrConflict: a compare-and-set kept losing to concurrent writers.
	ErrConflict = errors.New("ride changed concurrently")
	// ErrStoreUnavailable wraps failures to reach Redis; the API answers
	// 503 with Retry-After.
	ErrStoreUnavailable = errors.New("ride store unavailable")
)

// StoreConfig configures a RideStore.
type StoreConfig struct {
	// Prefix starts every key, so several deployments can share a Redis.
	Prefix string
	// EndedTTL is how long a ride stays readable after it ends.
	EndedTTL time.Duration
	// MaxCASRetries bounds Update's compare-and-set attempts.
	MaxCASRetries int
	// Commands, when set, carries the store's single commands and scripts
	// instead of the client given to NewRideStore: a
	// *redis.AutoPipeliner over that client, so the commands of concurrent
	// rides share round trips (one write and one read system call per batch
	// instead of per command; see DESIGN.md). Pipelines and key scans stay
	// on the client itself.
	Commands redis.UniversalClient
}

// DefaultStoreConfig returns the defaults: prefix "hexd:", ended rides kept
// a day, 8 CAS attempts.
func DefaultStoreConfig() StoreConfig {
	return StoreConfig{Prefix: "hexd:", EndedTTL: 24 * time.Hour, MaxCASRetries: 8}
}

// Validate checks c.
func (c StoreConfig) Validate() error {
	if c.EndedTTL < time.Second || c.MaxCASRetries < 1 || strings.ContainsAny(c.Prefix, "{} ") {
		return fmt.Errorf("store config: EndedTTL %v must be >= 1s, MaxCASRetries %d >= 1, prefix %q without braces or spaces",
			c.EndedTTL, c.MaxCASRetries, c.Prefix)
	}
	return nil
}

// RideStore is the rides' read model in Redis. A ride is one hash,
// {prefix}ride:{<id>} with fields v (version), data (the ride as JSON) and
// req (a fingerprint of the request that created it). Every write is a
// compare-and-set on v in a script, so concurrent writers never lose an
// update; the same script appends the transition to the ride's outbox list
// {prefix}outbox:{<id>}, which the Relay moves to Kafka. Both keys share
// the ride's hash tag, so this stays atomic on Redis Cluster.
//
// Idempotent creation needs no second key: a ride created with an
// Idempotency-Key gets an ID derived from (rider, key), so a retry finds the
// same ride, and the fingerprint tells a retry from a different request
// reusing the key.
//
// Safe for concurrent use. All state lives in Redis; the process keeps
// only copies that a compare-and-set judges (see recent).
type RideStore struct {
	rdb redis.UniversalClient // pipelines and scans
	cmd redis.UniversalClient // single commands and scripts: cfg.Commands, or rdb
	cfg StoreConfig
	// single is rdb when it is a single Redis (not a cluster): the
	// scripts that write a ride also write the sweeps' sorted sets (see
	// casScript and createScript). nil otherwise.
	single *redis.Client

	entered [numStates]atomic.Uint64 // transitions into each state, by this process

	// recentMu guards recent: the last version of each unfinished ride
	// this store wrote or read (up to recentCap, then it starts again). A
	// write that holds no copy of its ride (a driver's trip step) starts
	// from it instead of reading Redis; the compare-and-set judges the
	// copy, and a stale one costs one attempt that returns the ride as
	// stored, so this saves a round trip and never changes an outcome.
	recentMu sync.Mutex
	recent   map[RideID]Ride
}

// recentCap bounds the rides remembered (about 500 bytes each).
const recentCap = 1 << 16

// remember keeps r as its ride's latest known version.
func (s *RideStore) remember(r Ride) {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	if r.State.Terminal() {
		delete(s.recent, r.ID)
		return
	}
	if s.recent == nil || len(s.recent) >= recentCap {
		s.recent = make(map[RideID]Ride)
	}
	if old, ok := s.recent[r.ID]; !ok || old.Version < r.Version {
		s.recent[r.ID] = r
	}
}

// recall returns the latest version of ride id this store knows of.
func (s *RideStore) recall(id RideID) (Ride, bool) {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	r, ok := s.recent[id]
	return r, ok
}

// Entered returns how many rides this store moved into state s (created,
// for requested).
func (s *RideStore) Entered(st State) uint64 {
	if !st.Valid() {
		return 0
	}
	return s.entered[st].Load()
}

// NewRideStore returns a store over rdb.
func NewRideStore(rdb redis.UniversalClient, cfg StoreConfig) (*RideStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, errors.New("store config: nil redis client")
	}
	s := &RideStore{rdb: rdb, cmd: rdb, cfg: cfg}
	s.single, _ = rdb.(*redis.Client)
	if cfg.Commands != nil {
		s.cmd = cfg.Commands
	}
	return s, nil
}

func (s *RideStore) key(id RideID) string { return s.cfg.Prefix + "ride:{" + string(id) + "}" }

// outboxKey is the ride's list of events not yet in Kafka. It shares the
// ride key's hash tag, so one script writes both.
func (s *RideStore) outboxKey(id RideID) string { return s.cfg.Prefix + "outbox:{" + string(id) + "}" }

// IdempotentID derives the ride ID for rider's Idempotency-Key.
func IdempotentID(rider RiderID, key string) RideID {
	sum := sha256.Sum256([]byte(string(rider) + "\x00" + key))
	return RideID("r" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:15])))
}

// RequestFingerprint is what must match for a retry under one
// Idempotency-Key.
func RequestFingerprint(r Ride) string {
	return fmt.Sprintf("%s|%s|%s", r.Rider, r.Pickup, r.Dropoff)
}

// createScript: KEYS ride, outbox, and on a single Redis the searches set;
// ARGV version, data, request fingerprint, the "requested" event, and with
// the third key the search deadline (its score) and the ride id. A new
// ride enters the searches set in the same atomic step as it is written,
// so no created ride is ever untracked; a retry finds the ride and writes
// nothing. It replies {1} when created and {0, data, fingerprint} when
// the ride exists.
var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'data'), redis.call('HGET', KEYS[1], 'req')}
end
if KEYS[3] then redis.call('ZADD', KEYS[3], 'NX', ARGV[5], ARGV[6]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'data', ARGV[2], 'req', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
return {1}
`)

// Create stores r (version 1) unless a ride with its ID exists. It returns
// the stored ride and whether this call created it. When the ID exists and
// was created by a different request, it returns ErrIdempotencyMismatch.
func (s *RideStore) Create(ctx context.Context, r Ride) (Ride, bool, error) {
	return s.create(ctx, r, time.Time{})
}

// CreateSearching is Create that also tracks the ride's search until
// deadline (see TrackSearch), so that no created ride is ever untracked:
// if this process dies before its search starts, any process's sweep
// ends the ride after deadline. A retry keeps the deadline the ride has.
// On a single Redis the script that writes the ride tracks it (one
// command, atomic); on a cluster the set lives on another node and the
// tracking is a call of its own, made first.
func (s *RideStore) CreateSearching(ctx context.Context, r Ride, deadline time.Time) (Ride, bool, error) {
	return s.create(ctx, r, deadline)
}

func (s *RideStore) create(ctx context.Context, r Ride, deadline time.Time) (Ride, bool, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return Ride{}, false, err
	}
	fp := RequestFingerprint(r)
	ev, err := json.Marshal(NewRideEvent(r, "requested", 0))
	if err != nil {
		return Ride{}, false, err
	}
	keys := []string{s.key(r.ID), s.outboxKey(r.ID)}
	args := []any{r.Version, data, fp, ev}
	var track func(redis.Cmdable) *redis.IntCmd
	switch {
	case deadline.IsZero():
	case s.single != nil:
		keys = append(keys, s.searchesKey())
		args = append(args, deadline.UnixMilli(), string(r.ID))
	default:
		track = func(c redis.Cmdable) *redis.IntCmd {
			return c.ZAddNX(ctx, s.searchesKey(), redis.Z{Score: float64(deadline.UnixMilli()), Member: string(r.ID)})
		}
	}
	res, err := s.runTracked(ctx, track, "track search", createScript, "create", keys, args...)
	if err != nil {
		return Ride{}, false, err
	}
	if len(res) == 0 {
		return Ride{}, false, fmt.Errorf("ride store: create %s: empty reply", r.ID)
	}
	if created, _ := res[0].(int64); created == 1 {
		s.entered[Requested].Add(1)
		s.remember(r)
		return r, true, nil
	}
	if len(res) < 3 {
		return Ride{}, false, fmt.Errorf("ride store: create %s: malformed reply", r.ID)
	}
	if reqFP, _ := res[2].(string); reqFP != fp {
		return Ride{}, false, fmt.Errorf("%w: ride %s", ErrIdempotencyMismatch, r.ID)
	}
	existing, err := decodeRide(res[1])
	return existing, false, err
}

// Get returns ride id.
func (s *RideStore) Get(ctx context.Context, id RideID) (Ride, error) {
	v, err := s.cmd.HGet(ctx, s.key(id), "data").Result()
	if errors.Is(err, redis.Nil) {
		return Ride{}, fmt.Errorf("%w: %s", ErrRideNotFound, id)
	}
	if err != nil {
		return Ride{}, s.unavailable("get", err)
	}
	r, err := decodeRide(v)
	if err == nil {
		s.remember(r)
	}
	return r, err
}

// casScript: KEYS ride, outbox, then on a single Redis the sweeps' sorted
// sets the ride leaves and enters (ARGV[6] and ARGV[7] say which are
// given); ARGV expected version, next version, next data, ttl ms (0:
// none), the ride id (its member in those sets), '1' when KEYS[3] is a
// set the ride leaves, the score of the ride in the set it enters (the
// last key) or empty, then the events, in order (one per transition). It
// replies {1} when written, {-1} when the ride is gone, and {0, data}
// when the version moved on: the ride as stored, so the caller retries
// without reading it again. In a cluster the sets live on other nodes:
// no set key is given, the ride enters its set in a command of its own
// before the write and leaves it in one after.
var casScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {-1} end
if v ~= ARGV[1] then
  -- A client resend of a write that already landed (its reply was lost)
  -- finds its own result: success, and the outbox has the event once.
  local data = redis.call('HGET', KEYS[1], 'data')
  if v == ARGV[2] and data == ARGV[3] then return {1} end
  return {0, data}
end
local set = 3
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[5])
  set = 4
end
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[set], ARGV[7], ARGV[5]) end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'data', ARGV[3])
redis.call('RPUSH', KEYS[2], unpack(ARGV, 8))
if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {1}
`)

// Apply applies ev to ride id and stores the result if nobody wrote in
// between, retrying on conflict; an illegal event returns
// ErrIllegalTransition with the ride as it is. The transition's RideEvent
// is appended to the ride's outbox in the same atomic step, so the event
// log (see Relay) never misses a transition the read model shows. A ride
// that reaches a terminal state expires EndedTTL later.
func (s *RideStore) Apply(ctx context.Context, id RideID, ev Event) (Ride, error) {
	return s.apply(ctx, id, nil, []Event{ev}, nil)
}

// ApplyFrom is Apply for a caller that holds the ride as it last read or
// wrote it (cur): the first compare-and-set starts from cur's version
// without reading the ride, which saves a round trip per write on the
// paths that own a ride for a while (a search, a driver's trip step). A
// stale cur costs nothing but an attempt: the refused write's reply
// carries the ride as stored, and an event that looks illegal on cur is
// checked again on the stored ride before ErrIllegalTransition is
// returned.
//
// With more events, ApplyFrom applies them in order and writes the result
// in one compare-and-set, their RideEvents in the outbox in that order:
// what as many calls would write, in one round trip, all or none.
func (s *RideStore) ApplyFrom(ctx context.Context, cur Ride, ev Event, more ...Event) (Ride, error) {
	return s.apply(ctx, cur.ID, &cur, append([]Event{ev}, more...), nil)
}

// applyChecked is Apply that first runs check, when set, on the ride as
// read before each compare-and-set attempt, and returns its error (with
// the ride as it is) instead of writing.
func (s *RideStore) applyChecked(ctx context.Context, id RideID, ev Event, check func(cur Ride) error) (Ride, error) {
	return s.apply(ctx, id, nil, []Event{ev}, check)
}

// apply is Apply, ApplyFrom and applyChecked, with known the ride as the
// caller last saw it (nil: unknown) and evs the events, applied in order.
// cur is read from Redis unless known (the caller's copy, maybe stale) or
// the reply of a refused compare-and-set (as fresh as a read) provides
// it; only a fresh ride may end the call with a check's or the state
// machine's refusal.
func (s *RideStore) apply(ctx context.Context, id RideID, known *Ride, evs []Event, check func(cur Ride) error) (Ride, error) {
	var cur Ride
	have, fresh := false, false
	if known != nil && known.ID == id && known.Version > 0 {
		cur, have = *known, true
	} else if r, ok := s.recall(id); ok {
		cur, have = r, true
	}
	for range s.cfg.MaxCASRetries {
		if !have {
			var err error
			if cur, err = s.Get(ctx, id); err != nil {
				return Ride{}, err
			}
			fresh = true
		}
		have = false
		if check != nil {
			if err := check(cur); err != nil {
				if !fresh {
					continue // judge the ride as stored, not the caller's copy
				}
				return cur, err
			}
		}
		next, outs, refused, err := applyEvents(cur, evs)
		if err != nil {
			return Ride{}, err
		}
		if refused != nil {
			if !fresh {
				continue
			}
			return cur, refused
		}
		data, err := json.Marshal(next)
		if err != nil {
			return Ride{}, err
		}
		ttl := int64(0)
		if next.State.Terminal() {
			ttl = s.cfg.EndedTTL.Milliseconds()
		}
		// A ride entering accepted, arrived or in_trip is tracked before
		// the write, so no ride is in those states untracked; an entry
		// whose write then fails is dropped by the dispatcher's sweep.
		track := assigned(next.State) && next.State != cur.State
		leave := s.leaving(cur.State, next.State)
		res, err := s.cas(ctx, id, cur.Version, next, data, ttl, outs, track, leave)
		if err != nil {
			return Ride{}, err
		}
		code, _ := res[0].(int64)
		switch {
		case code == 1:
			for i := range evs {
				s.entered[outs[i].state].Add(1)
			}
			s.remember(next)
			if s.single == nil && assigned(cur.State) && next.State != cur.State {
				s.untrackTrip(ctx, cur.State, id) // best effort: the sweep drops stale entries
			}
			return next, nil
		case code == -1:
			return Ride{}, fmt.Errorf("%w: %s", ErrRideNotFound, id)
		case len(res) >= 2:
			// Someone else wrote: start again from the ride as stored.
			if cur, err = decodeRide(res[1]); err != nil {
				return Ride{}, err
			}
			s.remember(cur)
			have, fresh = true, true
		default:
			return Ride{}, fmt.Errorf("ride store: update %s: malformed reply %v", id, res)
		}
	}
	return Ride{}, fmt.Errorf("%w: ride %s after %d attempts", ErrConflict, id, s.cfg.MaxCASRetries)
}

// appliedEvent is one event of an apply: the state it led to and its
// RideEvent as the outbox holds it.
type appliedEvent struct {
	state State
	out   []byte
}

// applyEvents applies evs to cur in order and encodes their RideEvents.
// A refused event (illegal or invalid) returns refused; an event that
// cannot be encoded returns err.
func applyEvents(cur Ride, evs []Event) (next Ride, outs []appliedEvent, refused, err error) {
	next = cur
	outs = make([]appliedEvent, len(evs))
	for i, ev := range evs {
		from := next.State
		if refused := next.Apply(ev); refused != nil {
			return cur, nil, refused, nil
		}
		out, err := json.Marshal(NewRideEvent(next, ev.Kind.String(), from))
		if err != nil {
			return cur, nil, nil, err
		}
		outs[i] = appliedEvent{next.State, out}
	}
	return next, outs, nil, nil
}

// leaving returns the sweeps' sorted set a ride moving from one state to
// another leaves, when the write itself can take it out (a single Redis):
// the trip set of an assigned state it leaves, or the searches once past
// its search. Elsewhere, or when it leaves none, "".
func (s *RideStore) leaving(from, to State) string {
	switch {
	case s.single == nil || from == to:
		return ""
	case assigned(from):
		return s.tripsKey(from)
	case !pastSearch(from) && pastSearch(to):
		return s.searchesKey()
	}
	return ""
}

// cas runs casScript from version from to next, appending outs' events,
// with the ride entering next's trip set when track is set, and leaving
// the sorted set leave (see leaving) when it is not "". On a single Redis
// the script does both; in a cluster the ride enters its set first, in a
// command of its own (leave is always "" there).
func (s *RideStore) cas(ctx context.Context, id RideID, from uint64, next Ride, data []byte, ttl int64, outs []appliedEvent, track bool, leave string) ([]any, error) {
	keys := []string{s.key(id), s.outboxKey(id)}
	leaves, enter := "0", ""
	if leave != "" {
		keys = append(keys, leave)
		leaves = "1"
	}
	var tracking func(redis.Cmdable) *redis.IntCmd
	if track {
		score := next.UpdatedAt.UnixMilli()
		if s.single != nil {
			keys = append(keys, s.tripsKey(next.State))
			enter = strconv.FormatInt(score, 10)
		} else {
			tracking = func(c redis.Cmdable) *redis.IntCmd {
				return c.ZAdd(ctx, s.tripsKey(next.State), redis.Z{Score: float64(score), Member: string(id)})
			}
		}
	}
	args := make([]any, 0, 7+len(outs))
	args = append(args, strconv.FormatUint(from, 10), strconv.FormatUint(next.Version, 10), data, ttl, string(id), leaves, enter)
	for _, o := range outs {
		args = append(args, o.out)
	}
	return s.runTracked(ctx, tracking, "track trip", casScript, "update", keys, args...)
}

// runTracked runs script on keys, after track (when set: a cluster, where
// the sorted sets the sweeps read live on other nodes than the ride) has
// added the ride to one of those sets, so that the entry lands first. On
// a single Redis the scripts write the sets themselves and track is nil.
// Failures to reach Redis are ErrStoreUnavailable, named trackOp or op.
func (s *RideStore) runTracked(ctx context.Context, track func(redis.Cmdable) *redis.IntCmd, trackOp string,
	script *redis.Script, op string, keys []string, args ...any) ([]any, error) {
	if track != nil {
		if err := track(s.cmd).Err(); err != nil {
			return nil, s.unavailable(trackOp, err)
		}
	}
	res, err := script.Run(ctx, s.cmd, keys, args...).Slice()
	if err != nil {
		return nil, s.unavailable(op, err)
	}
	return res, nil
}

func decodeRide(v any) (Ride, error) {
	str, ok := v.(string)
	if !ok {
		return Ride{}, fmt.Errorf("ride store: stored ride is %T, not a string", v)
	}
	var r Ride
	if err := json.Unmarshal([]byte(str), &r); err != nil {
		return Ride{}, fmt.Errorf("ride store: decoding stored ride: %w", err)
	}
	return r, nil
}

func (s *RideStore) unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("ride store %s: %w", op, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrStoreUnavailable, op, err)
}

// searchesKey is a sorted set of rides being searched, scored by the unix
// milliseconds after which their search is overdue. A search that ends
// removes its ride; the sweep ends rides whose search died with its
// process.
func (s *RideStore) searchesKey() string { return s.cfg.Prefix + "searches" }

// TrackSearch records that ride id is being searched until deadline.
func (s *RideStore) TrackSearch(ctx context.Context, id RideID, deadline time.Time) error {
	if err := s.cmd.ZAdd(ctx, s.searchesKey(), redis.Z{Score: float64(deadline.UnixMilli()), Member: string(id)}).Err(); err != nil {
		return s.unavailable("track search", err)
	}
	return nil
}

// UntrackSearch records that the search of ride id ended.
func (s *RideStore) UntrackSearch(ctx context.Context, id RideID) error {
	if err := s.cmd.ZRem(ctx, s.searchesKey(), string(id)).Err(); err != nil {
		return s.unavailable("untrack search", err)
	}
	return nil
}

// OverdueSearches returns up to limit rides whose search deadline passed
// before now.
func (s *RideStore) OverdueSearches(ctx context.Context, now time.Time, limit int64) ([]RideID, error) {
	ids, err := s.cmd.ZRangeByScore(ctx, s.searchesKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: limit,
	}).Result()
	if err != nil {
		return nil, s.unavailable("overdue searches", err)
	}
	out := make([]RideID, len(ids))
	for i, id := range ids {
		out[i] = RideID(id)
	}
	return out, nil
}

// assigned reports whether st is a state after acceptance that the driver
// must move on from: accepted, arrived or in_trip.
func assigned(st State) bool { return st == Accepted || st == Arrived || st == InTrip }

// tripsKey is a sorted set per state st of assigned: the rides in st, scored
// by the unix milliseconds of the step that put them there. The
// dispatcher's sweep expires the rides that stay too long (a driver app
// that vanished). The key has no hash tag: like searchesKey it is written
// beside a ride's compare-and-set, not in it.
func (s *RideStore) tripsKey(st State) string { return s.cfg.Prefix + "trips:" + st.String() }

// trackTrip records that ride id has been in st since at.
func (s *RideStore) trackTrip(ctx context.Context, st State, id RideID, at time.Time) error {
	if err := s.cmd.ZAdd(ctx, s.tripsKey(st), redis.Z{Score: float64(at.UnixMilli()), Member: string(id)}).Err(); err != nil {
		return s.unavailable("track trip", err)
	}
	return nil
}

// untrackTrip records that ride id left st.
func (s *RideStore) untrackTrip(ctx context.Context, st State, id RideID) error {
	if err := s.cmd.ZRem(ctx, s.tripsKey(st), string(id)).Err(); err != nil {
		return s.unavailable("untrack trip", err)
	}
	return nil
}

// stalledTrips returns up to limit rides tracked in st since cutoff or
// earlier.
func (s *RideStore) stalledTrips(ctx context.Context, st State, cutoff time.Time, limit int64) ([]RideID, error) {
	ids, err := s.cmd.ZRangeByScore(ctx, s.tripsKey(st), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(cutoff.UnixMilli(), 10), Count: limit,
	}).Result()
	if err != nil {
		return nil, s.unavailable("stalled trips", err)
	}
	out := make([]RideID, len(ids))
	for i, id := range ids {
		out[i] = RideID(id)
	}
	return out, nil
}
