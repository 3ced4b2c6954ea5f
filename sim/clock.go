package sim

import (
	"context"
	"time"

	"github.com/hexdispatch/hexdispatch/internal/clock"
)

// Clock maps wall time onto simulated time: sim = Origin + (wall - start) *
// Speed. Speed 1 is real time; Speed 20 replays an hour in three minutes.
// The engine under test gets its durations (TTL, offer timeout, search
// deadline, batch window) divided by Speed, so its timeouts scale with it.
//
// In deterministic mode the clock is the engine's virtual clock instead:
// simulated time is Origin plus how far the virtual clock moved since the
// start, and only the simulation moves it.
type Clock struct {
	start  time.Time
	origin time.Duration // simulated time at start, from the demand's midnight
	speed  float64

	v     *clock.Virtual // deterministic mode
	epoch time.Time      // v's time at the start
}

// newVirtualClock follows v from now on, which is simulated time origin.
func newVirtualClock(v *clock.Virtual, origin time.Duration, speed float64) *Clock {
	return &Clock{start: time.Now(), origin: origin, speed: speed, v: v, epoch: v.Now()}
}

// virtualAt is the virtual clock's time at simulated time t.
func (c *Clock) virtualAt(t time.Duration) time.Time { return c.epoch.Add(t - c.origin) }

// simAt is the simulated time of the virtual clock's time t.
func (c *Clock) simAt(t time.Time) time.Duration { return c.origin + t.Sub(c.epoch) }

// NewClock starts a clock at simulated time origin now.
func NewClock(origin time.Duration, speed float64) *Clock {
	return &Clock{start: time.Now(), origin: origin, speed: speed}
}

// Now is the simulated time, from the demand's midnight.
func (c *Clock) Now() time.Duration {
	if c.v != nil {
		return c.simAt(c.v.Now())
	}
	return c.origin + time.Duration(float64(time.Since(c.start))*c.speed)
}

// Speed is the acceleration.
func (c *Clock) Speed() float64 { return c.speed }

// Real converts a simulated duration to wall time.
func (c *Clock) Real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.speed) }

// SleepUntil waits until simulated time at, or ctx's end.
func (c *Clock) SleepUntil(ctx context.Context, at time.Duration) error {
	wait := c.Real(at - c.Now())
	if wait <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
