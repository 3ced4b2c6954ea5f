package sim

import (
	"container/heap"
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/clock"
)

// Deterministic mode.
//
// With Target.Clock and Target.Quiesce set (an in-process engine on a
// virtual clock), RunCity runs no goroutine per driver and rider on the
// wall clock. One loop replays the city as discrete events in simulated
// time:
//   - the next step is the earliest of the drivers' next actions, the next
//     ride request and the engine's next timer; the engine goes first on a
//     tie, and drivers and riders in the order they were scheduled;
//   - the engine's timers fire one at a time;
//   - before and after every step that can change a ride (a request, a
//     driver's answer or job step, an engine timer) the loop waits until
//     the engine has done everything it was given and the drivers have
//     read every message it wrote to them, and after it hands the
//     messages to the drivers in driver order.
//
// Position reports need no wait of their own: the next step that can
// change a ride waits for them. So the same seed gives the same rides
// whatever the machine's speed; time runs as fast as the machine allows,
// up to Speed. Riders hold no WebSocket in this mode: a ride's final
// state is read over HTTP at the end.

// lsEvent is a step of the loop: a driver's next action (ride < 0) or a
// ride request (driver < 0).
type lsEvent struct {
	at      time.Duration
	seq     uint64
	driver  int
	ver     uint64 // the driver's schedule version; older ones are stale
	ride    int
	attempt int
}

type lsHeap []lsEvent

