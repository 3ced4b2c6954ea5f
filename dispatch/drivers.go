package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// PositionSink is where the gateway sends driver positions;
// positions.Publisher implements it. Publish returns
// positions.ErrOverloaded when the buffer is full (the gateway sheds with
// 429) and an error wrapping positions.ErrBadEvent for an invalid event.
type PositionSink interface {
	Publish(ev positions.Event) error
	Remove(id positions.DriverID, seq uint64, lastPos geo.LatLng) error
}

// PositionFrame is a driver's position report, over HTTP or WebSocket.
type PositionFrame struct {
	Lat     *float64         `json:"lat"`
	Lng     *float64         `json:"lng"`
	Heading *float64         `json:"heading,omitempty"` // degrees clockwise from north
	Speed   *float64         `json:"speed,omitempty"`   // metres per second
	Status  positions.Status `json:"status"`
	Seq     uint64           `json:"seq"`
	// TS is the phone's clock (RFC 3339); kept for ops, never trusted.
	TS *time.Time `json:"ts,omitempty"`
}

// event validates f and turns it into a position event for driver id. The
// error names the field.
func (f PositionFrame) event(id positions.DriverID, now time.Time) (positions.Event, error) {
	if f.Lat == nil {
		return positions.Event{}, BadField("lat", "lat is required")
	}
	if f.Lng == nil {
		return positions.Event{}, BadField("lng", "lng is required")
	}
	p := geo.LatLng{Lat: *f.Lat, Lng: *f.Lng}
	if err := p.Validate(); err != nil {
		field := "lat"
		if strings.Contains(err.Error(), "lng") {
			field = "lng"
		}
		return positions.Event{}, BadField(field, "%v", err)
	}
	if !f.Status.Valid() {
		return positions.Event{}, BadField("status", "status is required: available, en_route or on_trip")
	}
	if f.Seq == 0 {
		return positions.Event{}, BadField("seq", "seq must be a positive integer that grows with every report")
	}
	ev := positions.Event{Kind: positions.KindPosition, Driver: id, Pos: p, Status: f.Status, Seq: f.Seq,
		Heading: positions.NoHeading, ReceiveTime: now}
	if f.Heading != nil {
		h := *f.Heading
		if math.IsNaN(h) || h < 0 || h >= 360 {
			return positions.Event{}, BadField("heading", "heading %v is outside [0, 360)", h)
		}
		ev.Heading = positions.Heading(h * 10)
	}
	if f.Speed != nil {
		s := *f.Speed
		if math.IsNaN(s) || s < 0 || s > 655 {
			return positions.Event{}, BadField("speed", "speed %v m/s is outside [0, 655]", s)
		}
		ev.Speed = positions.Speed(math.Round(s * 100))
	}
	if f.TS != nil && f.TS.UnixMicro() > 0 {
		ev.SourceTime = *f.TS
	}
	return ev, nil
}

// DriversConfig configures the driver gateway.
type DriversConfig struct {
	Sink   PositionSink
	Signer *Signer
	Now    func() time.Time
	Logger *slog.Logger
	// OriginPatterns are the browser origins allowed to open the driver
	// WebSocket besides the API's own host (native apps send none).
	OriginPatterns []string
	// ReadLimit bounds one WebSocket frame.
	ReadLimit int64
	// SendQueue bounds the messages waiting for a slow driver connection;
	// when full, new messages to it are dropped and counted.
	SendQueue int
	// PingEvery is the WebSocket keepalive: a connection silent for
	// PingEvery is pinged, and closed if the pong does not come within
	// PingEvery.
	PingEvery time.Duration
	// WriteTimeout bounds one WebSocket write.
	WriteTimeout time.Duration
	// Pressure, when set, reports the process's load (LoadMonitor): at 1
	// or more, GPS gives way to rides. A driver's position that comes
	// within ThrottleEvery of its last accepted one, with the same
	// status, is dropped and counted (Throttled) instead of published:
	// matching loses at most ThrottleEvery of freshness, and the rides
	// get the CPU.
	Pressure      func() float64
	ThrottleEvery time.Duration
	// Actions, when set, takes the drivers' ride frames (accept, decline,
	// arrived, start, complete, cancel) from the WebSocket; Rides.DriverAction
	// is it.
	Actions func(ctx context.Context, driver positions.DriverID, ride RideID, kind EventKind) (Ride, error)
}

