package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
	"github.com/hexdispatch/hexdispatch/sim"
)

// match-e2e measures request-to-offer latency through a real engine
// process (built from this module, -role all: in-process Kafka and Redis,
// started on loopback), the path a rider and a driver see:
//
//	POST /v1/rides -> ride stored -> dispatcher -> gather -> rank -> lease
//	-> offer recorded -> offer frame on the driver's WebSocket
//
// The clock starts just before the POST is written and stops when the
// offer frame is read from the offered driver's WebSocket, so the figure
// includes HTTP, the ride store's writes, the gather, the lease, the
// WebSocket write and both loopback hops. The note splits it where the
// engine sent the offer (its expires_at less the offer timeout hexbench
// sets; both processes share the clock): request to the engine's send,
// and send to hexbench's read, so a tail can be put on the engine or on
// the delivery (or hexbench itself).
//
// Drivers: -drivers of the benchmark city (sim.NewFleet over San
// Francisco) are online. An offer can only reach a driver that holds a
// WebSocket (the engine skips to the next candidate at once otherwise),
// and one process may not open more than RLIMIT_NOFILE files (20,000 on
// the development machine, for the engine and for hexbench alike), so:
//
//   - up to -ws-drivers (default: what the open-file limit leaves, about
//     17,000) available drivers hold a driver WebSocket, send their
//     positions over it and answer offers on it;
//   - every other driver reports over HTTP POST /v1/drivers/{id}/location
//     as en_route or on_trip: in the index, scanned by every gather, never
//     offered a ride (the matcher filters by status, as it would for a
//     driver heading to a pickup).
//
// Every driver reports again every -refresh (default 10 s) with a small
// GPS step, and the engine's TTL is three refreshes, so nobody expires and
// the position stream (drivers/refresh per second; 5,000/s for 50,000
// drivers) runs under the rides. Connections come from
// several 127.0.0.x source addresses when one address's ephemeral ports
// would not hold them.
//
// Riders: an open loop sends POST /v1/rides at -rate per second for
// -duration, each from its own rider token with its own Idempotency-Key,
// pickups and dropoffs from the city model. A request is sent at its
// scheduled time whether or not earlier ones were answered (at most
// e2eMaxInFlight outstanding; beyond that it is counted as skipped).
//
// Offered drivers decline one offer in e2eDeclineEvery (the ride goes to
// the next driver: offers/s counts those too) and accept the rest on the
// WebSocket, then post the trip's steps (arrived, start, complete) one
// e2eStepDelay apart, so they are free again and every ride's whole
// lifecycle is written, as in steady state. Errors count failed or
// refused requests (non-201), rides with no offer within e2eDrain after
// the loop, skipped sends, and error frames drivers received.
//
// With -peer redis the same run is repeated with the engine's ride store
// and leases on the peer's redis-server (-redis) instead of the embedded
// miniredis, as system "hexdispatch/redis-server": miniredis runs every
// command and Lua script in the engine's process under one lock, so the
// two bound the cost of Redis in one process from both sides. That run
// also reports the Redis commands per created ride (INFO commandstats,
// the commands scripts run included).
func init() {
	register(Workload{Name: "match-e2e", Sized: true, Run: runMatchE2E, RedisPeer: redisMatchE2E})
}

// e2eRedisSystem names match-e2e results on a real redis-server.
const e2eRedisSystem = "hexdispatch/redis-server"

func runMatchE2E(ctx context.Context, env Env) ([]Result, error) {
	return matchE2E(ctx, env, nil)
}

// redisMatchE2E is match-e2e with the engine on the peer's redis-server.
func redisMatchE2E(ctx context.Context, env Env, p *redisPeer) ([]Result, error) {
	return matchE2E(ctx, env, p)
}

const (
	e2eDeclineEvery = 10
	e2eDrain        = 3 * time.Second
	e2eMaxInFlight  = 4096
	// e2eStepDelay is how long a driver takes for each trip step: a trip
	// compressed to three seconds.
	e2eStepDelay = time.Second
	e2eMaxTries  = 30
	// e2eRequestTimeout bounds every HTTP request hexbench sends.
	e2eRequestTimeout = 30 * time.Second
	// e2eStepWorkers post trip steps at once (HTTP keep-alive
	// connections).
	e2eStepWorkers = 32
	// e2eFileReserve is what the open-file limit keeps for everything but
	// driver WebSockets (HTTP pools, kfake, Redis, the binary itself).
	e2eFileReserve = 3000
)

