package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// api is the product surface of one process (roles all and api): the ride
// store and leases in Redis (in-process miniredis when -redis is empty), the
// driver gateway, the dispatcher, the ride-events relay and the ops console.
type api struct {
	cfg    Config
	mini   *miniredis.Miniredis // nil with -redis
	rdb    *redis.Client
	ap     *redis.AutoPipeliner
	signer *dispatch.Signer
	events *kgo.Client
	relay  *dispatch.Relay
	// outcomes reads the whole ride-events topic for the ops heatmap's
	// demand and outcome layers, through its own client (outcomesCl).
	outcomes   *dispatch.Outcomes
	outcomesCl *kgo.Client
	// load tells the gateway to shed GPS before rides when saturated.
	load    *dispatch.LoadMonitor
	drivers *dispatch.Drivers
	disp    *dispatch.Dispatcher
	rides   *dispatch.Rides
	ops     http.Handler
	policy  *matcher.Switch
	batcher *matcher.Batcher
	store   *dispatch.RideStore
	leases  *matcher.Leases
	dev     bool // tokens use the dev secret: print some at start
	// closing ends at shutdown, closing the rider WebSockets.
	closing context.Context
	stop    context.CancelFunc
}

// devSecretFile keeps the token secret of a dev start (no -token-secret)
// so that tokens minted with `hexdispatch token` keep working across
// restarts on this machine.
func devSecretFile() string { return filepath.Join(os.TempDir(), "hexdispatch-dev-token-secret") }

// TokenSecret returns the configured secret or the dev one (created on
// first use, mode 0600).
func TokenSecret(configured string) (secret []byte, dev bool, err error) {
	if configured != "" {
		return []byte(configured), false, nil
	}
	path := devSecretFile()
	if b, err := os.ReadFile(path); err == nil && len(b) >= dispatch.MinSecretLen {
		return b, true, nil
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, false, err
	}
	s := []byte(hex.EncodeToString(raw[:]))
	if err := os.WriteFile(path, s, 0o600); err != nil {
		return nil, false, fmt.Errorf("writing dev token secret: %w", err)
	}
	return s, true, nil
}

// embeddedRedisOptions are the client options for the in-process Redis.
// The fail-fast timeouts of matcher.FailFastOptions guard against a remote
// Redis that is down or partitioned; an in-process one can only be slow
// because the process is busy, and failing then turns load into errors.
// So: a larger pool kept warm, and timeouts of a second.
func embeddedRedisOptions(addr string) *redis.Options {
	o := matcher.FailFastOptions(addr)
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = time.Second, time.Second, time.Second, time.Second
	o.PoolSize, o.MinIdleConns = 128, 16
	return o
}

