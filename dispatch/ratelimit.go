package dispatch

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimiter gives each client key (a token subject, or an address for
// unauthenticated calls) its own token bucket. A bucket idle for longer
// than the refill time is full again, the same as a new one, so it is
// dropped: each time the map has doubled since the last sweep, a sweep
// drops the idle ones, and the map holds about the keys seen within the
// refill time rather than every key up to the bound (a city's riders are
// many, each calls now and then, and each bucket is three objects the
// collector marks in every cycle). The map is bounded: when full and
// nothing is idle, new keys share one overflow bucket (so a flood of
// fresh keys is limited as one client rather than growing memory).
//
// Safe for concurrent use; the mutex guards the map.
type RateLimiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int
	now     func() time.Time

	mu       sync.Mutex
	buckets  map[string]*bucket
	sweepAt  int // sweep idle buckets when the map reaches this many
	overflow *rate.Limiter
}

// minSweepAt is the smallest map size that starts a sweep: below it a
// sweep would cost more than the buckets it frees.
const minSweepAt = 1024

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewRateLimiter allows perSecond calls per key with bursts of burst, for at
// most maxKeys keys at once.
func NewRateLimiter(perSecond float64, burst, maxKeys int, now func() time.Time) (*RateLimiter, error) {
	if !(perSecond > 0) || burst < 1 || maxKeys < 1 || now == nil {
		return nil, fmt.Errorf("rate limiter: want rate > 0, burst >= 1, maxKeys >= 1 and a clock (got %v, %d, %d)", perSecond, burst, maxKeys)
	}
	return &RateLimiter{
		limit: rate.Limit(perSecond), burst: burst, maxKeys: maxKeys, now: now,
		buckets:  make(map[string]*bucket),
		sweepAt:  min(minSweepAt, maxKeys),
		overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}, nil
}

// Allow reports whether key may make a call now; when not, it says how long
// until it may (for Retry-After).
func (l *RateLimiter) Allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.lookup(key, now)
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *RateLimiter) lookup(key string, now time.Time) *rate.Limiter {
	if b, ok := l.buckets[key]; ok {
		if now.After(b.seen) { // a caller that read the clock earlier may get the lock later
			b.seen = now
		}
		return b.lim
	}
	if len(l.buckets) >= l.sweepAt {
		idle := time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
		for k, b := range l.buckets {
			if now.Sub(b.seen) > idle {
				delete(l.buckets, k)
			}
		}
		// The next sweep when as many new keys have come as are kept:
		// each key costs a constant share of the sweeps.
		l.sweepAt = min(max(minSweepAt, 2*len(l.buckets)), l.maxKeys)
		if len(l.buckets) >= l.maxKeys {
			return l.overflow
		}
	}
	b := &bucket{lim: rate.NewLimiter(l.limit, l.burst), seen: now}
	l.buckets[key] = b
	return b.lim
}

// Len returns how many keys have their own bucket.
func (l *RateLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
