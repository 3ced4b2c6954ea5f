// Package engine wires hexdispatch's packages into one running process:
// the GPS ingest (publisher and cell worker over Kafka), the worker's query
// RPC, and the product API (driver gateway, rider API, dispatcher, ride
// events relay, ops console) behind one HTTP listener. cmd/hexdispatch
// starts it from flags; the city simulation starts it in-process.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/clock"
)

// Roles are the process roles: all (every part in one process), api (the
// product surface; finds workers through Redis) and worker (cell worker).
var Roles = []string{"all", "api", "worker"}

// Config configures an Engine. The zero value of a duration or count
// means its default (DefaultConfig).
type Config struct {
	Addr            string // HTTP listen address; port 0 picks one
	Role            string
	ShutdownTimeout time.Duration
	Kafka           []string      // brokers; empty = in-process kfake
	Partitions      int           // partitions of the positions topic
	TTL             time.Duration // driver TTL, also the rebuild window
	SessionTimeout  time.Duration // worker consumer-group session timeout
	Redis           string        // host:port; empty = in-process miniredis
	TokenSecret     string        // HMAC secret of bearer tokens; empty = dev secret
	OfferTimeout    time.Duration
	SearchDeadline  time.Duration // bound of a whole ride search
	RetryEvery      time.Duration // pause between empty searches
	StallTimeout    time.Duration // an accepted or arrived ride without a next step expires after this
	MaxTrip         time.Duration // an in_trip ride expires after this
	FanOut          int           // drivers offered a ride at once (first accept wins); 0 or 1 = one
	AllowedOrigins  []string      // extra browser origins for the driver WebSocket
	RPCAddr         string        // worker query RPC listen address (role worker with Redis)
	Policy          string        // default matching policy: greedy | batched
	BatchWindow     time.Duration
	// RiderRate and RiderBurst bound ride-endpoint requests per token
	// subject (requests per second, burst).
	RiderRate  float64
	RiderBurst int
	// Clock runs the timers that decide rides (offer timeouts, search
	// deadlines and retries, batch windows, driver TTL, rate limits);
	// nil is the wall clock. A *clock.Virtual makes the engine
	// deterministic for the city simulation: it needs role all with the
	// embedded Kafka and Redis, whose TTLs then follow the clock, and
	// turns off the GPS throttle (which reacts to the machine's load).
	Clock clock.Clock
}

// virtual reports whether the engine runs on a virtual clock.
func (c Config) virtual() (*clock.Virtual, bool) {
	v, ok := c.Clock.(*clock.Virtual)
	return v, ok
}

// DefaultConfig returns the defaults of `hexdispatch` with no flags.
func DefaultConfig() Config {
	d := dispatch.DefaultDispatcherConfig()
	return Config{Addr: "127.0.0.1:8080", Role: "all", ShutdownTimeout: 10 * time.Second, Partitions: 16,
		TTL: 30 * time.Second, SessionTimeout: 3 * time.Second, OfferTimeout: d.OfferTimeout,
		SearchDeadline: d.SearchDeadline, RetryEvery: d.RetryEvery, StallTimeout: d.StallTimeout, MaxTrip: d.MaxTrip,
		RPCAddr: "127.0.0.1:0",
		Policy:  "greedy", BatchWindow: 2 * time.Second, RiderRate: 5, RiderBurst: 20}
}

// withDefaults fills the zero fields of c from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if c.Role == "" {
		c.Role = d.Role
	}
	if c.Partitions == 0 {
		c.Partitions = d.Partitions
	}
	if c.RPCAddr == "" {
		c.RPCAddr = d.RPCAddr
	}
	if c.Policy == "" {
		c.Policy = d.Policy
	}
	if c.RiderRate == 0 {
		c.RiderRate = d.RiderRate
	}
	if c.RiderBurst == 0 {
		c.RiderBurst = d.RiderBurst
	}
	set(&c.ShutdownTimeout, d.ShutdownTimeout)
	set(&c.TTL, d.TTL)
	set(&c.SessionTimeout, d.SessionTimeout)
	set(&c.OfferTimeout, d.OfferTimeout)
	set(&c.SearchDeadline, d.SearchDeadline)
	set(&c.RetryEvery, d.RetryEvery)
	set(&c.StallTimeout, d.StallTimeout)
	set(&c.MaxTrip, d.MaxTrip)
	set(&c.BatchWindow, d.BatchWindow)
	return c
}