// e2eRide is one ride request's timeline: sent and offered on hexbench's
// clock, pushed when the engine handed the offer to the driver's
// connection (its expires_at less the offer timeout hexbench set), and
// answered when the POST's 201 was read.
type e2eRide struct {
	sent, answered, pushed, offered time.Time
}

// e2eOfferTimeout is the engine's -offer-timeout in match-e2e: an offer
// frame's expires_at less this is when the engine sent it.
const e2eOfferTimeout = 10 * time.Second

// e2eRun is the state of one match-e2e run.
//
// ridesMu guards rides, written by the rider goroutines (sent) and the
// driver readers (offered). Counters are atomics.
type e2eRun struct {
	base   string
	signer *dispatch.Signer
	dialer *spreadDialer
	fleet  fleet
	ws     []int // fleet indexes of the drivers that hold a WebSocket
	http   []int // fleet indexes of the HTTP-only drivers
	seqs   []atomic.Uint64
	tokens []string          // by fleet index: the driver's bearer token, minted once as a driver app keeps its session
	busy   []atomic.Bool     // by fleet index: the driver accepted a ride and is on its trip
	conns  []*websocket.Conn // by position in ws
	hosts  []*fasthttp.HostClient

	ridesMu sync.Mutex
	rides   map[dispatch.RideID]*e2eRide

	steps chan e2eStep // trip steps waiting for the stepper; full = the driver gives the trip up

	requested, created, httpErrs, skipped atomic.Int64
	offers, declined, driverErrs, retries atomic.Int64
	trips                                 atomic.Int64
	positions, positionErrs               atomic.Int64
}