// DefaultDriversConfig returns the defaults (Sink and Signer unset).
func DefaultDriversConfig() DriversConfig {
	return DriversConfig{Now: time.Now, Logger: slog.Default(), ReadLimit: 4096, SendQueue: 32,
		PingEvery: 20 * time.Second, WriteTimeout: 5 * time.Second, ThrottleEvery: 2 * time.Second}
}

// Validate checks c.
func (c DriversConfig) Validate() error {
	if c.Sink == nil || c.Signer == nil || c.Now == nil || c.Logger == nil || c.ReadLimit < 256 || c.SendQueue < 1 || c.PingEvery <= 0 || c.WriteTimeout <= 0 {
		return fmt.Errorf("drivers config: Sink, Signer, Now and Logger are required; ReadLimit >= 256, SendQueue >= 1, PingEvery and WriteTimeout > 0")
	}
	for _, p := range c.OriginPatterns {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("drivers config: origin pattern %q: %w", p, err)
		}
	}
	return nil
}

// DriverStats counts what the gateway did.
type DriverStats struct {
	Positions, Rejected, Shed, Connections, Dropped uint64
	// Throttled counts positions dropped under load (DriversConfig.Pressure).
	Throttled uint64
}

// Drivers is the driver gateway: position reports in (HTTP and
// WebSocket), messages such as offers out (WebSocket).
//
// Concurrency: connsMu guards conns, each connection's nextPing,
// pinging and park. A connection's reader (serve) runs while frames
// come; between them an idle connection is parked (on Linux): it waits
// in the parker's epoll set with no goroutine, and the parker hands it to
// a goroutine of pool when its socket turns readable. The writer runs only
// while messages wait (see driverConn); the reader that sees the
// connection end waits for it. One pinger goroutine and the parker's
// goroutine start with the first connection. Close ends every connection
// with a close code and waits for all of them.
type Drivers struct {
	cfg DriversConfig

	base     context.Context
	cancel   context.CancelFunc
	handlers sync.WaitGroup // connections, the pinger and the parker, which the HTTP server's Shutdown does not wait for
	pool     *goPool        // runs the readers

	connsMu sync.Mutex
	conns   map[positions.DriverID]*driverConn
	pinging bool    // the pinger runs (and the parker, if park is set)
	park    *parker // nil until the first connection, or where parking is unavailable

	// lastMu guards last: each driver's last accepted position, for riders
	// watching their driver approach. Bounded by the drivers that report
	// here; entries older than lastTTL are dropped by the sweep in accept.
	lastMu    sync.Mutex
	last      map[positions.DriverID]lastPos
	lastSweep time.Time

	positions, rejected, shed, connections, dropped, throttled atomic.Uint64

	// WebSocket traffic (Traffic): frames read and handled, messages
	// written, messages queued and not yet written or discarded.
	framesIn, framesOut atomic.Uint64
	queued              atomic.Int64
	parked              atomic.Int64 // connections waiting with no goroutine
	parkFailures        atomic.Uint64
}

// Traffic counts the gateway's WebSocket frames, for a caller that waits
// for the gateway to settle (the city simulation's deterministic mode):
// every frame a driver sent has been handled when FramesIn equals the
// frames sent, and every message reached its socket when Queued is 0.
type Traffic struct {
	FramesIn  uint64 // frames read from drivers and handled (position published, action done, or error replied)
	FramesOut uint64 // messages (offers, acks, errors) written to drivers' sockets; pings not counted
	Queued    int64  // messages waiting to be written
}

// Traffic returns the WebSocket frame counts.
func (d *Drivers) Traffic() Traffic {
	return Traffic{FramesIn: d.framesIn.Load(), FramesOut: d.framesOut.Load(), Queued: d.queued.Load()}
}

type lastPos struct {
	p      geo.LatLng
	at     time.Time
	status positions.Status
}

// lastTTL bounds how long a last position is kept.
const lastTTL = 2 * time.Minute