func newAPI(ctx context.Context, cfg Config, log *slog.Logger, in *ingest, metrics prometheus.Gatherer) (*api, error) {
	a := &api{cfg: cfg}
	ok := false
	defer func() {
		if !ok { // release what was opened before the failure
			a.close()
		}
	}()
	quietLog := log.With("component", "api")
	clk := clock.Or(cfg.Clock)
	v, virtual := cfg.virtual()
	if cfg.Redis == "" {
		m := miniredis.NewMiniRedis()
		if virtual {
			followClock(m, v)
		}
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("in-process redis: %w", err)
		}
		a.mini = m
		a.rdb = redis.NewClient(embeddedRedisOptions(m.Addr()))
		log.Info("in-process redis (miniredis) started", "addr", m.Addr())
	} else {
		a.rdb = redis.NewClient(matcher.FailFastOptions(cfg.Redis))
	}

	secret, dev, err := TokenSecret(cfg.TokenSecret)
	if err != nil {
		return nil, err
	}
	if a.signer, err = dispatch.NewSigner(secret); err != nil {
		return nil, fmt.Errorf("-token-secret: %w", err)
	}

	// The ride path's Redis commands go through go-redis's automatic
	// pipelining: the commands that concurrent rides issue while a batch is
	// on the wire leave together as the next one, so under load a write and
	// a read system call carry many commands instead of one each (they were
	// a quarter of the engine's CPU at 500 rides/s; see BENCHMARKS.md).
	if a.ap, err = a.rdb.AutoPipeline(); err != nil {
		return nil, fmt.Errorf("redis autopipeline: %w", err)
	}
	lc := matcher.DefaultLeaseConfig()
	lc.Now = clk.Now // the held hints age on the engine's clock, virtual or not
	if a.mini != nil {
		lc.OpTimeout = time.Second // in-process: slow means busy, not down (see embeddedRedisOptions)
	}
	leases, err := matcher.NewLeases(a.ap, lc)
	if err != nil {
		return nil, err
	}
	a.leases = leases
	sc := dispatch.DefaultStoreConfig()
	sc.Commands = a.ap
	store, err := dispatch.NewRideStore(a.rdb, sc)
	if err != nil {
		return nil, err
	}
	a.store = store

	a.events, err = kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(in.brokers...), kgo.DefaultProduceTopic(dispatch.DefaultRideEventsTopic)},
		positions.RetryOpts()...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for ride events: %w", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = positions.EnsureTopic(tctx, a.events, dispatch.DefaultRideEventsTopic, int32(cfg.Partitions))
	cancel()
	if err != nil {
		return nil, err
	}
	rc := dispatch.DefaultRelayConfig()
	rc.Logger = quietLog
	if a.relay, err = dispatch.NewRelay(store, a.events, rc); err != nil {
		return nil, err
	}

	ldc := dispatch.DefaultLoadConfig()
	ldc.Searches = func() (int, int) {
		if a.disp == nil {
			return 0, 0
		}
		return a.disp.Active()
	}
	a.load = dispatch.NewLoadMonitor(ldc)
	dc := dispatch.DefaultDriversConfig()
	dc.Sink, dc.Signer, dc.Logger, dc.Pressure, dc.Now = in.publisher, a.signer, quietLog, a.load.Pressure, clk.Now
	if virtual {
		dc.Pressure = nil // shedding follows the machine's load, which no seed decides
	}
	// Set before the server serves; the closure breaks the construction
	// cycle drivers -> dispatcher -> rides -> drivers.
	dc.Actions = func(ctx context.Context, d positions.DriverID, r dispatch.RideID, k dispatch.EventKind) (dispatch.Ride, error) {
		return a.rides.DriverAction(ctx, d, r, k)
	}
	dc.OriginPatterns = cfg.AllowedOrigins
	if a.drivers, err = dispatch.NewDrivers(dc); err != nil {
		return nil, err
	}

	// In role all the worker is called in-process; in role api the owners
	// of the partitions are found in the Redis registry and called over the
	// query RPC.
	var owners matcher.Owners = matcher.LocalOwners{Querier: in.worker}
	var reg *matcher.Registry
	if in.worker == nil {
		if reg, err = matcher.NewRegistry(a.rdb, matcher.DefaultRegistryConfig()); err != nil {
			return nil, err
		}
		if owners, err = matcher.NewResolver(reg, matcher.DialRPC(nil), matcher.DefaultResolverConfig()); err != nil {
			return nil, err
		}
	}
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: int32(cfg.Partitions)}
	gc := matcher.DefaultGatherConfig()
	gc.Partitioner = pt
	if virtual {
		gc.Deadline = 5 * time.Second // a busy machine must not cut a gather short: no seed decides that
	}
	g, err := matcher.NewGatherer(owners, gc)
	if err != nil {
		return nil, err
	}
	xc := dispatch.DefaultDispatcherConfig()
	xc.Store, xc.Leases, xc.Notifier, xc.Relay, xc.Logger = store, leases, a.drivers, a.relay, quietLog
	xc.OfferTimeout, xc.SearchDeadline, xc.RetryEvery = cfg.OfferTimeout, cfg.SearchDeadline, cfg.RetryEvery
	xc.StallTimeout, xc.MaxTrip, xc.FanOut = cfg.StallTimeout, cfg.MaxTrip, cfg.FanOut
	xc.Clock, xc.Now = clk, clk.Now
	gr := matcher.DefaultGreedyConfig()
	gr.OfferTTL = cfg.OfferTimeout + 2*time.Second // the lease outlives the offer a little
	greedy, err := matcher.NewGreedy(g, leases, gr)
	if err != nil {
		return nil, err
	}
	bc := matcher.DefaultBatcherConfig()
	bc.Partitioner, bc.OfferTTL, bc.Batch.Window, bc.Clock = pt, gr.OfferTTL, cfg.BatchWindow, clk
	batcher, err := matcher.NewBatcher(g, leases, nil, bc)
	if err != nil {
		return nil, err
	}
	a.batcher = batcher
	xc.Parked = batcher.Parked
	if a.policy, err = matcher.NewSwitch(greedy, batcher, pt, matcher.Policy(cfg.Policy)); err != nil {
		return nil, err
	}
	xc.Finder = a.policy
	if a.disp, err = dispatch.NewDispatcher(xc); err != nil {
		return nil, err
	}
	limiter, err := dispatch.NewRateLimiter(cfg.RiderRate, cfg.RiderBurst, 100_000, clk.Now) // per subject, all ride endpoints
	if err != nil {
		return nil, err
	}
	a.closing, a.stop = context.WithCancel(context.Background())
	if a.rides, err = dispatch.NewRides(dispatch.RidesConfig{Store: store, Dispatcher: a.disp, Leases: leases,
		Signer: a.signer, Relay: a.relay, Limiter: limiter, Now: clk.Now, Logger: quietLog,
		Locator: a.drivers, OriginPatterns: dc.OriginPatterns, Closing: a.closing}); err != nil {
		return nil, err
	}
	oc := dispatch.DefaultOutcomesConfig()
	oc.Logger = quietLog
	if a.outcomes, err = dispatch.NewOutcomes(oc); err != nil {
		return nil, err
	}
	if a.outcomesCl, err = kgo.NewClient(append(append([]kgo.Opt{kgo.SeedBrokers(in.brokers...)}, positions.RetryOpts()...),
		a.outcomes.OutcomesConsumerOpts(dispatch.DefaultRideEventsTopic)...)...); err != nil {
		return nil, fmt.Errorf("kafka client for the ops ride-events reader: %w", err)
	}
	opsCfg := dispatch.OpsConfig{Supply: ownersSupply{owners: owners, parts: int32(cfg.Partitions)},
		Outcomes: a.outcomes, Metrics: metrics, Signer: a.signer, Policy: a.policy, Closing: a.closing}
	if reg != nil { // role api: the workers' lag and dead letters come from their metrics
		opsCfg.RemoteMetrics = workerMetrics{reg: reg, parts: int32(cfg.Partitions), hc: &http.Client{}}.Gather
	}
	a.ops = dispatch.OpsHandler(opsCfg)

	a.dev = dev
	ok = true
	return a, nil
}

