package matcher

import (
	"fmt"
	"sync"
	"time"
)

// breaker stops calling a store that keeps failing. After Failures
// consecutive failures it opens for Cooldown: calls fail at once, without
// a dial or a timeout each. Then one call is let through (half-open); its
// success closes the breaker, its failure opens it for another Cooldown.
//
// Concurrency: mu guards the state.
type breaker struct {
	failures int
	cooldown time.Duration
	now      func() time.Time

	mu        sync.Mutex
	failed    int       // consecutive failures
	openUntil time.Time // zero: closed
	probing   bool      // a half-open call is in flight
}

// admit says whether a call may go to the store. While open it returns
// an error wrapping ErrUnavailable and the time left; after the cooldown
// it admits one probe at a time. A nil breaker admits everything.
func (b *breaker) admit() (retryAfter time.Duration, err error) {
	if b == nil {
		return 0, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return 0, nil
	}
	now := b.now()
	if now.Before(b.openUntil) {
		left := b.openUntil.Sub(now)
		return left, fmt.Errorf("%w: circuit open for %v more after %d failures", ErrUnavailable, left.Round(time.Millisecond), b.failed)
	}
	if b.probing {
		return b.cooldown, fmt.Errorf("%w: circuit half-open, a probe is in flight", ErrUnavailable)
	}
	b.probing = true
	return 0, nil
}

// observe records the outcome of an admitted call: ok is false only for a
// failure to reach the store (not for a caller's cancellation).
func (b *breaker) observe(ok bool) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	wasProbe := b.probing
	b.probing = false
	if ok {
		b.failed, b.openUntil = 0, time.Time{}
		return
	}
	b.failed++
	if wasProbe || b.failed >= b.failures {
		b.openUntil = b.now().Add(b.cooldown)
	}
}

// neutral ends an admitted call that said nothing about the store (the
// caller's ctx ended first).
func (b *breaker) neutral() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
}

// retryAfter is how long a caller should wait before trying again: the
// rest of the cooldown while open, zero while closed.
func (b *breaker) retryAfter() time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return 0
	}
	return max(b.openUntil.Sub(b.now()), 0)
}
