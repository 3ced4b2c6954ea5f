package matcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/positions"
)

// Owners tells a Gatherer which Querier answers for which partition.
// Implementations are safe for concurrent use.
type Owners interface {
	// Lookup groups parts by owner. Partitions without a known live owner
	// come back in missing; a gather reports them as missed, it does not
	// fail.
	Lookup(ctx context.Context, parts []positions.Partition) (groups []OwnerGroup, missing []positions.Partition)
	// Stale reports that owner failed for parts or said it does not own
	// them, so the next Lookup must re-resolve them.
	Stale(owner string, parts []positions.Partition)
}

// OwnerGroup is the partitions one owner answers for in one gather.
type OwnerGroup struct {
	Owner      string // address, or "local" in-process
	Querier    positions.Querier
	Partitions []positions.Partition
}

// LocalOwners maps every partition to one in-process Querier: the
// `-role all` wiring, where the worker lives in the same process and no
// network hop is made.
type LocalOwners struct {
	Querier positions.Querier
}

// Lookup implements Owners.
func (o LocalOwners) Lookup(_ context.Context, parts []positions.Partition) ([]OwnerGroup, []positions.Partition) {
	return []OwnerGroup{{Owner: "local", Querier: o.Querier, Partitions: parts}}, nil
}

// Stale implements Owners; there is nobody else to ask.
func (LocalOwners) Stale(string, []positions.Partition) {}

// OwnerRef names a Querier that owns partitions.
type OwnerRef struct {
	Name    string
	Querier positions.Querier
}

// StaticOwners is a fixed partition -> owner table: for tests, benchmarks
// and deployments that pin partitions to processes. Partitions absent
// from the table are missing.
type StaticOwners map[positions.Partition]OwnerRef

// Lookup implements Owners.
func (s StaticOwners) Lookup(_ context.Context, parts []positions.Partition) ([]OwnerGroup, []positions.Partition) {
	var groups []OwnerGroup
	var missing []positions.Partition
	for _, p := range parts {
		o, ok := s[p]
		if !ok || o.Querier == nil {
			missing = append(missing, p)
			continue
		}
		i := slices.IndexFunc(groups, func(g OwnerGroup) bool { return g.Owner == o.Name })
		if i < 0 {
			i = len(groups)
			groups = append(groups, OwnerGroup{Owner: o.Name, Querier: o.Querier})
		}
		groups[i].Partitions = append(groups[i].Partitions, p)
	}
	return groups, missing
}

// Stale implements Owners; the table does not change.
func (StaticOwners) Stale(string, []positions.Partition) {}

// Owner is a published owner of a partition.
type Owner struct {
	Addr string
	// Fence is the consumer-group generation in which Addr was assigned
	// the partition. A newer generation always wins.
	Fence int64
}

// RegistryConfig configures a Registry.
type RegistryConfig struct {
	// KeyPrefix starts every key the registry writes.
	KeyPrefix string
	// TTL is how long a published owner stays without a heartbeat. A worker
	// that died disappears after it, and gathers report its partitions as
	// missed until the new owner publishes.
	TTL time.Duration
	// OpTimeout bounds every Redis call.
	OpTimeout time.Duration
}

// DefaultRegistryConfig returns a 6 s TTL (heartbeats every 2 s) and
// 250 ms per Redis call.
func DefaultRegistryConfig() RegistryConfig {
	return RegistryConfig{KeyPrefix: "hexd:", TTL: 6 * time.Second, OpTimeout: 250 * time.Millisecond}
}

// Validate checks c.
func (c RegistryConfig) Validate() error {
	switch {
	case c.TTL < 10*time.Millisecond:
		return fmt.Errorf("%w: registry TTL %v must be at least 10ms", ErrInvalidConfig, c.TTL)
	case c.OpTimeout <= 0:
		return fmt.Errorf("%w: registry OpTimeout %v must be positive", ErrInvalidConfig, c.OpTimeout)
	}
	return nil
}

// Registry is the ownership table in Redis: partition -> owner address
// with a TTL heartbeat and a fence. One key per partition holds
// "fence|addr"; a script refuses a write with a fence older than the
// stored one, so a worker that lost its partition in a rebalance (old
// generation) cannot overwrite the new owner with a late heartbeat.
//
// Registry is safe for concurrent use; its state lives in Redis.
type Registry struct {
	rdb redis.UniversalClient
	cfg RegistryConfig
}

// NewRegistry returns a Registry over rdb.
func NewRegistry(rdb redis.UniversalClient, cfg RegistryConfig) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidConfig)
	}
	return &Registry{rdb: rdb, cfg: cfg}, nil
}

func (r *Registry) key(p positions.Partition) string {
	return r.cfg.KeyPrefix + "owner:" + strconv.Itoa(int(p))
}

// publishScript: KEYS owner; ARGV fence, value, ttl ms. 1: written, 0:
// a newer fence holds the key.
var publishScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local f = tonumber(string.match(cur, '^(%-?%d+)|'))
  if f and f > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)