// NewDrivers returns the gateway.
func NewDrivers(cfg DriversConfig) (*Drivers, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Drivers{cfg: cfg, base: ctx, cancel: cancel, conns: make(map[positions.DriverID]*driverConn),
		last: make(map[positions.DriverID]lastPos), pool: newGoPool(readerGoroutineIdle, ctx.Done())}, nil
}

// readerGoroutineIdle is how long a reader goroutine waits for another
// connection's frame before it exits.
const readerGoroutineIdle = 10 * time.Second

// Close ends every WebSocket connection with StatusGoingAway and waits for
// their goroutines.
func (d *Drivers) Close() {
	d.connsMu.Lock() // ws adds to handlers under this lock after checking base
	d.cancel()
	open := make([]*driverConn, 0, len(d.conns))
	for _, dc := range d.conns {
		open = append(open, dc)
	}
	park := d.park
	d.connsMu.Unlock()
	// Each connection gets a close frame and up to wsCloseWait to
	// answer it. A parked connection gets its reader back first, which
	// reads the answer (and never parks again); the writes run at once,
	// since a driver that does not read can hold one for WriteTimeout.
	var wg sync.WaitGroup
	for _, dc := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.unpark(dc)
			dc.ws.close(ws.StatusGoingAway, "server shutting down")
		}()
	}
	wg.Wait()
	if park != nil {
		for _, resume := range park.stop() {
			resume()
		}
	}
	d.handlers.Wait()
	d.pool.wait()
}

// Stats returns the counters.
func (d *Drivers) Stats() DriverStats {
	return DriverStats{Positions: d.positions.Load(), Rejected: d.rejected.Load(), Shed: d.shed.Load(), Throttled: d.throttled.Load(),
		Connections: d.connections.Load(), Dropped: d.dropped.Load()}
}

// Parked returns how many driver WebSockets wait with no goroutine.
func (d *Drivers) Parked() int { return int(d.parked.Load()) }

// ParkFailures returns how many times an idle driver WebSocket could not
// park for an epoll error (a closed connection or a stopped gateway is
// not one) and kept its reader goroutine until its next frame.
func (d *Drivers) ParkFailures() uint64 { return d.parkFailures.Load() }

// Connections returns how many driver WebSockets are open.
func (d *Drivers) Connections() int {
	d.connsMu.Lock()
	defer d.connsMu.Unlock()
	return len(d.conns)
}

// Connected reports whether driver id has a WebSocket open here.
func (d *Drivers) Connected(id positions.DriverID) bool {
	d.connsMu.Lock()
	defer d.connsMu.Unlock()
	_, ok := d.conns[id]
	return ok
}

// Send queues msg (marshalled to JSON) for driver id's WebSocket. It never
// blocks: it returns false when the driver is not connected here or its
// queue is full (the message is dropped and counted).
func (d *Drivers) Send(id positions.DriverID, msg any) bool {
	d.connsMu.Lock()
	c, ok := d.conns[id]
	d.connsMu.Unlock()
	if !ok {
		return false // not connected here: no need to encode
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return false
	}
	return d.enqueue(c, b)
}

// Mux is where Routes registers; *http.ServeMux is one.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Routes adds the driver endpoints to mux.
func (d *Drivers) Routes(mux Mux) {
	auth := func(h http.HandlerFunc) http.Handler { return d.cfg.Signer.RequireRole(d.cfg.Now, h, RoleDriver) }
	mux.Handle("POST /v1/drivers/{id}/location", auth(d.location))
	mux.Handle("POST /v1/drivers/{id}/offline", auth(d.offline))
	mux.Handle("GET /v1/drivers/ws", http.HandlerFunc(d.ws))
}

// self returns the path's driver ID if the token's subject is that driver.
func self(r *http.Request) (positions.DriverID, error) {
	c, _ := ClaimsFrom(r.Context())
	id := positions.DriverID(r.PathValue("id"))
	if err := id.Validate(); err != nil {
		return "", BadField("id", "%v", err)
	}
	if string(id) != c.Subject {
		return "", &APIError{Status: http.StatusForbidden, Code: "forbidden", Message: "a driver may only act as itself"}
	}
	return id, nil
}