func (h lsHeap) Len() int { return len(h) }
func (h lsHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h lsHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *lsHeap) Push(x any)   { *h = append(*h, x.(lsEvent)) }
func (h *lsHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// lockstep is the loop's state; only the loop's goroutine touches it,
// except inbox (the WebSocket readers fill it).
type lockstep struct {
	c     *city
	v     *clock.Virtual
	quiet func(ctx context.Context, framesIn uint64) (uint64, error)
	end   time.Duration
	wall  time.Time // wall time at the start, for the Speed cap

	events lsHeap
	seq    uint64
	ver    []uint64 // per driver
	conns  []*websocket.Conn
	stops  []func()
	gone   []bool // the driver's shift is over (or its connection failed)

	inboxMu sync.Mutex
	inbox   [][]inMsg // per driver, filled by its reader

	riders  map[int]lsRider // by request index
	created []*rideRec
}

// lsRider is one request's rider: its token and the record of its ride.
type lsRider struct {
	tok string
	rec *rideRec
}

// runLockstep replays reqs in deterministic mode until end.
func (c *city) runLockstep(ctx context.Context, reqs []simRequest, end time.Duration) error {
	l := &lockstep{c: c, v: c.target.Clock, quiet: c.target.Quiesce, end: end, wall: time.Now(),
		ver: make([]uint64, len(c.drivers)), conns: make([]*websocket.Conn, len(c.drivers)),
		stops: make([]func(), len(c.drivers)), gone: make([]bool, len(c.drivers)),
		inbox: make([][]inMsg, len(c.drivers)), riders: map[int]lsRider{}}
	c.settle = l.settle
	defer func() {
		for _, stop := range l.stops {
			if stop != nil {
				stop()
			}
		}
	}()
	for i, d := range c.drivers {
		l.schedule(i, d.shiftStart)
	}
	for i, q := range reqs {
		l.push(lsEvent{at: q.At, driver: -1, ride: i})
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		next := end + 1
		if len(l.events) > 0 {
			next = l.events[0].at
		}
		if t, ok := l.v.Next(); ok && c.clock.simAt(t) <= next && c.clock.simAt(t) < end {
			// The timer may start a search: the positions reported so far
			// must be in the index first.
			if err := l.settle(ctx); err != nil {
				return err
			}
			l.pace(ctx, c.clock.simAt(t))
			l.v.Fire(t)
			if err := l.settle(ctx); err != nil {
				return err
			}
			continue
		}
		if next >= end {
			break // the run ends at end: drivers still online go offline below
		}
		e := heap.Pop(&l.events).(lsEvent)
		if e.driver >= 0 && e.ver != l.ver[e.driver] {
			continue // rescheduled since
		}
		l.pace(ctx, e.at)
		l.v.Advance(c.clock.virtualAt(e.at))
		var err error
		if e.driver >= 0 {
			err = l.driverStep(ctx, e.driver, e.at)
		} else {
			err = l.request(ctx, reqs[e.ride], e)
		}
		if err != nil {
			return err
		}
	}
	l.v.Advance(c.clock.virtualAt(end))
	if err := l.settle(ctx); err != nil {
		return err
	}
	for i, d := range c.drivers {
		if l.conns[i] != nil && !l.gone[i] {
			d.goOffline(c)
		}
	}
	if err := l.settle(ctx); err != nil {
		return err
	}
	l.finalStates(ctx)
	return nil
}

func (l *lockstep) push(e lsEvent) {
	l.seq++
	e.seq = l.seq
	heap.Push(&l.events, e)
}

// schedule sets driver i's next action to at, replacing the one pending.
func (l *lockstep) schedule(i int, at time.Duration) {
	l.ver[i]++
	l.push(lsEvent{at: at, driver: i, ver: l.ver[i], ride: -1})
}

// pace holds the loop back so that simulated time t is not reached
// before wall time allows at Speed.
func (l *lockstep) pace(ctx context.Context, t time.Duration) {
	due := l.wall.Add(l.c.clock.Real(t - l.c.clock.origin))
	if wait := time.Until(due); wait > time.Millisecond {
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// settle waits until the engine has done what it was given and the
// drivers have read what it wrote, then hands them the messages; again
// while handing them over made drivers call the engine.
func (l *lockstep) settle(ctx context.Context) error {
	for {
		out, err := l.quiet(ctx, l.c.sent.Load())
		if err != nil {
			return fmt.Errorf("waiting for the engine: %w", err)
		}
		pause := 10 * time.Microsecond
		for l.c.read.Load() < out {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Millisecond)
		}
		posts := l.c.posts.Load()
		l.deliver(ctx)
		if l.c.posts.Load() == posts {
			return nil
		}
	}
}

// deliver hands each driver, in driver order, the messages it read.
func (l *lockstep) deliver(ctx context.Context) {
	for i, d := range l.c.drivers {
		l.inboxMu.Lock()
		msgs := l.inbox[i]
		l.inbox[i] = nil
		l.inboxMu.Unlock()
		if len(msgs) == 0 || l.gone[i] {
			continue
		}
		for _, m := range msgs {
			d.handle(ctx, l.c, m)
		}
		l.schedule(i, d.wakeAt(l.c.clock.Now(), l.end))
	}
}

// driverStep runs driver i's action due at now: coming online, or what
// due does; a step that calls the engine is settled before and after.
func (l *lockstep) driverStep(ctx context.Context, i int, now time.Duration) error {
	c, d := l.c, l.c.drivers[i]
	if l.gone[i] {
		return nil
	}
	if l.conns[i] == nil {
		return l.online(ctx, i, now)
	}
	calls := !d.onlyPing(now)
	if calls {
		if err := l.settle(ctx); err != nil {
			return err
		}
	}
	over, err := d.due(ctx, c, l.conns[i], now)
	switch {
	case err != nil:
		d.connErrs++ // in this mode a lost connection ends the shift
		l.leave(i)
	case over:
		d.goOffline(c)
		if err := l.settle(ctx); err != nil {
			return err
		}
		l.leave(i)
		return nil
	default:
		l.schedule(i, d.wakeAt(now, l.end))
	}
	if calls {
		return l.settle(ctx)
	}
	return nil
}

// online brings driver i online: token, WebSocket, first report.
func (l *lockstep) online(ctx context.Context, i int, now time.Duration) error {
	c, d := l.c, l.c.drivers[i]
	tok, err := c.target.Mint(d.id, dispatch.RoleDriver)
	if err != nil {
		d.connErrs++
		l.gone[i] = true
		return nil
	}
	d.token = tok
	conn, stop, err := d.dial(ctx, c, func(m inMsg, _ context.Context) {
		l.inboxMu.Lock()
		l.inbox[i] = append(l.inbox[i], m)
		l.inboxMu.Unlock()
		c.read.Add(1)
	}, func() {})
	if err != nil {
		d.connErrs++
		l.gone[i] = true
		return nil
	}
	l.conns[i], l.stops[i] = conn, stop
	d.onlineAt, d.idleSince = now, now
	if err := d.report(ctx, c, conn, now); err != nil {
		d.connErrs++
		l.leave(i)
		return nil
	}
	d.nextPing = now + d.jitterPing(c)
	l.schedule(i, d.wakeAt(now, l.end))
	return nil
}

// leave ends driver i's shift: its connection closes once the engine has
// written it everything (settle ran), so no message is left unread.
func (l *lockstep) leave(i int) {
	l.gone[i] = true
	l.ver[i]++
	if l.stops[i] != nil {
		l.stops[i]()
		l.stops[i] = nil
	}
}

// request sends ride request q (attempt e.attempt), settled before and
// after; a 429, 503 or transport error is tried again after the server's
// Retry-After, in simulated time.
func (l *lockstep) request(ctx context.Context, q simRequest, e lsEvent) error {
	c := l.c
	if err := l.settle(ctx); err != nil {
		return err
	}
	rd, ok := l.riders[e.ride]
	if !ok {
		rd.rec = &rideRec{idx: e.ride, req: q.Request, dropoff: q.dropoff}
		c.track.add(rd.rec)
		c.snaps.demand(q.At, q.Pickup)
		tok, err := c.riderToken(rd.rec)
		if err != nil {
			return nil
		}
		rd.tok = tok
		l.riders[e.ride] = rd
	}
	r := rd.rec
	body, key := c.rideRequest(r)
	r.sentSim, r.sentWall = c.clock.Now(), time.Now()
	if e.attempt == 0 {
		c.track.locked(func(*tracker) { r.first = r.sentWall })
	}
	var ride dispatch.RideView
	status, retryAfter, err := c.postRide(ctx, rd.tok, key, body, &ride)
	r.status = status
	switch {
	case (status == http.StatusCreated || status == http.StatusOK) && err == nil:
		c.track.created(r, ride.ID)
		l.created = append(l.created, r)
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable || status == 0:
		if ctx.Err() == nil && e.attempt < c.attempts()-1 {
			c.track.locked(func(t *tracker) { t.retries++ })
			l.push(lsEvent{at: c.clock.Now() + retryAfter, driver: -1, ride: e.ride, attempt: e.attempt + 1})
		}
	}
	return l.settle(ctx)
}

// finalStates reads every created ride's state, as its rider.
func (l *lockstep) finalStates(ctx context.Context) {
	for _, r := range l.created {
		if v, ok := l.c.getRide(ctx, l.riders[r.idx].tok, r.id); ok {
			l.c.seen(r, v.State)
		}
	}
}