func (a *api) printDevTokens(w io.Writer) {
	exp := time.Now().Add(24 * time.Hour)
	mint := func(sub string, role dispatch.Role) string {
		t, _ := a.signer.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: exp})
		return t
	}
	fmt.Fprintf(w, "dev tokens (24 h; secret in %s; mint more with: hexdispatch token -role driver -sub d42):\n", devSecretFile())
	fmt.Fprintf(w, "  ops   ops1: %s\n", mint("ops1", dispatch.RoleOps))
	fmt.Fprintf(w, "  rider u1:   %s\n", mint("u1", dispatch.RoleRider))
	fmt.Fprintf(w, "  driver d1:  %s\n", mint("d1", dispatch.RoleDriver))
}

// routes adds the API to mux.
func (a *api) routes(mux *http.ServeMux) {
	a.drivers.Routes(mux)
	a.rides.Routes(mux)
	mux.Handle("GET /ops", a.ops)
	mux.Handle("GET /v1/ops/", a.ops)
	mux.Handle("PUT /v1/ops/", a.ops)
	mux.Handle("GET /openapi.json", dispatch.OpenAPIHandler())
}

// run starts the relay; when ctx ends it stops the searches and closes the
// WebSockets.
func (a *api) run(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error { return a.relay.Run(ctx) })
	if _, virtual := a.cfg.virtual(); a.mini != nil && !virtual {
		g.Go(func() error { return a.expireEmbedded(ctx) })
	}
	g.Go(func() error { return a.outcomes.Consume(ctx, a.outcomesCl) })
	g.Go(func() error { return a.load.Run(ctx) })
	g.Go(func() error { return a.disp.Run(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		// Riders' and drivers' sockets first, then the searches: a search
		// waiting in a batch window gets ErrClosed, not a driver nobody
		// would offer to.
		a.stop()
		a.drivers.Close()
		a.rides.Wait()
		a.batcher.Close()
		a.disp.Close()
		return nil
	})
}

// close releases what newAPI opened; call it after run's goroutines
// returned.
func (a *api) close() {
	if a.stop != nil {
		a.stop()
	}
	if a.batcher != nil {
		a.batcher.Close()
	}
	if a.events != nil {
		a.events.Close()
	}
	if a.outcomesCl != nil {
		a.outcomesCl.Close()
	}
	if a.ap != nil {
		a.ap.Close()
	}
	if a.rdb != nil {
		a.rdb.Close()
	}
	if a.mini != nil {
		a.mini.Close()
	}
}