// Validate checks c after defaults are applied; errors name the setting.
func (c Config) Validate() error {
	switch {
	case !slices.Contains(Roles, c.Role):
		return fmt.Errorf("role %q: want one of %v", c.Role, Roles)
	case c.Partitions < 1 || c.Partitions > 1<<16:
		return fmt.Errorf("partitions %d: want 1..65536", c.Partitions)
	case c.Role == "api" && (c.Redis == "" || len(c.Kafka) == 0):
		return errors.New("role api needs Kafka and Redis: it finds the workers through the ownership registry in Redis")
	case c.Policy != "greedy" && c.Policy != "batched":
		return fmt.Errorf("policy %q: want greedy or batched", c.Policy)
	case c.TTL < 0 || c.SessionTimeout < 0 || c.OfferTimeout < 0 || c.SearchDeadline < 0 ||
		c.RetryEvery < 0 || c.BatchWindow < 0 || c.ShutdownTimeout < 0 || c.StallTimeout < 0 || c.MaxTrip < 0:
		return errors.New("durations must not be negative")
	case c.FanOut < 0 || c.FanOut > 16:
		return fmt.Errorf("fan-out %d: want 1 to 16", c.FanOut)
	case c.RiderRate < 0 || c.RiderBurst < 0:
		return errors.New("rider rate and burst must not be negative")
	}
	if _, ok := c.virtual(); ok && (c.Role != "all" || c.Redis != "" || len(c.Kafka) > 0) {
		return errors.New("a virtual clock needs role all with the embedded Kafka and Redis")
	}
	return nil
}

// Engine is one hexdispatch process.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	in    *ingest
	own   *ownership
	front *api
	ln    net.Listener
	srv   *http.Server
}

// New builds an engine and opens its listener; Run serves it. On error
// everything New opened is released.
func New(ctx context.Context, cfg Config, log *slog.Logger) (e *Engine, err error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e = &Engine{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	reg := prometheus.NewRegistry()
	// go_gc_heap_live_bytes (the heap the last GC marked live) besides
	// the MemStats gauges: what the process retains, without the garbage
	// and free slots that heap_inuse also counts.
	gc := collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}))
	reg.MustRegister(gc, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if e.in, err = newIngest(ctx, cfg, log); err != nil {
		return nil, err
	}
	e.in.register(reg)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", e.in.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))

	if cfg.Role == "worker" && cfg.Redis != "" {
		if e.own, err = newOwnership(cfg, log, e.in.worker, reg); err != nil {
			return nil, err
		}
	} else if cfg.Role == "worker" {
		log.Warn("no Redis: this worker does not publish its partitions, so api processes cannot query it")
	}
	if cfg.Role == "all" || cfg.Role == "api" {
		if e.front, err = newAPI(ctx, cfg, log, e.in, reg); err != nil {
			return nil, err
		}
		e.front.register(reg)
		e.front.routes(mux)
	}

	if e.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	e.srv = &http.Server{
		Handler:           instrument(mux, reg),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return e, nil
}

// Addr is the HTTP listen address.
func (e *Engine) Addr() net.Addr { return e.ln.Addr() }

// Role is the process role.
func (e *Engine) Role() string { return e.cfg.Role }

// Signer mints and verifies the bearer tokens of this engine; nil in role
// worker.
func (e *Engine) Signer() *dispatch.Signer {
	if e.front == nil {
		return nil
	}
	return e.front.signer
}

// DevTokens reports whether tokens use the dev secret.
func (e *Engine) DevTokens() bool { return e.front != nil && e.front.dev }

// PrintDevTokens prints tokens for trying the API by hand.
func (e *Engine) PrintDevTokens(w io.Writer) {
	if e.front != nil {
		e.front.printDevTokens(w)
	}
}

// Brokers are the Kafka brokers the engine uses (the in-process ones when
// it started kfake).
func (e *Engine) Brokers() []string { return e.in.brokers }

// Run serves until ctx ends, then shuts down gracefully: it stops
// accepting, closes WebSockets, stops the searches and the consumers, and
// releases everything New opened. It returns the first failure.
func (e *Engine) Run(ctx context.Context) error {
	defer e.close()
	e.log.Info("started", "role", e.cfg.Role, "addr", e.ln.Addr().String())
	g, gctx := errgroup.WithContext(ctx)
	e.in.run(gctx, g)
	if e.own != nil {
		e.own.run(gctx, g)
	}
	if e.front != nil {
		e.front.run(gctx, g)
	}
	g.Go(func() error {
		if err := e.srv.Serve(e.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), e.cfg.ShutdownTimeout)
		defer cancel()
		e.log.Info("shutting down")
		return e.srv.Shutdown(sctx)
	})
	return g.Wait()
}

// close releases what New opened, in reverse order; call it after Run's
// goroutines have returned (Run does).
func (e *Engine) close() {
	if e.ln != nil {
		e.ln.Close()
	}
	if e.front != nil {
		e.front.close()
	}
	if e.own != nil {
		e.own.close()
	}
	if e.in != nil {
		e.in.close()
	}
}
