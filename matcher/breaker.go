package matcher

import (
	"fmt"
	"sync"
	"time"
)

// breaker stops calling a store that keeps failing. After Failures
// consecutive failures spanning at least span it opens for Cooldown: calls
// fail at once, without a dial or a timeout each. Then one call is let
// through (half-open); its success closes the breaker, its failure opens
// it for another Cooldown.
//
// The span is there because the calls in flight when this process stalls
// (a GC cycle, a burst of other work, a machine shared with other jobs)
// time out together: counted one by one, a single stall of a few hundred
// milliseconds opened the breaker and failed every ride for a cooldown
// although Redis was fine. Failures of one stall land within a few
// milliseconds of each other; a store that is down keeps failing calls
// started after the first failures too, so the streak soon spans more.
//
// Concurrency: mu guards the state.
type breaker struct {
	failures int
	cooldown time.Duration
	span     time.Duration // 0: the count alone opens
	now      func() time.Time

	mu        sync.Mutex
	failed    int       // consecutive failures
	firstFail time.Time // when the streak of failures began
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
	now := b.now()
	if b.failed == 0 {
		b.firstFail = now
	}
	b.failed++
	if wasProbe || (b.failed >= b.failures && now.Sub(b.firstFail) >= b.span) {
		b.openUntil = now.Add(b.cooldown)
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