// matchE2E runs match-e2e against an engine on the embedded miniredis, or
// on peer's redis-server when peer is set.
func matchE2E(ctx context.Context, env Env, peer *redisPeer) ([]Result, error) {
	n := env.Drivers
	f := newFleet(n, env.Seed)
	var avail []int
	for i, s := range f.Statuses {
		if s == positions.StatusAvailable {
			avail = append(avail, i)
		}
	}
	// Ask for room for every WebSocket; without privileges the hard limit
	// stays and the socket count follows it.
	_ = raiseFileLimit(uint64(len(avail) + e2eFileReserve))
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil, err
	}
	w := min(len(avail), max(0, int(lim.Cur)-e2eFileReserve))
	if env.WSDrivers > 0 {
		w = min(len(avail), env.WSDrivers)
	}
	if w < 1 {
		return nil, fmt.Errorf("match-e2e: no driver can hold a WebSocket (%d available, open-file limit %d)", len(avail), lim.Cur)
	}
	r := &e2eRun{fleet: f, seqs: make([]atomic.Uint64, n), busy: make([]atomic.Bool, n), rides: make(map[dispatch.RideID]*e2eRide),
		steps: make(chan e2eStep, 1<<16), dialer: newSpreadDialer(w + 2*e2eMaxInFlight)}
	r.signer, _ = dispatch.NewSigner([]byte(wsSecret))
	// One token per driver for the whole run: minting one per request
	// made the load generator spend, on the two cores it shares with the
	// engine, an HMAC and a JSON encoding per position post.
	r.tokens = make([]string, n)
	for i, id := range f.IDs {
		var err error
		if r.tokens[i], err = r.signer.Mint(dispatch.Claims{Subject: string(id), Role: dispatch.RoleDriver, Expires: time.Now().Add(24 * time.Hour)}); err != nil {
			return nil, err
		}
	}
	onWS := make([]bool, n)
	for _, i := range avail[:w] {
		onWS[i] = true
		r.ws = append(r.ws, i)
	}
	for i := range n {
		if !onWS[i] {
			r.http = append(r.http, i)
			if f.Statuses[i] == positions.StatusAvailable {
				f.Statuses[i] = positions.StatusEnRoute
			}
		}
	}

	bin, cleanup, err := buildEngine(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	rev := engineRevision(ctx) // the tree may move on while the run goes
	args := []string{"-partitions", "16", "-ttl", (3 * env.Refresh).String(), "-offer-timeout", e2eOfferTimeout.String()}
	system := "hexdispatch"
	if peer != nil {
		// A clean keyspace and command counts for this run only.
		if err := peer.Client.FlushAll(ctx).Err(); err != nil {
			return nil, fmt.Errorf("match-e2e: redis peer: %w", err)
		}
		args, system = append(args, "-redis", peer.Addr), e2eRedisSystem
	}
	base, stop, err := startEngine(ctx, bin, args...)
	if err != nil {
		return nil, err
	}
	defer stop()
	r.base = base
	if env.ClientProcs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(env.ClientProcs))
	}
	if env.Nice > 0 {
		restore, err := lowerPriority(env.Nice)
		if err != nil {
			return nil, err
		}
		defer func() {
			if err := restore(); err != nil {
				fmt.Fprintf(env.Progress, "hexbench: %v\n", err)
			}
		}()
	}

	// Everything below stops with runCtx and is waited for by g.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	defer func() {
		cancel()
		for _, c := range r.conns {
			if c != nil {
				c.CloseNow()
			}
		}
		g.Wait()
		// Now, not when fasthttp's idle sweeper next wakes (up to 10 s
		// later, in whatever workload runs then): their buffers go back
		// to the heap with the run.
		for _, c := range r.hosts {
			c.CloseIdleConnections()
		}
	}()

	fmt.Fprintf(env.Progress, "hexbench: match-e2e: %d drivers online, %d on WebSockets, from %d source addresses ...\n", n, w, r.dialer.SourceAddrs())
	t0 := time.Now()
	steppers, err := r.hostClient(e2eStepWorkers)
	if err != nil {
		return nil, err
	}
	g.Go(func() error { return r.stepper(gctx, steppers) })
	if err := r.connectDrivers(gctx, g); err != nil {
		return nil, err
	}
	drivers, err := r.hostClient(128)
	if err != nil {
		return nil, err
	}
	if err := r.loadHTTPDrivers(gctx, drivers); err != nil {
		return nil, err
	}
	// Drivers report again while the index fills: on a busy machine
	// loading them all can take longer than the engine's TTL, and the
	// first would expire before the last arrived.
	g.Go(func() error { return r.refresh(gctx, drivers, env.Refresh) })
	if err := r.waitIndexed(gctx, n, time.Minute); err != nil {
		return nil, err
	}
	fmt.Fprintf(env.Progress, "hexbench: match-e2e: %d drivers in the index after %.1fs; rides at %.0f/s for %v ...\n", n, time.Since(t0).Seconds(), env.Rate, env.Duration)

	riders, err := r.hostClient(1024)
	if err != nil {
		return nil, err
	}
	if peer != nil {
		peer.Client.ConfigResetStat(ctx) // count the rides' commands, not the start's
	}
	pos0 := r.positions.Load()
	// The engine's CPU over the ride loop: under load from other jobs the
	// latencies say little, the CPU spent per ride still compares.
	cpu0, _ := engineSum(base, "process_cpu_seconds_total")
	phases0, phaseErr := enginePhases(base)
	self0 := cpuTime()
	var rcpu0 float64
	if peer != nil {
		rcpu0 = redisCPU(ctx, peer)
	}
	elapsed, lag := r.requestRides(gctx, riders, env)
	self := cpuTime() - self0
	cpu1, _ := engineSum(base, "process_cpu_seconds_total")
	var rcpu1 float64
	if peer != nil {
		rcpu1 = redisCPU(ctx, peer)
	}
	positionsPerS := float64(r.positions.Load()-pos0) / elapsed.Seconds()
	offers := r.offers.Load()
	// Offers of the last requests may still be on their way.
	deadline := time.Now().Add(e2eDrain)
	for r.pending() > 0 && time.Now().Before(deadline) && gctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// t is request to offer; engine and delivery split it where the
	// engine sent the offer (a clock shared by both processes), and post
	// is the POST's round trip.
	var t, engine, delivery, post Timer
	var timeline []TimelineRow
	r.ridesMu.Lock()
	for _, ride := range r.rides {
		if !ride.offered.IsZero() {
			t.samples = append(t.samples, ride.offered.Sub(ride.sent))
			row := TimelineRow{Sent: ride.sent, ToOffer: ride.offered.Sub(ride.sent)}
			if !ride.pushed.IsZero() {
				engine.samples = append(engine.samples, ride.pushed.Sub(ride.sent))
				delivery.samples = append(delivery.samples, ride.offered.Sub(ride.pushed))
				row.ToSend = ride.pushed.Sub(ride.sent)
			}
			if env.Timeline != nil {
				timeline = append(timeline, row)
			}
		}
		if !ride.answered.IsZero() {
			post.samples = append(post.samples, ride.answered.Sub(ride.sent))
		}
	}
	noOffer := r.created.Load() - int64(len(t.samples))
	r.ridesMu.Unlock()
	if env.Timeline != nil {
		if err := env.Timeline.Add(system, timeline); err != nil {
			return nil, err
		}
	}
	engineStats := engineOfferStats(base)
	if c := r.created.Load(); c > 0 && cpu1 > cpu0 {
		engineStats += fmt.Sprintf(", %.2f ms engine CPU per created ride over the loop (%.2f cores; hexbench itself %.2f cores at GOMAXPROCS %d)",
			(cpu1-cpu0)*1e3/float64(c), (cpu1-cpu0)/elapsed.Seconds(), self.Seconds()/elapsed.Seconds(), runtime.GOMAXPROCS(0))
	}
	if phases1, err := enginePhases(base); err == nil && phaseErr == nil {
		engineStats += "; " + phaseNote(phases0, phases1)
	}
	if peer != nil {
		engineStats += "; " + redisPerRide(ctx, peer, r.created.Load())
		if c := r.created.Load(); c > 0 && rcpu1 > rcpu0 {
			engineStats += fmt.Sprintf(", %.2f ms redis-server CPU per created ride", (rcpu1-rcpu0)*1e3/float64(c))
		}
	}

	errs := r.httpErrs.Load() + r.skipped.Load() + noOffer + r.driverErrs.Load()
	res := Result{
		System: system, Workload: "match-e2e", Drivers: n, GOMAXPROCS: runtime.GOMAXPROCS(0),
		OpsPerS:    round(float64(r.created.Load()) / elapsed.Seconds()),
		TargetPerS: env.Rate,
		P50us:      round(t.Percentile(50)), P99us: round(t.Percentile(99)),
		OffersPerS: round(float64(offers) / elapsed.Seconds()),
		Ops:        int64(len(t.samples)), Seconds: round(elapsed.Seconds()),
		Errors: errs,
		Note: fmt.Sprintf("request-to-offer at the driver's WebSocket (p50/p99 of the offered rides only: see errors); %d drivers on WebSockets, %d over HTTP (en_route/on_trip); "+
			"positions %.0f/s (every driver every %v); %d requested, %d created; errors: %d HTTP, %d no offer in %v, %d skipped, %d driver frames, %d position posts; "+
			"%d declines, %d trips completed, %d trip steps retried; sender lag p99 %.1f ms%s; "+
			"request to the engine's send p50 %.1f ms p99 %.1f ms, send to read p50 %.1f ms p99 %.1f ms, POST round trip p50 %.1f ms p99 %.1f ms; engine %s: %s",
			w, len(r.http), positionsPerS, env.Refresh, r.requested.Load(), r.created.Load(), r.httpErrs.Load(), noOffer, e2eDrain, r.skipped.Load(),
			r.driverErrs.Load(), r.positionErrs.Load(), r.declined.Load(), r.trips.Load(), r.retries.Load(), lag.Percentile(99)/1e3, niceNote(env.Nice),
			engine.Percentile(50)/1e3, engine.Percentile(99)/1e3, delivery.Percentile(50)/1e3, delivery.Percentile(99)/1e3,
			post.Percentile(50)/1e3, post.Percentile(99)/1e3, rev, engineStats),
	}
	return []Result{res}, nil
}