// embeddedExpireEvery is how often the embedded Redis's TTLs (leases,
// trip locks, idempotency keys, retained rides) move on, in its clock's
// time. miniredis expires keys only when told to; its ClockTTL mode tells
// it on every command and re-sorts every key each time, which over a
// day's rides grew into seconds per command. Once per interval costs one
// pass; a key outlives its TTL by up to about the interval.
const embeddedExpireEvery = 2 * time.Second

// ttlClock moves an embedded Redis's TTLs on as its clock (wall or
// virtual) moves, at most once per embeddedExpireEvery.
//
// Concurrency: mu guards last.
type ttlClock struct {
	m    *miniredis.Miniredis
	mu   sync.Mutex
	last time.Time // when the TTLs last moved on
}

// moved tells m that its clock reads now.
func (c *ttlClock) moved(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := now.Sub(c.last); d >= embeddedExpireEvery {
		c.m.FastForward(d)
		c.last = now
	}
}

// expireEmbedded moves the embedded Redis's TTLs on with the wall clock
// until ctx ends.
func (a *api) expireEmbedded(ctx context.Context) error {
	tc := &ttlClock{m: a.mini, last: time.Now()}
	// Checked four times an interval, so a tick that comes early does not
	// skip a whole interval.
	t := time.NewTicker(embeddedExpireEvery / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			tc.moved(now)
		}
	}
}

// followClock makes m's time v's, and its TTLs move on with v's moves, so
// that leases expire on the engine's clock.
func followClock(m *miniredis.Miniredis, v *clock.Virtual) {
	tc := &ttlClock{m: m, last: v.Now()}
	m.SetTime(tc.last)
	v.OnMove(func(t time.Time) {
		m.SetTime(t)
		tc.moved(t)
	})
}

// register adds the API's collectors to reg.
func (a *api) register(reg *prometheus.Registry) {
	reg.MustRegister(apiCollector{a})
}

// apiCollector exports the API's counters.
type apiCollector struct{ a *api }