const maxDriverBody = 4096

func (d *Drivers) location(w http.ResponseWriter, r *http.Request) {
	id, err := self(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	var f PositionFrame
	if err := DecodeJSON(w, r, maxDriverBody, &f); err != nil {
		d.rejected.Add(1)
		WriteError(w, err)
		return
	}
	if err := d.accept(id, f); err != nil {
		WriteError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, accepted{Accepted: true, Seq: f.Seq})
}

// accepted answers a position or an offline report taken (202): its
// seq, when it had one.
type accepted struct {
	Accepted bool   `json:"accepted"`
	Seq      uint64 `json:"seq,omitempty"`
}

// accept validates and publishes one position.
func (d *Drivers) accept(id positions.DriverID, f PositionFrame) error {
	ev, err := f.event(id, d.cfg.Now())
	if err != nil {
		d.rejected.Add(1)
		return err
	}
	if d.throttle(id, ev) {
		d.throttled.Add(1)
		return nil
	}
	if err := d.publish(func() error { return d.cfg.Sink.Publish(ev) }); err != nil {
		return err
	}
	d.remember(id, ev.Pos, ev.ReceiveTime, ev.Status)
	return nil
}

// throttle reports whether ev gives way under load: the process is
// saturated and the driver's last accepted position, with the same
// status, is younger than ThrottleEvery.
func (d *Drivers) throttle(id positions.DriverID, ev positions.Event) bool {
	if d.cfg.Pressure == nil || d.cfg.ThrottleEvery <= 0 || d.cfg.Pressure() < 1 {
		return false
	}
	d.lastMu.Lock()
	v, ok := d.last[id]
	d.lastMu.Unlock()
	return ok && v.status == ev.Status && ev.ReceiveTime.Sub(v.at) < d.cfg.ThrottleEvery
}

func (d *Drivers) remember(id positions.DriverID, p geo.LatLng, at time.Time, st positions.Status) {
	d.lastMu.Lock()
	defer d.lastMu.Unlock()
	d.last[id] = lastPos{p: p, at: at, status: st}
	if at.Sub(d.lastSweep) > lastTTL {
		for k, v := range d.last {
			if at.Sub(v.at) > lastTTL {
				delete(d.last, k)
			}
		}
		d.lastSweep = at
	}
}

// LastPosition returns the last position driver id reported through this
// gateway in the last two minutes.
func (d *Drivers) LastPosition(id positions.DriverID) (geo.LatLng, time.Time, bool) {
	d.lastMu.Lock()
	defer d.lastMu.Unlock()
	v, ok := d.last[id]
	if !ok || d.cfg.Now().Sub(v.at) > lastTTL {
		return geo.LatLng{}, time.Time{}, false
	}
	return v.p, v.at, true
}

func (d *Drivers) publish(fn func() error) error {
	switch err := fn(); {
	case err == nil:
		d.positions.Add(1)
		return nil
	case errors.Is(err, positions.ErrOverloaded):
		d.shed.Add(1)
		return &APIError{Status: http.StatusTooManyRequests, Code: "overloaded", Message: "position intake is full; retry later", RetryAfter: time.Second}
	case errors.Is(err, positions.ErrBadEvent):
		d.rejected.Add(1)
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_field", Message: err.Error()}
	default:
		return &APIError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "position intake unavailable", RetryAfter: time.Second}
	}
}

// OfflineFrame tells the engine a driver stopped working.
type OfflineFrame struct {
	Seq uint64   `json:"seq"`
	Lat *float64 `json:"lat"`
	Lng *float64 `json:"lng"`
}