// niceNote says when hexbench ran at a lower priority than the engine.
func niceNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (hexbench at nice +%d, the engine at its own)", n)
}

// connectDrivers opens the WebSocket drivers' connections, sends each one's
// first position and starts its reader.
func (r *e2eRun) connectDrivers(ctx context.Context, g *errgroup.Group) error {
	r.conns = make([]*websocket.Conn, len(r.ws))
	opts := &websocket.DialOptions{HTTPClient: r.dialer.httpClient(1)}
	url := "ws" + strings.TrimPrefix(r.base, "http") + "/v1/drivers/ws"
	dg, dctx := errgroup.WithContext(ctx)
	dg.SetLimit(64)
	for k, i := range r.ws {
		dg.Go(func() error {
			id, tok := r.fleet.IDs[i], r.tokens[i]
			cctx, cancel := context.WithTimeout(dctx, 10*time.Second)
			c, _, err := websocket.Dial(cctx, url+"?access_token="+tok, opts)
			cancel()
			if err != nil {
				return fmt.Errorf("match-e2e: driver %s WebSocket: %w", id, err)
			}
			r.conns[k] = c
			g.Go(func() error { r.driverLoop(ctx, c, i); return nil })
			return r.sendPositionFrame(dctx, c, r.step(i, nil))
		})
	}
	return dg.Wait()
}

