package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// driverState is what a simulated driver is doing.
type driverState int

const (
	idle driverState = iota
	toPickup
	boarding
	onTrip
)

// simDriver is one simulated driver app: online for its shift, reporting
// its position over the driver WebSocket, answering offers, driving to the
// pickup and the dropoff.
type simDriver struct {
	idx   int
	id    string
	token string
	rng   *rand.Rand
	pos   geo.LatLng
	seq   uint64
	state driverState

	shiftStart, shiftEnd time.Duration
	nextPing             time.Duration

	pending *pendingOffer
	ride    dispatch.RideID
	dropoff geo.LatLng
	trip    time.Duration // of the current ride, from the request
	// the current leg: from -> to over [legStart, legEnd)
	from, to         geo.LatLng
	legStart, legEnd time.Duration
	boardEnd         time.Duration
	// cruising: idle and driving back toward demand along the leg.
	cruising bool

	// accounting, in simulated time
	online, busy         time.Duration
	onlineAt, busyAt     time.Duration
	idleSince            time.Duration
	idleGaps             []time.Duration
	declined, expired    int
	cancelled, busyOffer int
	actionErrs, connErrs int
}

type pendingOffer struct {
	ride     dispatch.RideID
	answerAt time.Duration
	accept   bool
	eta      float64
	distM    float64
	pickup   geo.LatLng
	dropoff  geo.LatLng
}

// inMsg is a downward WebSocket frame.
type inMsg struct {
	Type      string          `json:"type"`
	Ride      dispatch.RideID `json:"ride"`
	Pickup    geo.LatLng      `json:"pickup"`
	Dropoff   geo.LatLng      `json:"dropoff"`
	ETA       float64         `json:"eta_s"`
	DistanceM float64         `json:"distance_m"`
}

func (d *simDriver) run(ctx context.Context, c *city, end time.Duration) {
	if err := c.clock.SleepUntil(ctx, d.shiftStart); err != nil {
		return
	}
	tok, err := c.target.Mint(d.id, dispatch.RoleDriver)
	if err != nil {
		d.connErrs++
		return
	}
	d.token = tok
	now := c.clock.Now()
	d.onlineAt, d.idleSince = now, now
	defer d.goOffline(c)
	// A lost connection is redialled, as a driver app would.
	for !d.session(ctx, c, end) {
		d.connErrs++
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// session runs one WebSocket connection until the shift ends (true) or
// the connection fails (false).
func (d *simDriver) session(ctx context.Context, c *city, end time.Duration) bool {
	inbox := make(chan inMsg, 32)
	conn, stop, err := d.dial(ctx, c, func(m inMsg, rctx context.Context) {
		select {
		case inbox <- m:
		case <-rctx.Done():
		}
	}, func() { close(inbox) })
	if err != nil {
		return ctx.Err() != nil
	}
	defer stop()
	now := c.clock.Now()
	if err := d.report(ctx, c, conn, now); err != nil {
		return ctx.Err() != nil
	}
	d.nextPing = now + d.jitterPing(c)
	for {
		now = c.clock.Now()
		over, err := d.due(ctx, c, conn, now)
		if over {
			return true
		}
		if err != nil {
			return ctx.Err() != nil
		}
		wait := c.clock.Real(d.wakeAt(now, end) - now)
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return true
		case m, ok := <-inbox:
			t.Stop()
			if !ok {
				return ctx.Err() != nil // the connection dropped
			}
			d.handle(ctx, c, m)
		case <-t.C:
		}
	}
}

// dial opens the driver WebSocket and starts its reader, which passes
// every frame to got and calls closed when the connection ends; stop
// closes the connection and waits for the reader.
func (d *simDriver) dial(ctx context.Context, c *city, got func(m inMsg, rctx context.Context), closed func()) (*websocket.Conn, func(), error) {
	wsURL := "ws" + strings.TrimPrefix(c.target.BaseURL, "http") + "/v1/drivers/ws"
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, _, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{HTTPClient: c.http,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + d.token}}})
	cancel()
	if err != nil {
		return nil, nil, err
	}
	rctx, stopReader := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer closed()
		for {
			_, b, err := conn.Read(rctx)
			if err != nil {
				return
			}
			var m inMsg
			if json.Unmarshal(b, &m) != nil {
				m = inMsg{Type: "undecodable"}
			}
			got(m, rctx)
		}
	}()
	return conn, func() {
		stopReader()
		conn.CloseNow()
		wg.Wait()
	}, nil
}