func (d *Drivers) offline(w http.ResponseWriter, r *http.Request) {
	id, err := self(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	var f OfflineFrame
	if err := DecodeJSON(w, r, maxDriverBody, &f); err != nil {
		WriteError(w, err)
		return
	}
	if err := d.goOffline(id, f); err != nil {
		WriteError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, accepted{Accepted: true})
}

func (d *Drivers) goOffline(id positions.DriverID, f OfflineFrame) error {
	if f.Seq == 0 {
		return BadField("seq", "seq must be newer than the last position's")
	}
	if f.Lat == nil || f.Lng == nil {
		return BadField("lat", "lat and lng of the last position are required")
	}
	p := geo.LatLng{Lat: *f.Lat, Lng: *f.Lng}
	if err := p.Validate(); err != nil {
		return BadField("lat", "%v", err)
	}
	return d.publish(func() error { return d.cfg.Sink.Remove(id, f.Seq, p) })
}

// wsActions maps the ride frames a driver may send to their events.
var wsActions = map[string]EventKind{
	"accept": EvAccept, "decline": EvDecline, "arrived": EvArrive,
	"start": EvStart, "complete": EvComplete, "cancel": EvDriverCancel,
}

// wsFrame is an upward WebSocket frame: {"type": "position", ...}.
type wsFrame struct {
	Type string `json:"type"`
	PositionFrame
	Ride RideID `json:"ride,omitempty"`
}

// ws serves one driver's WebSocket. The token comes in the Authorization
// header or, for browsers that cannot set it, the access_token query
// parameter. After the upgrade the handler returns, so the HTTP server's
// goroutine, request and buffers are freed; the connection lives on in
// its reader (serve), parked between frames.
func (d *Drivers) ws(w http.ResponseWriter, r *http.Request) {
	c, err := d.cfg.Signer.Verify(wsToken(r), d.cfg.Now())
	if err != nil {
		WriteError(w, &APIError{Status: http.StatusUnauthorized, Code: "invalid_token", Message: err.Error()})
		return
	}
	if c.Role != RoleDriver {
		WriteError(w, &APIError{Status: http.StatusForbidden, Code: "forbidden", Message: "the driver WebSocket needs a driver token"})
		return
	}
	if err := checkUpgrade(r, d.cfg.OriginPatterns); err != nil {
		WriteError(w, err)
		return
	}
	id := positions.DriverID(c.Subject)
	d.connsMu.Lock()
	if d.base.Err() != nil {
		d.connsMu.Unlock()
		WriteError(w, &APIError{Status: http.StatusServiceUnavailable, Code: "shutting_down", Message: "server is shutting down", RetryAfter: time.Second})
		return
	}
	d.handlers.Add(1) // Done by serve, or below when the upgrade fails
	if !d.pinging {
		d.pinging = true
		d.handlers.Add(1)
		go d.pinger()
		if p, err := newParker(); err != nil {
			d.cfg.Logger.Info("driver gateway: every WebSocket keeps a reader goroutine", "reason", err)
		} else {
			d.park = p
			d.handlers.Add(1)
			go d.runParker(p)
		}
	}
	park := d.park
	d.connsMu.Unlock()
	nc, rw, _, err := ws.HTTPUpgrader{}.Upgrade(r, w)
	if err != nil { // checkUpgrade passed, so the hijack failed; the upgrader answered
		d.handlers.Done()
		if nc != nil {
			nc.Close()
		}
		return
	}
	dc := &driverConn{id: id, nextPing: time.Now().Add(d.cfg.PingEvery)}
	dc.ws.nc, dc.ws.limit, dc.ws.writeTimeout = nc, d.cfg.ReadLimit, d.cfg.WriteTimeout
	dc.ws.heard.Store(wsNow())
	// A client's first frame may follow its handshake at once, and be in
	// the HTTP server's reader already: it is read before the socket.
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		dc.ws.pending = bytes.Clone(b)
	}
	if sc, ok := nc.(syscall.Conn); ok && park != nil {
		if raw, err := sc.SyscallConn(); err == nil {
			dc.park, dc.raw = park, raw
			dc.parkID = park.add(func() { d.resume(dc) })
		}
	}
	d.connsMu.Lock()
	if d.base.Err() != nil { // Close ran during the upgrade and did not see dc
		d.connsMu.Unlock()
		if dc.park != nil {
			dc.park.forget(dc.parkID)
		}
		dc.ws.close(ws.StatusGoingAway, "server shutting down")
		dc.ws.closeNow() // no reader will wait for the answer
		d.handlers.Done()
		return
	}
	old := d.conns[id]
	d.conns[id] = dc
	d.connsMu.Unlock()
	if old != nil {
		d.cut(old) // one live connection per driver: the newest wins
	}
	d.connections.Add(1)
	d.pool.run(func() { d.serve(dc, false) })
}