// step moves driver i by a GPS step and returns its new position frame.
func (r *e2eRun) step(i int, rng *rand.Rand) dispatch.PositionFrame {
	p := r.fleet.Pos[i]
	if rng != nil {
		p.Lat += (rng.Float64() - 0.5) * 3e-4
		p.Lng += (rng.Float64() - 0.5) * 4e-4
		if p.Validate() != nil {
			p = r.fleet.Pos[i]
		}
	}
	lat, lng := p.Lat, p.Lng
	return dispatch.PositionFrame{Lat: &lat, Lng: &lng, Status: r.fleet.Statuses[i], Seq: r.seqs[i].Add(1)}
}

func (r *e2eRun) sendPositionFrame(ctx context.Context, c *websocket.Conn, f dispatch.PositionFrame) error {
	b, err := json.Marshal(struct {
		Type string `json:"type"`
		dispatch.PositionFrame
	}{"position", f})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Write(wctx, websocket.MessageText, b); err != nil {
		r.positionErrs.Add(1)
		return err
	}
	r.positions.Add(1)
	return nil
}

// hostClient is the engine's HTTP client for positions, ride requests and
// trip steps, with at most conns connections. It is fasthttp's rather
// than net/http's: hexbench shares the two cores with the engine, and
// net/http's client hands each request to a writer and a reader goroutine
// (two wake-ups hexbench's clock counts on the ride path) and allocates it
// anew, a sixth of hexbench's CPU at 3,300 position posts a second.
// Connections come from the spreading dialer and stay open.
func (r *e2eRun) hostClient(conns int) (*fasthttp.HostClient, error) {
	u, err := url.Parse(r.base)
	if err != nil {
		return nil, err
	}
	c := &fasthttp.HostClient{
		Addr:     u.Host,
		MaxConns: conns,
		Dial: func(addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return r.dialer.DialContext(ctx, "tcp", addr)
		},
		ReadTimeout:  e2eRequestTimeout,
		WriteTimeout: e2eRequestTimeout,
	}
	r.hosts = append(r.hosts, c)
	return c, nil
}

// newPost builds a POST to path with the bearer token and a JSON body
// (none when nil); the caller releases it (fasthttp.ReleaseRequest).
func (r *e2eRun) newPost(path, token string, body []byte) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.SetRequestURI(r.base + path)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBody(body)
	}
	return req
}

// post sends one POST (see newPost) on c and returns the status code.
func (r *e2eRun) post(c *fasthttp.HostClient, path, token string, body []byte) (int, error) {
	req, resp := r.newPost(path, token, body), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	if err := c.DoTimeout(req, resp, e2eRequestTimeout); err != nil {
		return 0, err
	}
	return resp.StatusCode(), nil
}

// postPosition reports driver i over HTTP.
func (r *e2eRun) postPosition(ctx context.Context, c *fasthttp.HostClient, i int, f dispatch.PositionFrame) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id := r.fleet.IDs[i]
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	code, err := r.post(c, "/v1/drivers/"+string(id)+"/location", r.tokens[i], b)
	if err != nil {
		r.positionErrs.Add(1)
		return err
	}
	if code != http.StatusAccepted {
		r.positionErrs.Add(1)
		return fmt.Errorf("match-e2e: position of %s: HTTP %d", id, code)
	}
	r.positions.Add(1)
	return nil
}