var (
	descDriverPositions = prometheus.NewDesc("hexd_gateway_positions_total", "Driver positions accepted by the gateway.", nil, nil)
	descDriverRejected  = prometheus.NewDesc("hexd_gateway_rejected_total", "Driver frames rejected as invalid.", nil, nil)
	descDriverShed      = prometheus.NewDesc("hexd_gateway_shed_total", "Driver positions shed with 429 because the publisher was full.", nil, nil)
	descDriverDropped   = prometheus.NewDesc("hexd_gateway_dropped_messages_total", "Messages to drivers dropped because their send queue was full.", nil, nil)
	descSearches        = prometheus.NewDesc("hexd_dispatch_searches_total", "Ride searches started.", nil, nil)
	descOffers          = prometheus.NewDesc("hexd_dispatch_offers_total", "Offers sent to drivers, by outcome.", []string{"outcome"}, nil)
	descNoDriver        = prometheus.NewDesc("hexd_dispatch_no_driver_total", "Rides that ended with no driver.", nil, nil)
	descDispatchErrors  = prometheus.NewDesc("hexd_dispatch_errors_total", "Errors inside ride searches.", nil, nil)
	descLeases          = prometheus.NewDesc("hexd_leases_total", "Driver lease calls by result (reserved, taken: lost to another ride, committed, commit_lost, released, release_lost, unavailable: Redis not reached), and candidates a match skipped on a held hint (skipped).", []string{"result"}, nil)
	descRelay           = prometheus.NewDesc("hexd_ride_events_total", "Ride events moved to Kafka, and relay errors.", []string{"result"}, nil)
	descRelayPasses     = prometheus.NewDesc("hexd_ride_event_passes_total", "Relay passes that moved ride events to Kafka (one read, one produce, one trim each, for every ride in the pass).", nil, nil)
	descMatchLatency    = prometheus.NewDesc("hexd_match_latency_seconds", "Time from a ride request to its first offer.", nil, nil)
	descMatchPhase      = prometheus.NewDesc("hexd_match_phase_seconds", "The steps of the way to each ride's first offer: start (waiting for a CPU), find (gather, rank, reserve), record (the offer written to the ride store), send (the offer handed to the driver's connection).", []string{"phase"}, nil)
	descRideStates      = prometheus.NewDesc("hexd_ride_transitions_total", "Rides this process moved into each state.", []string{"state"}, nil)
	descWSConns         = prometheus.NewDesc("hexd_gateway_websockets", "Driver WebSockets open.", nil, nil)
	descWSParked        = prometheus.NewDesc("hexd_gateway_websockets_parked", "Driver WebSockets parked between frames: waiting in the gateway's epoll set with no goroutine.", nil, nil)
	descWSParkFailures  = prometheus.NewDesc("hexd_gateway_websocket_park_failures_total", "Times an idle driver WebSocket could not park for an epoll error and kept its reader goroutine until its next frame.", nil, nil)
	descThrottled       = prometheus.NewDesc("hexd_gateway_throttled_total", "Driver positions dropped under load (a fresher one from the same driver came less than 2 s before).", nil, nil)
	descPressure        = prometheus.NewDesc("hexd_load_pressure", "Load relative to saturation (scheduling latency p99 / 20 ms, or searches / their bound); GPS gives way at 1.", nil, nil)
	descSchedP99        = prometheus.NewDesc("hexd_sched_latency_p99_seconds", "Goroutine scheduling latency p99 over the last 250 ms.", nil, nil)
	descOpsEvents       = prometheus.NewDesc("hexd_ops_ride_events_total", "Ride events read by the ops heatmap, by result (counted, late: before the window, bad: skipped).", []string{"result"}, nil)
	descPolicyRequests  = prometheus.NewDesc("hexd_match_requests_total", "Match requests by policy and result.", []string{"policy", "result"}, nil)
	descPolicyETAHist   = prometheus.NewDesc("hexd_match_pickup_eta_seconds", "Pickup ETA of matched requests, by policy (read p90 with histogram_quantile).", []string{"policy"}, nil)
	descPolicyETA       = prometheus.NewDesc("hexd_match_eta_seconds_sum", "Sum of the pickup ETAs of matched requests, by policy (divide by matched for the mean).", []string{"policy"}, nil)
	descGreedyWidened   = prometheus.NewDesc("hexd_match_widened_total", "Greedy matches that gathered a wider set because the nearest candidates were all taken.", nil, nil)
	descBatchWindows    = prometheus.NewDesc("hexd_batch_windows_total", "Batched-policy windows planned.", nil, nil)
	descBatchRiders     = prometheus.NewDesc("hexd_batch_riders_total", "Riders in batched windows (divide by windows for the mean window size).", nil, nil)
	descBatchSolve      = prometheus.NewDesc("hexd_batch_solve_seconds_sum", "Time spent solving window assignments.", nil, nil)
	descBatchContended  = prometheus.NewDesc("hexd_batch_contended_total", "Planned drivers another ride reserved first.", nil, nil)
	descBatchPlanETA    = prometheus.NewDesc("hexd_batch_plan_eta_seconds_sum", "Planned pickup ETA over all windows: batched, and greedy on the same windows (the gain is their difference).", []string{"plan"}, nil)
	descBatchPlanned    = prometheus.NewDesc("hexd_batch_plan_assigned_total", "Riders assigned over all windows by the batched plan and by greedy on the same windows.", []string{"plan"}, nil)
)