// driverConn is one driver's WebSocket. An idle connection holds nothing
// that grows with time: no goroutine once parked (a reader runs only
// while frames come), no writer goroutine, timer, context or queue
// memory. Its writer goroutine runs only while messages (or a keepalive
// ping) wait.
type driverConn struct {
	id positions.DriverID
	// ws is the WebSocket; its heard is when the reader last read a
	// frame: a connection heard from within PingEvery is alive and needs
	// no ping.
	ws wsConn

	// Parking; park is nil when the connection cannot park. The reader
	// parks only when no byte of the peer waits in ws, so that no frame
	// waits in this process while the socket is quiet.
	park   *parker
	parkID uint64
	raw    syscall.RawConn

	// nextPing is when the pinger pings next, and pinged when it sent the
	// ping not yet answered (zero when none is out); Drivers.connsMu
	// guards both.
	nextPing, pinged time.Time

	// mu guards the fields below.
	mu      sync.Mutex
	queue   [][]byte // waiting for the writer, at most SendQueue; nil when empty
	ping    bool     // the writer sends a ping after the queue
	writing bool     // a writer goroutine runs (counted in writers)
	closed  bool     // nothing more is queued: the reader returned or a write failed
	parked  bool     // waits in the parker: no reader runs
	armed   bool     // the socket is in the parker's epoll set (a park re-arms it)
	ending  bool     // being closed by this process: never parks again
	writers sync.WaitGroup
}

// serve reads the driver's frames until the connection parks (the parker
// runs serve again, woken, when the socket turns readable) or ends; at
// the end it waits for the writer. A woken reader reads before it may
// park again: the bytes that woke it are in the socket, not yet in br.
func (d *Drivers) serve(dc *driverConn, woken bool) {
	if d.reader(dc, woken) {
		return
	}
	defer d.handlers.Done()
	if dc.park != nil {
		dc.park.forget(dc.parkID)
	}
	dc.mu.Lock()
	d.queued.Add(-int64(len(dc.queue)))
	dc.closed, dc.queue = true, nil
	dc.mu.Unlock()
	dc.writers.Wait()
	d.connsMu.Lock()
	if d.conns[dc.id] == dc {
		delete(d.conns, dc.id)
	}
	d.connsMu.Unlock()
	// The reader's error closed the socket already; the read buffer goes
	// back to the pool.
	dc.ws.closeNow()
	dc.ws.release()
}

// reader handles the driver's frames until the connection parks (true)
// or ends (false). Its read has no context: whatever ends the connection
// closes it, which ends the read.
func (d *Drivers) reader(dc *driverConn, woken bool) (parked bool) {
	for {
		if !woken && d.parkIdle(dc) {
			return true
		}
		woken = false
		b, err := dc.ws.next()
		if err != nil {
			return false
		}
		if b == nil {
			continue // a ping or a pong, and nothing after it yet: park
		}
		d.handle(dc.id, dc, b)
		d.framesIn.Add(1)
	}
}