// loadHTTPDrivers brings the HTTP-only drivers online, retrying those the
// gateway shed (429) until ctx ends.
func (r *e2eRun) loadHTTPDrivers(ctx context.Context, c *fasthttp.HostClient) error {
	lg, lctx := errgroup.WithContext(ctx)
	lg.SetLimit(64)
	for _, i := range r.http {
		lg.Go(func() error {
			for {
				err := r.postPosition(lctx, c, i, r.step(i, nil))
				if err == nil || lctx.Err() != nil {
					return err
				}
				if !strings.Contains(err.Error(), "HTTP 429") {
					return err
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	return lg.Wait()
}

// waitIndexed polls the engine's metrics until its index holds n drivers.
func (r *e2eRun) waitIndexed(ctx context.Context, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		held, err := engineSum(r.base, "hexd_positions_drivers")
		if err == nil && int(held) >= n {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("match-e2e: the index holds %v of %d drivers after %v (%v)", held, n, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// refresh reports every driver again every period, spread evenly, until
// ctx ends: the WebSocket drivers over their sockets, the others by POST.
func (r *e2eRun) refresh(ctx context.Context, c *fasthttp.HostClient, period time.Duration) error {
	rg, rctx := errgroup.WithContext(ctx)
	// pace calls each for the drivers of list in turn, count per
	// period, with the next position of each.
	pace := func(list []int, each func(ctx context.Context, k int, f dispatch.PositionFrame)) {
		if len(list) == 0 {
			return
		}
		rng := rand.New(rand.NewPCG(uint64(len(list)), 23))
		every := period / time.Duration(len(list))
		start := time.Now()
		for k := 0; ; k++ {
			if d := time.Until(start.Add(time.Duration(k) * every)); d > 0 {
				select {
				case <-rctx.Done():
					return
				case <-time.After(d):
				}
			} else if rctx.Err() != nil {
				return
			}
			k := k % len(list)
			each(rctx, k, r.step(list[k], rng))
		}
	}
	rg.Go(func() error {
		pace(r.ws, func(ctx context.Context, k int, f dispatch.PositionFrame) { r.sendPositionFrame(ctx, r.conns[k], f) })
		return nil
	})
	rg.Go(func() error {
		jobs := make(chan func())
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for job := range jobs {
					job()
				}
			}()
		}
		pace(r.http, func(ctx context.Context, k int, f dispatch.PositionFrame) {
			i := r.http[k]
			select {
			case jobs <- func() { r.postPosition(ctx, c, i, f) }:
			case <-ctx.Done():
			}
		})
		close(jobs)
		wg.Wait()
		return nil
	})
	return rg.Wait()
}

// e2eFrame is a downward driver WebSocket frame.
type e2eFrame struct {
	Type      string          `json:"type"`
	Ride      dispatch.RideID `json:"ride"`
	ExpiresAt time.Time       `json:"expires_at"`
}

// nextStep is the trip step after each one.
var nextStep = map[string]string{"accept": "arrived", "arrived": "start", "start": "complete"}

// e2eStep is a trip step a driver posts once due.
type e2eStep struct {
	driver int // fleet index
	ride   dispatch.RideID
	kind   string
	due    time.Time
	tries  int
}

// driverLoop is one WebSocket driver: it answers offers on its socket and
// hands accepted rides to the stepper, until its connection ends. Trip
// steps go over HTTP, whose replies name their request: error frames on
// the socket do not say which frame they answer.
func (r *e2eRun) driverLoop(ctx context.Context, c *websocket.Conn, i int) {
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		var f e2eFrame
		if err := json.Unmarshal(b, &f); err != nil {
			r.driverErrs.Add(1)
			continue
		}
		switch f.Type {
		case "offer":
			nth := r.offers.Add(1)
			r.ridesMu.Lock()
			if ride, ok := r.rides[f.Ride]; ok && ride.offered.IsZero() {
				ride.offered = now
				if !f.ExpiresAt.IsZero() {
					ride.pushed = f.ExpiresAt.Add(-e2eOfferTimeout)
				}
			}
			r.ridesMu.Unlock()
			if nth%e2eDeclineEvery == 0 || !r.busy[i].CompareAndSwap(false, true) {
				r.declined.Add(1)
				r.sendAction(ctx, c, "decline", f.Ride)
				continue
			}
			r.sendAction(ctx, c, "accept", f.Ride)
			// The accept is acknowledged before the dispatcher records it:
			// the first step waits e2eStepDelay and is retried if early.
			r.queueStep(e2eStep{driver: i, ride: f.Ride, kind: "arrived", due: now.Add(e2eStepDelay)})
		case "error":
			r.driverErrs.Add(1)
		}
	}
}

// sendAction writes one ride action frame.
func (r *e2eRun) sendAction(ctx context.Context, c *websocket.Conn, kind string, ride dispatch.RideID) {
	b, _ := json.Marshal(map[string]string{"type": kind, "ride": string(ride)})
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c.Write(wctx, websocket.MessageText, b) != nil && ctx.Err() == nil {
		r.driverErrs.Add(1)
	}
}

// queueStep hands s to the stepper; when its queue is full the driver
// gives the trip up (and stays busy: its trip lock is held until the
// engine's lease expires, as for a real driver that vanished).
func (r *e2eRun) queueStep(s e2eStep) {
	select {
	case r.steps <- s:
	default:
		r.driverErrs.Add(1)
	}
}

// stepper posts the queued trip steps when they are due, on e2eStepWorkers
// goroutines. The delay is the same for every step, so the queue is
// (nearly) in due order.
func (r *e2eRun) stepper(ctx context.Context, c *fasthttp.HostClient) error {
	jobs := make(chan e2eStep)
	var wg sync.WaitGroup
	for range e2eStepWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range jobs {
				r.postStep(ctx, c, s)
			}
		}()
	}
	defer func() { close(jobs); wg.Wait() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-r.steps:
			if d := time.Until(s.due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil
				case <-t.C:
				}
			}
			select {
			case jobs <- s:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// postStep posts one trip step and queues the next, or the same again
// when the engine refused it for now (409: the accept is not recorded yet;
// 429, 503).
func (r *e2eRun) postStep(ctx context.Context, c *fasthttp.HostClient, s e2eStep) {
	code, err := r.post(c, "/v1/rides/"+string(s.ride)+"/"+s.kind, r.tokens[s.driver], nil)
	if err != nil {
		if ctx.Err() == nil {
			r.driverErrs.Add(1)
			r.busy[s.driver].Store(false)
		}
		return
	}
	switch {
	case code == http.StatusOK:
		if next, ok := nextStep[s.kind]; ok {
			r.queueStep(e2eStep{driver: s.driver, ride: s.ride, kind: next, due: time.Now().Add(e2eStepDelay)})
			return
		}
		r.trips.Add(1)
		r.busy[s.driver].Store(false)
	case (code == http.StatusConflict || code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) && s.tries < e2eMaxTries:
		r.retries.Add(1)
		s.tries++
		s.due = time.Now().Add(e2eStepDelay)
		r.queueStep(s)
	default:
		// The ride went elsewhere (the accept lost its lease) or the engine
		// kept refusing: the driver is free again.
		r.driverErrs.Add(1)
		r.busy[s.driver].Store(false)
	}
}

// pending counts created rides still waiting for their first offer.
func (r *e2eRun) pending() int {
	r.ridesMu.Lock()
	defer r.ridesMu.Unlock()
	n := 0
	for _, ride := range r.rides {
		if ride.offered.IsZero() {
			n++
		}
	}
	return n
}

// requestRides runs the open loop for env.Duration and returns how long
// it ran and how late the sends were against their schedule.
func (r *e2eRun) requestRides(ctx context.Context, c *fasthttp.HostClient, env Env) (time.Duration, *Timer) {
	rng := rand.New(rand.NewPCG(env.Seed, 29))
	city := sim.SanFrancisco()
	every := time.Duration(float64(time.Second) / env.Rate)
	inflight := make(chan struct{}, e2eMaxInFlight)
	var wg sync.WaitGroup
	var lag Timer
	start := time.Now()
	end := start.Add(env.Duration)
	for k := 0; ; k++ {
		at := start.Add(time.Duration(k) * every)
		if !at.Before(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		lag.samples = append(lag.samples, time.Since(at))
		pickup, dropoff := city.Point(rng), city.Point(rng)
		r.requested.Add(1)
		select {
		case inflight <- struct{}{}:
		default:
			r.skipped.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			r.requestRide(c, k, pickup, dropoff)
		}()
	}
	elapsed := time.Since(start)
	wg.Wait()
	return elapsed, &lag
}

// requestRide sends one ride request as rider u<k> with key k<k>.
func (r *e2eRun) requestRide(c *fasthttp.HostClient, k int, pickup, dropoff geo.LatLng) {
	rider, key := "u"+strconv.Itoa(k), "k"+strconv.Itoa(k)
	token, err := r.signer.Mint(dispatch.Claims{Subject: rider, Role: dispatch.RoleRider, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		r.httpErrs.Add(1)
		return
	}
	body, _ := json.Marshal(dispatch.RideRequest{Pickup: &pickup, Dropoff: &dropoff})
	req, resp := r.newPost("/v1/rides", token, body), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.Set("Idempotency-Key", key)
	// The ride ID follows from (rider, key), so the ride is known before
	// the request leaves: its offer may overtake the response.
	id := dispatch.IdempotentID(dispatch.RiderID(rider), key)
	ride := &e2eRide{sent: time.Now()}
	r.ridesMu.Lock()
	r.rides[id] = ride
	r.ridesMu.Unlock()
	if err := c.DoTimeout(req, resp, e2eRequestTimeout); err != nil || resp.StatusCode() != http.StatusCreated {
		r.httpErrs.Add(1)
		r.ridesMu.Lock()
		delete(r.rides, id)
		r.ridesMu.Unlock()
		return
	}
	r.ridesMu.Lock()
	ride.answered = time.Now()
	r.ridesMu.Unlock()
	r.created.Add(1)
}

// engineSum adds up every sample of a metric on the engine's /metrics
// (labelled or not).
func engineSum(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	if !found {
		return 0, errors.New("engine: " + name + " not in /metrics")
	}
	return sum, nil
}

// phaseBuckets is the engine's hexd_match_phase_seconds at one moment:
// by phase, the cumulative bucket counts by upper bound (seconds,
// ascending).
type phaseBuckets map[string][]*dto.Bucket

// enginePhases reads hexd_match_phase_seconds from the engine's /metrics.
func enginePhases(base string) (phaseBuckets, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	fam, ok := fams["hexd_match_phase_seconds"]
	if !ok {
		return nil, errors.New("engine: hexd_match_phase_seconds not in /metrics")
	}
	out := phaseBuckets{}
	for _, m := range fam.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "phase" {
				out[l.GetValue()] = m.GetHistogram().GetBucket()
			}
		}
	}
	return out, nil
}

// phaseNote gives the p99 of each phase of the first offers between two
// readings, as the upper bound of its bucket (the engine's buckets double,
// so the figure overstates by less than a factor of two).
func phaseNote(before, after phaseBuckets) string {
	var parts []string
	for p := range dispatch.NumPhases {
		ph := p.String()
		a, b := after[ph], before[ph]
		if len(a) == 0 || len(b) != len(a) {
			return "engine phases unknown"
		}
		total := a[len(a)-1].GetCumulativeCount() - b[len(b)-1].GetCumulativeCount()
		if total == 0 {
			return "engine phases unknown (no first offers)"
		}
		le := math.Inf(1)
		for i := range a {
			if n := a[i].GetCumulativeCount() - b[i].GetCumulativeCount(); float64(n) >= 0.99*float64(total) {
				le = a[i].GetUpperBound()
				break
			}
		}
		parts = append(parts, fmt.Sprintf("%s %.3g ms", ph, le*1e3))
	}
	return "engine phases of the first offers, p99 at most: " + strings.Join(parts, ", ")
}

// engineOfferStats summarises the engine's own dispatch counters.
func engineOfferStats(base string) string {
	get := func(name string) float64 { v, _ := engineSum(base, name); return v }
	return fmt.Sprintf("%.0f searches, %.0f offers timed out, %.0f no_driver, %.0f dispatch errors, %.0f positions shed",
		get("hexd_dispatch_searches_total"), get(`hexd_dispatch_offers_total{outcome="timed_out"}`),
		get("hexd_dispatch_no_driver_total"), get("hexd_dispatch_errors_total"), get("hexd_gateway_shed_total"))
}

// redisPerRide summarises the peer's INFO commandstats since the last
// CONFIG RESETSTAT per created ride: all commands (those Lua scripts run
// included, as Redis counts them) and the scripts among them.
func redisPerRide(ctx context.Context, p *redisPeer, rides int64) string {
	info, err := p.Client.Info(ctx, "commandstats").Result()
	if err != nil || rides == 0 {
		return fmt.Sprintf("redis commands per ride unknown (%v)", err)
	}
	var all, scripts float64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		v, err := strconv.ParseFloat(calls, 64)
		if err != nil || strings.HasPrefix(name, "config") || strings.HasPrefix(name, "info") {
			continue
		}
		all += v
		if name == "evalsha" || name == "eval" {
			scripts += v
		}
	}
	return fmt.Sprintf("redis-server: %.1f commands per created ride, %.1f of them Lua scripts (INFO commandstats, script-inner commands included)",
		all/float64(rides), scripts/float64(rides))
}

// redisCPU is the CPU seconds redis-server has used (INFO cpu, user and
// system).
func redisCPU(ctx context.Context, p *redisPeer) float64 {
	info, err := p.Client.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	user, _ := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
	sys, _ := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
	return user + sys
}
