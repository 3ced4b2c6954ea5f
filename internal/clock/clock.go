// Package clock is the time source of the engine's timers that decide
// outcomes: offer timeouts, search deadlines and retries, batch windows,
// driver TTL. Production runs on Wall; the city simulation's deterministic
// mode runs the engine on a Virtual clock that only moves when the
// simulation moves it, so that the same seed gives the same rides.
package clock

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Clock tells the time and runs functions later.
type Clock interface {
	Now() time.Time
	// AfterFunc runs f once d has passed, unless Stop is called first. On
	// Wall f runs in its own goroutine; on Virtual it runs inside
	// Advance, so it must not block.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not run yet and reports whether
	// it did so.
	Stop() bool
}

// Or returns c, or Wall when c is nil: the zero value of a config means
// the wall clock.
func Or(c Clock) Clock {
	if c == nil {
		return Wall
	}
	return c
}

// WithTimeout is context.WithTimeout on c: the context ends d after now
// on c's time. On Wall it also carries the deadline, for callees that
// pass deadlines on (RPC).
func WithTimeout(parent context.Context, c Clock, d time.Duration) (context.Context, context.CancelFunc) {
	if _, wall := c.(wallClock); wall {
		return context.WithTimeout(parent, d)
	}
	ctx, cancel := context.WithCancel(parent)
	t := c.AfterFunc(d, cancel)
	return ctx, func() { t.Stop(); cancel() }
}

// Wall is the system clock.
var Wall Clock = wallClock{}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Virtual is a clock that moves only when Advance moves it. Its timers run
// in deadline order (ties in the order they were set), each at its own
// deadline: Now inside a timer's function is that timer's deadline.
//
// Concurrency: mu guards every field; timers' functions run without it
// held, so they may set new timers.
type Virtual struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64
	timers timerHeap
	// onMove, when set, is told every new time (outside mu), before the
	// timers due then run.
	onMove func(time.Time)
}

// NewVirtual returns a virtual clock standing at start.
func NewVirtual(start time.Time) *Virtual { return &Virtual{now: start} }

// OnMove registers f to be told every time the clock moves; call it
// before the clock is shared. An embedded Redis follows the clock so that
// its TTLs expire on the same time as the engine's timers.
func (v *Virtual) OnMove(f func(time.Time)) { v.onMove = f }

// Now is the clock's time.
func (v *Virtual) Now() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.now
}

// AfterFunc sets a timer d from now; d <= 0 is due at once (at the next
// Advance, which may be to the current time).
func (v *Virtual) AfterFunc(d time.Duration, f func()) Timer {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seq++
	t := &vtimer{v: v, at: v.now.Add(max(d, 0)), seq: v.seq, f: f, index: -1}
	heap.Push(&v.timers, t)
	return t
}

// Next returns the deadline of the earliest pending timer; false when
// there is none.
func (v *Virtual) Next() (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.timers) == 0 {
		return time.Time{}, false
	}
	return v.timers[0].at, true
}

// Fire moves the clock to the earliest timer's deadline, if that is not
// after until, and runs that one timer. It reports whether it ran one.
// Running timers one at a time lets the caller wait for the engine to
// settle between them.
func (v *Virtual) Fire(until time.Time) bool {
	v.mu.Lock()
	if len(v.timers) == 0 || v.timers[0].at.After(until) {
		v.mu.Unlock()
		return false
	}
	t := heap.Pop(&v.timers).(*vtimer)
	moved := t.at.After(v.now)
	if moved {
		v.now = t.at
	}
	now, onMove := v.now, v.onMove
	v.mu.Unlock()
	if moved && onMove != nil {
		onMove(now)
	}
	t.f()
	return true
}

// Advance runs, one after the other, every timer due by to (including
// those the timers set), then moves the clock to to. A time before now
// leaves the clock where it is.
func (v *Virtual) Advance(to time.Time) {
	for v.Fire(to) {
	}
	v.mu.Lock()
	moved := to.After(v.now)
	if moved {
		v.now = to
	}
	onMove := v.onMove
	v.mu.Unlock()
	if moved && onMove != nil {
		onMove(to)
	}
}

type vtimer struct {
	v     *Virtual
	at    time.Time
	seq   uint64
	f     func()
	index int // in the heap; -1 when not in it
}

func (t *vtimer) Stop() bool {
	t.v.mu.Lock()
	defer t.v.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&t.v.timers, t.index)
	return true
}

// timerHeap orders timers by deadline, then by when they were set.
type timerHeap []*vtimer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *timerHeap) Push(x any) {
	t := x.(*vtimer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}