// parkIdle parks dc when no byte of it waits in this process (a frame
// the WebSocket has not read yet would be in its read buffer): the
// socket goes into the parker's epoll set, the read buffer goes back to
// the pool and the reader's goroutine is free. It reports whether dc
// parked. A pong (the answer to a keepalive ping) wakes a parked
// connection like a frame, and it parks again once the pong is read.
func (d *Drivers) parkIdle(dc *driverConn) bool {
	if dc.park == nil {
		return false
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	// An ending connection keeps its reader, which takes the driver's
	// answer to the close frame.
	if dc.ending || dc.ws.buffered() {
		return false
	}
	// Given back before the entry is armed: the entry may fire at once,
	// and the next reader takes a buffer of its own.
	dc.ws.release()
	if err := dc.park.arm(dc.raw, dc.parkID, !dc.armed); err != nil {
		// A closed connection's read fails at once, and a stopped parker
		// means shutdown: neither is a failure. Anything else (the
		// system's epoll watch limit, say) keeps the reader: counted,
		// and logged the first time.
		if armFailed(err) && d.parkFailures.Add(1) == 1 {
			d.cfg.Logger.Warn("driver gateway: an idle connection could not park and keeps its reader goroutine (counted in hexd_gateway_websocket_park_failures_total; later ones are not logged)",
				"driver", dc.id, "err", err)
		}
		return false
	}
	dc.armed, dc.parked = true, true
	d.parked.Add(1)
	return true
}

// resume gives a parked connection its reader back; the parker calls it
// when the socket turns readable or hangs up.
func (d *Drivers) resume(dc *driverConn) {
	dc.mu.Lock()
	was := dc.parked
	dc.parked = false
	dc.mu.Unlock()
	if was {
		d.parked.Add(-1)
		d.pool.run(func() { d.serve(dc, true) })
	}
}

// unpark is called before this process closes dc: the connection never
// parks again, and a parked one gets its reader back, whose read sees
// the close and ends the connection.
func (d *Drivers) unpark(dc *driverConn) {
	dc.mu.Lock()
	dc.ending = true
	dc.mu.Unlock()
	d.resume(dc)
}

// cut closes dc's socket with no handshake, a parked connection getting
// its reader back first: the reader sees the close and ends the
// connection.
func (d *Drivers) cut(dc *driverConn) {
	d.unpark(dc)
	dc.ws.closeNow()
}

// runParker runs the parker until Close stops it. Should the parker fail
// first, every connection parked gets its reader back and none parks
// again.
func (d *Drivers) runParker(p *parker) {
	defer d.handlers.Done()
	if err := p.run(); err != nil {
		d.cfg.Logger.Error("driver gateway: parker stopped; connections keep their reader goroutines", "err", err)
		for _, resume := range p.stop() {
			resume()
		}
	}
}

// handle acts on one frame from the driver.
func (d *Drivers) handle(id positions.DriverID, dc *driverConn, b []byte) {
	var f wsFrame
	if err := json.Unmarshal(b, &f); err != nil {
		d.rejected.Add(1)
		d.reply(dc, jsonError(err, d.cfg.ReadLimit))
		return
	}
	kind, isAction := wsActions[f.Type]
	switch {
	case f.Type == "position":
		if err := d.accept(id, f.PositionFrame); err != nil {
			d.reply(dc, err)
		}
	case isAction && d.cfg.Actions != nil:
		ride, err := d.cfg.Actions(d.base, id, f.Ride, kind)
		if err != nil {
			d.replyTo(dc, err, f.Type, f.Ride)
			return
		}
		b, _ := json.Marshal(map[string]any{"type": "ack", "action": f.Type, "ride": ride.ID, "state": ride.State})
		d.enqueue(dc, b)
	default:
		d.rejected.Add(1)
		d.reply(dc, BadField("type", "unknown frame type %q", f.Type))
	}
}

// reply queues an error frame for the driver.
func (d *Drivers) reply(dc *driverConn, err error) { d.replyTo(dc, err, "", "") }

// replyTo queues an error frame for the driver; one that refuses a ride
// action names the action and the ride, so that a driver with several
// frames in flight knows which one failed. status is what the same error
// gets from the HTTP API (409 for an illegal transition, 429, 503, ...).
func (d *Drivers) replyTo(dc *driverConn, err error, action string, ride RideID) {
	var ae *APIError
	if !errors.As(err, &ae) {
		ae = &APIError{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error"}
	}
	msg := map[string]any{"type": "error", "code": ae.Code, "message": ae.Message}
	if ae.Status != 0 {
		msg["status"] = ae.Status
	}
	if ae.Field != "" {
		msg["field"] = ae.Field
	}
	if action != "" {
		msg["action"], msg["ride"] = action, ride
	}
	if ae.RetryAfter > 0 {
		msg["retry_after_ms"] = ae.RetryAfter.Milliseconds()
	}
	b, _ := json.Marshal(msg)
	d.enqueue(dc, b)
}

// enqueue queues b for dc, or with b nil a keepalive ping, and starts the
// connection's writer if none runs. It never blocks. When SendQueue
// messages already wait, b is dropped and counted: the newest message
// loses, and a driver that cannot keep up is closed by WriteTimeout.
func (d *Drivers) enqueue(dc *driverConn, b []byte) bool {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	switch {
	case dc.closed:
		return false
	case b == nil:
		dc.ping = true
	case len(dc.queue) >= d.cfg.SendQueue:
		d.dropped.Add(1)
		return false
	default:
		dc.queue = append(dc.queue, b)
		d.queued.Add(1)
	}
	if !dc.writing {
		dc.writing = true
		dc.writers.Add(1) // before serve's Wait: serve sets closed first, under mu
		go d.writer(dc)
	}
	return true
}

// writer writes dc's queue, then the ping if one is due, until both are
// empty. A failed or timed-out write closes the connection, which ends
// the reader.
func (d *Drivers) writer(dc *driverConn) {
	defer dc.writers.Done()
	for {
		dc.mu.Lock()
		batch, ping := dc.queue, dc.ping
		dc.queue, dc.ping = nil, false
		if dc.closed || (len(batch) == 0 && !ping) {
			dc.writing = false
			dc.mu.Unlock()
			return
		}
		dc.mu.Unlock()
		n, err := d.write(&dc.ws, batch, ping)
		d.framesOut.Add(uint64(n))
		if err != nil {
			// After this side's close frame (errWSClosed) the reader
			// waits for the driver's answer: the queue is only dropped.
			if !errors.Is(err, errWSClosed) {
				d.cut(dc)
			}
			dc.mu.Lock()
			d.queued.Add(-int64(len(batch) + len(dc.queue)))
			dc.closed, dc.queue, dc.writing = true, nil, false
			dc.mu.Unlock()
			return
		}
		d.queued.Add(-int64(len(batch)))
	}
}

// write writes batch, then a ping if asked; it returns how many of
// batch's messages it wrote. The pinger times the pong.
func (d *Drivers) write(c *wsConn, batch [][]byte, ping bool) (int, error) {
	for i, b := range batch {
		if err := c.write(ws.OpText, b); err != nil {
			return i, err
		}
	}
	if !ping {
		return len(batch), nil
	}
	return len(batch), c.write(ws.OpPing, nil)
}

// pinger schedules every connection's keepalive ping PingEvery after the
// last frame heard or ping sent, and closes a connection that sends
// nothing, not even the pong, within PingEvery of a ping: one goroutine
// and one ticker for the gateway instead of a ticker per connection, and
// nothing waits for a pong. It checks eight times per PingEvery, so a
// silent connection is pinged between PingEvery and 1.125 PingEvery
// apart; one that reports more often is never pinged.
func (d *Drivers) pinger() {
	defer d.handlers.Done()
	t := time.NewTicker(max(d.cfg.PingEvery/8, time.Millisecond))
	defer t.Stop()
	var due, dead []*driverConn
	for {
		select {
		case <-d.base.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		d.connsMu.Lock()
		for _, dc := range d.conns {
			heard := wsTime(dc.ws.heard.Load())
			if !dc.pinged.IsZero() {
				switch {
				case !heard.Before(dc.pinged): // answered, or a frame came
					dc.pinged = time.Time{}
				case now.Sub(dc.pinged) >= d.cfg.PingEvery:
					dc.pinged, dc.nextPing = time.Time{}, now.Add(d.cfg.PingEvery)
					dead = append(dead, dc)
					continue
				default:
					continue
				}
			}
			if now.Before(dc.nextPing) {
				continue
			}
			// A driver that reports is alive: pinging it anyway put a
			// writer goroutine per connection on the scheduler at once,
			// every tick, which delayed the offers (issue 6's tail).
			if now.Sub(heard) < d.cfg.PingEvery {
				dc.nextPing = heard.Add(d.cfg.PingEvery)
				continue
			}
			dc.nextPing, dc.pinged = now.Add(d.cfg.PingEvery), now
			due = append(due, dc)
		}
		d.connsMu.Unlock()
		for _, dc := range due {
			d.enqueue(dc, nil)
		}
		for _, dc := range dead {
			d.cut(dc)
		}
		clear(due)
		clear(dead)
		due, dead = due[:0], dead[:0]
	}
}