// withdrawScript: KEYS owner; ARGV value. Deletes only our own entry.
var withdrawScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

func ownerValue(o Owner) string { return strconv.FormatInt(o.Fence, 10) + "|" + o.Addr }

func parseOwner(v string) (Owner, error) {
	f, addr, ok := strings.Cut(v, "|")
	n, err := strconv.ParseInt(f, 10, 64)
	if !ok || err != nil || addr == "" {
		return Owner{}, fmt.Errorf("malformed owner entry %q", v)
	}
	return Owner{Addr: addr, Fence: n}, nil
}

// Publish records o as the owner of p for TTL; heartbeats call it again.
// It returns ErrStaleOwner when a newer fence owns p: the caller lost the
// partition and must stop serving it.
func (r *Registry) Publish(ctx context.Context, p positions.Partition, o Owner) error {
	if o.Addr == "" || strings.ContainsRune(o.Addr, '|') {
		return fmt.Errorf("%w: owner address %q", ErrInvalidConfig, o.Addr)
	}
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	n, err := publishScript.Run(octx, r.rdb, []string{r.key(p)}, o.Fence, ownerValue(o), r.cfg.TTL.Milliseconds()).Int64()
	if err != nil {
		return wrapRedis(ctx, fmt.Sprintf("publish owner of partition %d", p), err)
	}
	if n != 1 {
		return fmt.Errorf("publish %s as owner of partition %d at fence %d: %w", o.Addr, p, o.Fence, ErrStaleOwner)
	}
	return nil
}

// Withdraw removes o as the owner of p (a revoked partition, a clean
// shutdown), if the entry is still o's.
func (r *Registry) Withdraw(ctx context.Context, p positions.Partition, o Owner) error {
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	if err := withdrawScript.Run(octx, r.rdb, []string{r.key(p)}, ownerValue(o)).Err(); err != nil {
		return wrapRedis(ctx, fmt.Sprintf("withdraw owner of partition %d", p), err)
	}
	return nil
}

// Resolve reads the owners of parts; partitions with no live owner are
// absent from the map.
func (r *Registry) Resolve(ctx context.Context, parts []positions.Partition) (map[positions.Partition]Owner, error) {
	out := make(map[positions.Partition]Owner, len(parts))
	if len(parts) == 0 {
		return out, nil
	}
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(parts))
	for i, p := range parts {
		cmds[i] = pipe.Get(octx, r.key(p))
	}
	if _, err := pipe.Exec(octx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, wrapRedis(ctx, "resolve owners", err)
	}
	for i, c := range cmds {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, wrapRedis(ctx, "resolve owners", err)
		}
		o, err := parseOwner(v)
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", parts[i], err)
		}
		out[parts[i]] = o
	}
	return out, nil
}

// Heartbeat publishes the partitions owned() returns as owned by addr
// every TTL/3 until ctx is done, withdrawing partitions as they leave the
// set and the last set at the end. A partition
// that Publish reports stale is passed to lost (if not nil) so the worker
// can stop serving it. It returns ctx's error.
func (r *Registry) Heartbeat(ctx context.Context, addr string, owned func() map[positions.Partition]int64, lost func(positions.Partition, error)) error {
	return r.HeartbeatOn(ctx, addr, owned, lost, nil)
}

// HeartbeatOn is Heartbeat that also beats at once whenever changed is
// signalled (positions.Worker.OwnedChanged), so a partition that became
// ready is findable without waiting up to TTL/3, and retries a beat that
// Redis refused after TTL/12 rather than TTL/3, so the entries outlive a
// short Redis outage.
func (r *Registry) HeartbeatOn(ctx context.Context, addr string, owned func() map[positions.Partition]int64,
	lost func(positions.Partition, error), changed <-chan struct{}) error {
	var last map[positions.Partition]int64
	for {
		failed := false
		cur := owned()
		// Partitions given up since the last beat (revoked, or the worker
		// is shrinking): withdraw them so matchers stop asking at once
		// rather than after TTL.
		for p, fence := range last {
			if f, ok := cur[p]; !ok || f != fence {
				_ = r.Withdraw(ctx, p, Owner{Addr: addr, Fence: fence})
			}
		}
		last = cur
		for p, fence := range last {
			err := r.Publish(ctx, p, Owner{Addr: addr, Fence: fence})
			switch {
			case errors.Is(err, ErrStaleOwner):
				if lost != nil {
					lost(p, err)
				}
			case err != nil:
				failed = true // Redis down: retried soon; the entry lives for TTL
			}
		}
		wait := r.cfg.TTL / 3
		if failed {
			wait = r.cfg.TTL / 12
		}
		tick := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			// Withdraw with a fresh context: ctx is already done.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.OpTimeout)
			for p, fence := range last {
				_ = r.Withdraw(wctx, p, Owner{Addr: addr, Fence: fence})
			}
			cancel()
			tick.Stop()
			return ctx.Err()
		case <-tick.C:
		case <-changed:
			tick.Stop()
		}
	}
}