// due does what is due at now: answers a pending offer, moves the job on
// (arrived, start, complete) and reports the position when a ping is
// due. It reports whether the shift is over (idle, no offer pending), and
// a failed position report.
func (d *simDriver) due(ctx context.Context, c *city, conn *websocket.Conn, now time.Duration) (over bool, err error) {
	if now >= d.shiftEnd && d.state == idle && d.pending == nil {
		return true, nil
	}
	if p := d.pending; p != nil && now >= p.answerAt {
		d.answer(ctx, c, p, now)
	}
	switch {
	case d.state == toPickup && now >= d.legEnd:
		d.pos = d.to
		if d.action(ctx, c, "arrived") {
			c.track.with(d.ride, func(r *rideRec) { r.arrivedSim = now })
			d.state, d.boardEnd = boarding, now+c.cfg.BoardTime
		} else {
			d.endJob(now, c)
		}
	case d.state == boarding && now >= d.boardEnd:
		if d.action(ctx, c, "start") {
			trip := d.trip
			c.track.with(d.ride, func(r *rideRec) {
				if r.req.TripDuration > 0 {
					trip = r.req.TripDuration
				}
			})
			if trip <= 0 {
				trip = c.driveTime(d.pos, d.dropoff)
			}
			d.state = onTrip
			d.leg(now, d.dropoff, trip)
		} else {
			d.endJob(now, c)
		}
	case d.state == onTrip && now >= d.legEnd:
		d.pos = d.to
		if d.action(ctx, c, "complete") {
			c.track.with(d.ride, func(r *rideRec) { r.completedSim = now })
		}
		d.endJob(now, c)
	}
	if now >= d.nextPing {
		if err := d.report(ctx, c, conn, now); err != nil {
			return false, err // counted by run, which redials
		}
		d.nextPing = max(d.nextPing+c.cfg.Ping, now)
	}
	return false, nil
}

// onlyPing reports whether at now the driver has nothing due but its
// position report: no answer, no step of a job, no end of shift.
func (d *simDriver) onlyPing(now time.Duration) bool {
	switch {
	case now >= d.shiftEnd && d.state == idle && d.pending == nil:
		return false
	case d.pending != nil && now >= d.pending.answerAt:
		return false
	case (d.state == toPickup || d.state == onTrip) && now >= d.legEnd:
		return false
	case d.state == boarding && now >= d.boardEnd:
		return false
	}
	return true
}

// wakeAt is when, after now, the driver next has something to do: a
// ping, an answer, the end of a leg or of boarding, the end of its shift
// or of the run.
func (d *simDriver) wakeAt(now, end time.Duration) time.Duration {
	next := d.nextPing
	for _, t := range []time.Duration{d.shiftEnd, end} {
		if t > now {
			next = min(next, t)
		}
	}
	if d.pending != nil {
		next = min(next, d.pending.answerAt)
	}
	switch d.state {
	case toPickup, onTrip:
		next = min(next, d.legEnd)
	case boarding:
		next = min(next, d.boardEnd)
	}
	return next
}

// jitterPing spreads the drivers' first reports over one interval.
func (d *simDriver) jitterPing(c *city) time.Duration {
	return time.Duration(d.rng.Int64N(int64(c.cfg.Ping)) + 1)
}

func (d *simDriver) handle(ctx context.Context, c *city, m inMsg) {
	now := c.clock.Now()
	switch m.Type {
	case "offer":
		c.track.offered(m.Ride, now, time.Now())
		if d.pending != nil || d.state != idle {
			// The reservation must make this impossible; decline and count.
			d.busyOffer++
			d.post(ctx, c, "/v1/rides/"+string(m.Ride)+"/decline", nil)
			return
		}
		delay := time.Duration(float64(c.cfg.AnswerDelay) * (0.5 + d.rng.Float64()))
		d.pending = &pendingOffer{ride: m.Ride, answerAt: now + delay, accept: d.rng.Float64() < c.cfg.Accept,
			eta: m.ETA, distM: m.DistanceM, pickup: m.Pickup, dropoff: m.Dropoff}
	case "offer_expired", "offer_cancelled":
		if d.pending != nil && d.pending.ride == m.Ride {
			d.pending = nil
			if m.Type == "offer_expired" {
				d.expired++
			} else {
				d.cancelled++
			}
		}
	}
}

// answer sends the pending offer's answer.
func (d *simDriver) answer(ctx context.Context, c *city, p *pendingOffer, now time.Duration) {
	d.pending = nil
	if !p.accept {
		d.declined++
		d.post(ctx, c, "/v1/rides/"+string(p.ride)+"/decline", nil)
		return
	}
	if !d.post(ctx, c, "/v1/rides/"+string(p.ride)+"/accept", nil) {
		return // expired or cancelled meanwhile: still idle
	}
	if c.settle != nil && c.settle(ctx) != nil { // deterministic mode: the search has taken the answer
		return
	}
	if !d.confirm(ctx, c, p.ride) {
		d.expired++ // the answer came after the offer timed out
		return
	}
	d.idleGaps = append(d.idleGaps, now-d.idleSince)
	d.busyAt = now
	d.pos, d.cruising = d.where(now), false
	d.ride, d.dropoff, d.trip = p.ride, p.dropoff, 0
	c.track.with(p.ride, func(r *rideRec) {
		r.acceptedSim, r.acceptedETA, r.acceptedDist, r.driver = now, p.eta, p.distM, d.id
		d.trip = r.req.TripDuration
	})
	d.state = toPickup
	d.leg(now, p.pickup, c.driveTime(d.pos, p.pickup))
}