func (c apiCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c apiCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.a.drivers.Stats()
	ch <- prometheus.MustNewConstMetric(descDriverPositions, prometheus.CounterValue, float64(d.Positions))
	ch <- prometheus.MustNewConstMetric(descDriverRejected, prometheus.CounterValue, float64(d.Rejected))
	ch <- prometheus.MustNewConstMetric(descDriverShed, prometheus.CounterValue, float64(d.Shed))
	ch <- prometheus.MustNewConstMetric(descDriverDropped, prometheus.CounterValue, float64(d.Dropped))
	ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.CounterValue, float64(d.Throttled))
	ch <- prometheus.MustNewConstMetric(descPressure, prometheus.GaugeValue, c.a.load.Pressure())
	ch <- prometheus.MustNewConstMetric(descSchedP99, prometheus.GaugeValue, c.a.load.SchedP99().Seconds())
	x := c.a.disp.Stats()
	ch <- prometheus.MustNewConstMetric(descSearches, prometheus.CounterValue, float64(x.Searches))
	for outcome, v := range map[string]uint64{"sent": x.Offers, "accepted": x.Accepted, "declined": x.Declined, "timed_out": x.TimedOut} {
		ch <- prometheus.MustNewConstMetric(descOffers, prometheus.CounterValue, float64(v), outcome)
	}
	ch <- prometheus.MustNewConstMetric(descNoDriver, prometheus.CounterValue, float64(x.NoDriver))
	ch <- prometheus.MustNewConstMetric(descDispatchErrors, prometheus.CounterValue, float64(x.Errors))
	l := c.a.leases.Stats()
	for result, v := range map[string]uint64{"reserved": l.Reserved, "taken": l.Taken, "committed": l.Committed, "commit_lost": l.CommitLost,
		"released": l.Released, "release_lost": l.ReleaseLost, "unavailable": l.Unavailable, "skipped": l.Skipped} {
		ch <- prometheus.MustNewConstMetric(descLeases, prometheus.CounterValue, float64(v), result)
	}
	r := c.a.relay.Stats()
	ch <- prometheus.MustNewConstMetric(descRelay, prometheus.CounterValue, float64(r.Produced), "produced")
	ch <- prometheus.MustNewConstMetric(descRelay, prometheus.CounterValue, float64(r.Errors), "error")
	ch <- prometheus.MustNewConstMetric(descRelay, prometheus.CounterValue, float64(r.Dropped), "notice_dropped")
	ch <- prometheus.MustNewConstMetric(descRelayPasses, prometheus.CounterValue, float64(r.Passes))
	for _, p := range []matcher.Policy{matcher.PolicyGreedy, matcher.PolicyBatched} {
		st := c.a.policy.Stats(p)
		for result, v := range map[string]uint64{"matched": st.Matched, "no_driver": st.NoDriver, "error": st.Errors} {
			ch <- prometheus.MustNewConstMetric(descPolicyRequests, prometheus.CounterValue, float64(v), string(p), result)
		}
		ch <- prometheus.MustNewConstMetric(descPolicyETA, prometheus.CounterValue, st.ETASum.Seconds(), string(p))
		buckets := make(map[float64]uint64, len(matcher.ETABuckets))
		var cum uint64
		for i, ub := range matcher.ETABuckets {
			cum += st.ETACounts[i]
			buckets[ub.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(descPolicyETAHist, st.Matched, st.ETASum.Seconds(), buckets, string(p))
	}
	ch <- histogram(descMatchLatency, c.a.disp.MatchLatency())
	for p := range dispatch.NumPhases {
		ch <- histogram(descMatchPhase, c.a.disp.PhaseLatency(p), p.String())
	}
	for st := dispatch.Requested; st.Valid(); st++ {
		ch <- prometheus.MustNewConstMetric(descRideStates, prometheus.CounterValue, float64(c.a.store.Entered(st)), st.String())
	}
	ch <- prometheus.MustNewConstMetric(descWSConns, prometheus.GaugeValue, float64(c.a.drivers.Connections()))
	ch <- prometheus.MustNewConstMetric(descWSParked, prometheus.GaugeValue, float64(c.a.drivers.Parked()))
	ch <- prometheus.MustNewConstMetric(descWSParkFailures, prometheus.CounterValue, float64(c.a.drivers.ParkFailures()))
	o := c.a.outcomes.Stats()
	ch <- prometheus.MustNewConstMetric(descOpsEvents, prometheus.CounterValue, float64(o.Events-o.Late), "counted")
	ch <- prometheus.MustNewConstMetric(descOpsEvents, prometheus.CounterValue, float64(o.Late), "late")
	ch <- prometheus.MustNewConstMetric(descOpsEvents, prometheus.CounterValue, float64(o.Bad), "bad")
	ch <- prometheus.MustNewConstMetric(descGreedyWidened, prometheus.CounterValue, float64(c.a.policy.Greedy().Widened()))
	b := c.a.policy.Batcher().Stats()
	ch <- prometheus.MustNewConstMetric(descBatchWindows, prometheus.CounterValue, float64(b.Windows))
	ch <- prometheus.MustNewConstMetric(descBatchRiders, prometheus.CounterValue, float64(b.Riders))
	ch <- prometheus.MustNewConstMetric(descBatchSolve, prometheus.CounterValue, time.Duration(b.SolveNanos).Seconds())
	ch <- prometheus.MustNewConstMetric(descBatchContended, prometheus.CounterValue, float64(b.Contended))
	ch <- prometheus.MustNewConstMetric(descBatchPlanETA, prometheus.CounterValue, time.Duration(b.BatchedETA).Seconds(), "batched")
	ch <- prometheus.MustNewConstMetric(descBatchPlanETA, prometheus.CounterValue, time.Duration(b.GreedyETA).Seconds(), "greedy")
	ch <- prometheus.MustNewConstMetric(descBatchPlanned, prometheus.CounterValue, float64(b.BatchedAssigned), "batched")
	ch <- prometheus.MustNewConstMetric(descBatchPlanned, prometheus.CounterValue, float64(b.GreedyAssigned), "greedy")
}
