package engine

import (
	"context"
	"errors"
	"time"
)

// Quiesce waits until the engine has done everything it was given, for
// the city simulation's deterministic mode, which calls it between its
// steps: the driver gateway has handled framesIn WebSocket frames, every
// position it published is in the index, no search has work left (each
// waits for an answer, a timer or a batch window) and no message to a
// driver waits to be written. It returns how many messages the gateway
// has written to drivers, so the caller can wait until it has read them.
//
// On a virtual clock nothing changes after that until the clock moves or
// a client calls. It needs role all; on the wall clock it is a snapshot
// that timers may outdate at once.
func (e *Engine) Quiesce(ctx context.Context, framesIn uint64) (framesOut uint64, err error) {
	if e.front == nil || e.in.worker == nil || e.in.publisher == nil {
		return 0, errors.New("quiesce needs role all")
	}
	pause := 20 * time.Microsecond
	for {
		if out, ok, err := e.quiet(ctx, framesIn); err != nil || ok {
			return out, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Millisecond)
	}
}

// quiet checks Quiesce's conditions once, upstream first: frames feed the
// positions and the searches, searches feed the drivers' queues, and
// nothing downstream feeds back without the clock or a client.
func (e *Engine) quiet(ctx context.Context, framesIn uint64) (framesOut uint64, ok bool, err error) {
	if e.front.drivers.Traffic().FramesIn < framesIn {
		return 0, false, nil
	}
	if err := e.in.publisher.Flush(ctx); err != nil {
		return 0, false, err
	}
	lag, err := e.in.worker.Lag(ctx)
	if err != nil {
		return 0, false, err
	}
	for _, n := range lag {
		if n > 0 {
			return 0, false, nil
		}
	}
	if !e.front.disp.Idle() {
		return 0, false, nil
	}
	tr := e.front.drivers.Traffic()
	return tr.FramesOut, tr.Queued == 0, nil
}