// confirm waits until the engine has decided on an accepted offer: the
// accept endpoint answers 202 once the answer reached the ride's search,
// which may still have timed the offer out. It reports whether the ride is
// now this driver's.
func (d *simDriver) confirm(ctx context.Context, c *city, id dispatch.RideID) bool {
	for range 200 {
		v, ok := c.getRide(ctx, d.token, id)
		switch {
		case !ok:
			return false // 404: the ride went to another driver
		case v.State != dispatch.Offered:
			return v.State >= dispatch.Accepted && !v.State.Terminal() && string(v.Driver) == d.id
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

// leg starts driving from the current position to to over dur.
func (d *simDriver) leg(now time.Duration, to geo.LatLng, dur time.Duration) {
	d.from, d.to, d.legStart, d.legEnd = d.pos, to, now, now+dur
}

// endJob returns the driver to idle.
func (d *simDriver) endJob(now time.Duration, c *city) {
	d.busy += now - d.busyAt
	d.state, d.ride, d.idleSince = idle, "", now
	if !c.cfg.Reposition {
		return
	}
	// Head back toward demand, as drivers do: to a pickup of the last or
	// next quarter hour (a random one, so drivers spread as demand does).
	if to, ok := c.demandNear(now, d.rng); ok && geo.DistanceM(d.pos, to) > 1000 {
		d.cruising = true
		d.leg(now, to, c.driveTime(d.pos, to))
	}
}

// action posts a trip step for the current ride.
func (d *simDriver) action(ctx context.Context, c *city, step string) bool {
	return d.post(ctx, c, "/v1/rides/"+string(d.ride)+"/"+step, nil)
}

// post sends a driver request; false (and counted) unless it got a 2xx.
func (d *simDriver) post(ctx context.Context, c *city, path string, body any) bool {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.target.BaseURL+path, rd)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	req.Header.Set("Content-Type", "application/json")
	c.posts.Add(1)
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.actionErrs++
		}
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		d.actionErrs++
		return false
	}
	return true
}

// where is the driver's true position now.
func (d *simDriver) where(now time.Duration) geo.LatLng {
	if d.state != toPickup && d.state != onTrip && !d.cruising {
		return d.pos
	}
	if d.cruising && now >= d.legEnd {
		d.cruising, d.pos = false, d.to
		return d.pos
	}
	f := 1.0
	if d.legEnd > d.legStart {
		f = min(1, max(0, float64(now-d.legStart)/float64(d.legEnd-d.legStart)))
	}
	d.pos = geo.LatLng{Lat: d.from.Lat + f*(d.to.Lat-d.from.Lat), Lng: d.from.Lng + f*(d.to.Lng-d.from.Lng)}
	return d.pos
}

// report sends a position frame with GPS noise.
func (d *simDriver) report(ctx context.Context, c *city, conn *websocket.Conn, now time.Duration) error {
	p := d.where(now)
	if c.cfg.GPSNoiseM > 0 {
		p = offsetM(p, d.rng.NormFloat64()*c.cfg.GPSNoiseM, d.rng.NormFloat64()*c.cfg.GPSNoiseM, geo.BBox{MinLat: -90, MinLng: -180, MaxLat: 90, MaxLng: 180})
	}
	status := "available"
	switch d.state {
	case toPickup:
		status = "en_route"
	case boarding, onTrip:
		status = "on_trip"
	}
	if d.pending != nil {
		status = "available"
	}
	d.seq++
	b := fmt.Appendf(nil, `{"type":"position","lat":%.6f,"lng":%.6f,"status":%q,"seq":%d}`, p.Lat, p.Lng, status, d.seq)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := conn.Write(wctx, websocket.MessageText, b); err != nil {
		return err // counted by run, which redials
	}
	c.sent.Add(1)
	c.snaps.driver(now, d.idx, p, d.state != idle)
	return nil
}

// goOffline tells the engine the driver left, at the end of its shift.
func (d *simDriver) goOffline(c *city) {
	now := min(c.clock.Now(), d.shiftEnd)
	d.online += now - d.onlineAt
	if d.state != idle {
		d.busy += now - d.busyAt
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.seq++
	p := d.where(now)
	d.post(ctx, c, "/v1/drivers/"+d.id+"/offline", map[string]any{"seq": d.seq, "lat": round6(p.Lat), "lng": round6(p.Lng)})
}

func round6(v float64) float64 { return math.Round(v*1e6) / 1e6 }

// account adds the driver's counters to t; call it after run returned.
func (d *simDriver) account(t *tracker) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.online += d.online
	t.busy += d.busy
	t.idleGaps = append(t.idleGaps, d.idleGaps...)
	t.declined += d.declined
	t.expired += d.expired
	t.cancelledOffers += d.cancelled
	t.busyOffers += d.busyOffer
	t.actionErrors += d.actionErrs
	t.driverErrors += d.connErrs
}