// ResolverConfig configures a Resolver.
type ResolverConfig struct {
	// CacheTTL is how long a resolved owner is used without asking Redis
	// again. Short: after a rebalance a gather misses a moved partition for
	// at most this long, or until the old owner says it lost it.
	CacheTTL time.Duration
	// Now is the clock.
	Now func() time.Time
}

// DefaultResolverConfig returns a 1 s cache on the wall clock.
func DefaultResolverConfig() ResolverConfig {
	return ResolverConfig{CacheTTL: time.Second, Now: time.Now}
}

// Validate checks c.
func (c ResolverConfig) Validate() error {
	switch {
	case c.CacheTTL < 0:
		return fmt.Errorf("%w: CacheTTL %v is negative", ErrInvalidConfig, c.CacheTTL)
	case c.Now == nil:
		return fmt.Errorf("%w: Now is nil", ErrInvalidConfig)
	}
	return nil
}

// Dialer returns the Querier for an owner address (an RPC client). It is
// called once per address; the Resolver keeps the result.
type Dialer func(addr string) (positions.Querier, error)

// Resolver implements Owners over a Registry: partition -> owner address
// -> Querier, with a short cache. When Redis is unreachable it keeps
// serving the cached owners, expired or not (stale ownership costs a
// missed partition; no ownership at all costs the whole gather).
//
// Concurrency: mu guards the cache and the clients.
type Resolver struct {
	reg  *Registry
	dial Dialer
	cfg  ResolverConfig

	mu      sync.Mutex
	cache   map[positions.Partition]cachedOwner
	clients map[string]positions.Querier
}

type cachedOwner struct {
	Owner
	at time.Time
}

// NewResolver returns a Resolver reading reg and dialling owners with
// dial.
func NewResolver(reg *Registry, dial Dialer, cfg ResolverConfig) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if reg == nil || dial == nil {
		return nil, fmt.Errorf("%w: nil registry or dialer", ErrInvalidConfig)
	}
	return &Resolver{reg: reg, dial: dial, cfg: cfg,
		cache: make(map[positions.Partition]cachedOwner), clients: make(map[string]positions.Querier)}, nil
}

// Resolve returns the owners of parts, from the cache where fresh.
func (r *Resolver) Resolve(ctx context.Context, parts []positions.Partition) (map[positions.Partition]Owner, error) {
	now := r.cfg.Now()
	out := make(map[positions.Partition]Owner, len(parts))
	var ask []positions.Partition
	r.mu.Lock()
	for _, p := range parts {
		if c, ok := r.cache[p]; ok && now.Sub(c.at) < r.cfg.CacheTTL {
			out[p] = c.Owner
		} else {
			ask = append(ask, p)
		}
	}
	r.mu.Unlock()
	if len(ask) == 0 {
		return out, nil
	}
	got, err := r.reg.Resolve(ctx, ask)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		// Keep serving what we had, and do not ask again for CacheTTL: a
		// black-holed Redis would otherwise cost every gather its
		// timeout.
		for _, p := range ask {
			if c, ok := r.cache[p]; ok {
				out[p] = c.Owner
				r.cache[p] = cachedOwner{Owner: c.Owner, at: now}
			}
		}
		return out, err
	}
	for _, p := range ask {
		o, ok := got[p]
		if !ok {
			delete(r.cache, p)
			continue
		}
		r.cache[p] = cachedOwner{Owner: o, at: now}
		out[p] = o
	}
	return out, nil
}

// Lookup implements Owners.
func (r *Resolver) Lookup(ctx context.Context, parts []positions.Partition) ([]OwnerGroup, []positions.Partition) {
	owners, _ := r.Resolve(ctx, parts) // on error: cached owners, the rest missed
	var missing []positions.Partition
	byAddr := make(map[string]int)
	var groups []OwnerGroup
	for _, p := range parts {
		o, ok := owners[p]
		if !ok {
			missing = append(missing, p)
			continue
		}
		q, err := r.client(o.Addr)
		if err != nil {
			missing = append(missing, p)
			continue
		}
		i, ok := byAddr[o.Addr]
		if !ok {
			i = len(groups)
			byAddr[o.Addr] = i
			groups = append(groups, OwnerGroup{Owner: o.Addr, Querier: q})
		}
		groups[i].Partitions = append(groups[i].Partitions, p)
	}
	return groups, missing
}

func (r *Resolver) client(addr string) (positions.Querier, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.clients[addr]; ok {
		return q, nil
	}
	q, err := r.dial(addr)
	if err != nil {
		return nil, err
	}
	r.clients[addr] = q
	return q, nil
}

// Stale implements Owners: it drops the cached entries of parts that still
// name owner, so the next Lookup asks Redis.
func (r *Resolver) Stale(owner string, parts []positions.Partition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts {
		if c, ok := r.cache[p]; ok && c.Addr == owner {
			delete(r.cache, p)
		}
	}
}

// cached returns the cached partitions, sorted; for tests.
func (r *Resolver) cached() []positions.Partition {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []positions.Partition
	for p := range r.cache {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// wrapRedis classifies a Redis failure like Leases does.
func wrapRedis(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}
