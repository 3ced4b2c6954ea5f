package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	vclock "github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/internal/engine"
	"github.com/hexdispatch/hexdispatch/sim"
)

type options struct {
	demand, trips, out    string
	synthetic             float64
	bbox                  string
	from, to              string
	target, secret, kafka string
	policy                string
	snapshots             string
	city                  sim.CityConfig
	seed                  uint64
	failOnInvariants      bool
	deterministic         bool
	minMatchRate          float64
	syntheticSpan         time.Duration
	partitions, fanOut    int
	batchWindow           time.Duration
	shutdownTimeout       time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{city: sim.DefaultCityConfig()}
	c := &o.city
	fs := flag.NewFlagSet("citysim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.demand, "demand", "", "demand CSV (gzip or plain): t_s,lat,lng pickups or whole trips (see ../shared/data/README.md)")
	fs.Float64Var(&o.synthetic, "synthetic", 0, "instead of -demand: Poisson demand at this many requests per hour over -bbox")
	fs.StringVar(&o.bbox, "bbox", "37.70,-122.52,37.81,-122.36", "city bbox of -synthetic demand: minLat,minLng,maxLat,maxLng")
	fs.DurationVar(&o.syntheticSpan, "span", time.Hour, "length of -synthetic demand")
	fs.StringVar(&o.trips, "trips", "", "trips CSV giving dropoffs and trip durations to pickups-only demand")
	fs.IntVar(&c.Drivers, "drivers", 300, "simulated drivers")
	fs.Float64Var(&c.Speed, "speed", 20, "time acceleration: 20 replays an hour in 3 minutes")
	fs.StringVar(&o.from, "from", "", "replay from this time of the demand's day, HH:MM (default: its first request)")
	fs.StringVar(&o.to, "to", "", "replay until this time, HH:MM (default: after its last request)")
	fs.Uint64Var(&o.seed, "seed", 1, "random seed: driver placement, offer answers, GPS noise, dropoffs")
	fs.StringVar(&o.out, "out", "citysim-out", "directory for summary.json, report.html and engine.log")
	fs.StringVar(&o.target, "target", "", "base URL of a running engine; empty starts one in-process")
	fs.StringVar(&o.secret, "token-secret", os.Getenv("HEXD_TOKEN_SECRET"), "with -target: the engine's token secret")
	fs.StringVar(&o.kafka, "kafka", "", "with -target: the engine's Kafka brokers, for the invariant check of ride events")
	fs.StringVar(&o.policy, "policy", "greedy", "in-process engine: matching policy greedy | batched")
	fs.DurationVar(&o.batchWindow, "batch-window", 2*time.Second, "in-process engine, -policy batched: how long a region collects requests before planning them (simulated)")
	fs.IntVar(&o.fanOut, "fan-out", 1, "in-process engine: drivers offered a ride at once")
	fs.IntVar(&o.partitions, "partitions", 16, "in-process engine: partitions of the positions topic")
	fs.StringVar(&c.Placement, "placement", c.Placement, "where drivers start: demand (near past pickups) | uniform (over the bbox)")
	fs.DurationVar(&c.Shift, "shift", 0, "each driver's shift length, starts staggered; 0 keeps every driver online the whole run")
	fs.DurationVar(&c.Ping, "ping", c.Ping, "position report interval (simulated)")
	fs.Float64Var(&c.GPSNoiseM, "gps-noise", c.GPSNoiseM, "GPS noise, metres (standard deviation)")
	fs.Float64Var(&c.CityKMH, "city-kmh", c.CityKMH, "driving speed, km/h")
	fs.Float64Var(&c.Detour, "detour", c.Detour, "road distance over straight-line distance")
	fs.Float64Var(&c.Accept, "accept", c.Accept, "probability a driver accepts an offer")
	fs.DurationVar(&c.AnswerDelay, "answer-delay", c.AnswerDelay, "mean time a driver takes to answer (simulated)")
	fs.DurationVar(&c.BoardTime, "board", c.BoardTime, "time at the pickup from arrived to start (simulated)")
	fs.BoolVar(&c.Reposition, "reposition", c.Reposition, "drivers who finish a trip far from recent demand drive back toward it")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "keep running this long after -to so searches and trips can end (simulated)")
	fs.DurationVar(&c.WarmUp, "warmup", c.WarmUp, "drivers come online this long before -from (simulated)")
	fs.StringVar(&o.snapshots, "snapshots", "", "times of the supply/demand heat maps, HH:MM,... (default: three across the run)")
	fs.BoolVar(&o.deterministic, "deterministic", false, "in-process engine on a virtual clock, replayed step by step: the same -seed gives the same summary (as fast as the machine allows, up to -speed)")
	fs.BoolVar(&o.failOnInvariants, "fail-on-violation", true, "exit non-zero when an invariant is broken")
	fs.Float64Var(&o.minMatchRate, "min-match-rate", 0, "exit non-zero when the match rate is below this")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "in-process engine: graceful shutdown bound")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if (o.demand == "") == (o.synthetic <= 0) {
		return o, errors.New("give exactly one of -demand FILE and -synthetic RATE")
	}
	if o.target != "" && !strings.HasPrefix(o.target, "http://") && !strings.HasPrefix(o.target, "https://") {
		return o, fmt.Errorf("-target %q: want an http:// or https:// base URL", o.target)
	}
	if o.target != "" && len(o.secret) < dispatch.MinSecretLen {
		return o, fmt.Errorf("-target needs -token-secret (or HEXD_TOKEN_SECRET) of at least %d bytes to mint tokens", dispatch.MinSecretLen)
	}
	if o.deterministic && o.target != "" {
		return o, errors.New("-deterministic needs the in-process engine: drop -target")
	}
	if o.batchWindow <= 0 || o.batchWindow > 5*time.Minute {
		return o, fmt.Errorf("-batch-window %v: want (0, 5m]", o.batchWindow)
	}
	if o.policy != "greedy" && o.policy != "batched" {
		return o, fmt.Errorf("-policy %q: want greedy or batched", o.policy)
	}
	c.Seed = o.seed
	return o, nil
}

// parseClock parses HH:MM (hours may exceed 23 for multi-day demand).
func parseClock(flagName, s string) (time.Duration, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 {
		return 0, fmt.Errorf("-%s %q: want HH:MM", flagName, s)
	}
	return time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cfg := o.city
	if err := loadDemand(&o, &cfg, stderr); err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	raiseFileLimit()

	target, stopEngine, err := startTarget(ctx, o, cfg.Speed)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "citysim: %d requests from %s to %s, %d drivers, speed %gx, target %s\n",
		len(cfg.Demand.Window(cfg.From, cfg.To).Requests), clock(cfg.From), clock(cfg.To), cfg.Drivers, cfg.Speed, target.BaseURL)
	cfg.Progress = stderr
	summary, shots, runErr := sim.RunCity(ctx, target, cfg)
	if err := stopEngine(); err != nil && runErr == nil {
		runErr = fmt.Errorf("engine: %w", err)
	}
	if runErr != nil && summary.Requests == 0 {
		return runErr
	}
	if err := sim.WriteOutputs(o.out, summary, shots); err != nil {
		return err
	}
	printSummary(stdout, summary, o.out)
	switch {
	case runErr != nil:
		return runErr
	case o.failOnInvariants && !summary.Invariants.OK():
		return fmt.Errorf("invariants broken: %d double assignments, %d lost, %d inconsistent (see %s)",
			summary.Invariants.DoubleAssignment, summary.Invariants.Lost, summary.Invariants.Inconsistent, filepath.Join(o.out, "summary.json"))
	case summary.MatchRate < o.minMatchRate:
		return fmt.Errorf("match rate %.3f is below -min-match-rate %.3f", summary.MatchRate, o.minMatchRate)
	}
	return nil
}

// loadDemand reads or generates the demand and settles the window.
func loadDemand(o *options, cfg *sim.CityConfig, stderr io.Writer) error {
	if o.demand != "" {
		d, rep, err := sim.ReadDemandFile(o.demand)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "citysim: %s: %s\n", o.demand, rep)
		for _, e := range rep.Skipped {
			fmt.Fprintf(stderr, "citysim: %s: skipped %v\n", o.demand, e)
		}
		cfg.Demand = d.SpreadMinutes(o.seed)
	} else {
		b, err := geo.ParseBBox(o.bbox)
		if err != nil {
			return fmt.Errorf("-bbox: %w", err)
		}
		d, err := sim.Synthetic(sim.Scatter{BBox: b, UniformWeight: 1}, o.synthetic, o.syntheticSpan, o.seed)
		if err != nil {
			return fmt.Errorf("-synthetic: %w", err)
		}
		cfg.Demand = d
	}
	if o.trips != "" {
		t, rep, err := sim.ReadDemandFile(o.trips)
		if err != nil {
			return fmt.Errorf("-trips: %w", err)
		}
		fmt.Fprintf(stderr, "citysim: %s: %s\n", o.trips, rep)
		for _, q := range t.Requests {
			if q.HasDropoff && q.TripDuration > 0 {
				cfg.Trips = append(cfg.Trips, q)
			}
		}
	}
	reqs := cfg.Demand.Requests
	cfg.From, cfg.To = reqs[0].At.Truncate(time.Minute), reqs[len(reqs)-1].At.Truncate(time.Minute)+time.Minute
	var err error
	if o.from != "" {
		if cfg.From, err = parseClock("from", o.from); err != nil {
			return err
		}
	}
	if o.to != "" {
		if cfg.To, err = parseClock("to", o.to); err != nil {
			return err
		}
	}
	if o.snapshots != "" {
		for _, s := range strings.Split(o.snapshots, ",") {
			t, err := parseClock("snapshots", strings.TrimSpace(s))
			if err != nil {
				return err
			}
			cfg.Snapshots = append(cfg.Snapshots, t)
		}
	} else if cfg.To > cfg.From {
		for i := 1; i <= 3; i++ {
			cfg.Snapshots = append(cfg.Snapshots, (cfg.From + (cfg.To-cfg.From)*time.Duration(i)/4).Truncate(time.Minute))
		}
	}
	return cfg.Validate()
}

// Wall-time floors of the scaled engine timeouts (see startTarget).
const (
	ttlFloor   = 10 * time.Second
	offerFloor = 2 * time.Second
)

// startTarget starts the in-process engine, or prepares the remote one.
// The returned stop ends the engine and waits for it.
func startTarget(ctx context.Context, o options, speed float64) (sim.Target, func() error, error) {
	if o.target != "" {
		signer, err := dispatch.NewSigner([]byte(o.secret))
		if err != nil {
			return sim.Target{}, nil, err
		}
		t := sim.Target{BaseURL: strings.TrimSuffix(o.target, "/"), Mint: minter(signer)}
		if o.kafka != "" {
			t.Brokers = strings.Split(o.kafka, ",")
		}
		return t, func() error { return nil }, nil
	}
	logFile, err := os.Create(filepath.Join(o.out, "engine.log"))
	if err != nil {
		return sim.Target{}, nil, err
	}
	var raw [24]byte
	rand.Read(raw[:])
	ec := engine.DefaultConfig()
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) / speed) }
	ec.Addr, ec.TokenSecret, ec.Policy, ec.Partitions = "127.0.0.1:0", hex.EncodeToString(raw[:]), o.policy, o.partitions
	var virtual *vclock.Virtual
	if o.deterministic {
		// The engine's clock is the simulation's: its durations are
		// simulated time, unscaled.
		virtual = vclock.NewVirtual(time.Now())
		ec.Clock, ec.BatchWindow = virtual, o.batchWindow
	} else {
		// The system's own latencies (GPS ingest, HTTP round trips) do not
		// scale with the replay: the TTL and the offer timeout keep a floor of
		// wall time so a busy machine does not expire live drivers or time out
		// answers already sent. Simulated drivers go offline explicitly and
		// always answer, so the floors rarely decide anything else.
		ec.TTL, ec.OfferTimeout = max(scale(ec.TTL), ttlFloor), max(scale(ec.OfferTimeout), offerFloor)
		ec.SearchDeadline, ec.RetryEvery, ec.BatchWindow = scale(ec.SearchDeadline), scale(ec.RetryEvery), scale(o.batchWindow)
	}
	ec.ShutdownTimeout, ec.FanOut = o.shutdownTimeout, o.fanOut
	log := slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ectx, cancel := context.WithCancel(ctx)
	e, err := engine.New(ectx, ec, log)
	if err != nil {
		cancel()
		logFile.Close()
		return sim.Target{}, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ectx) }()
	stop := func() error {
		cancel()
		err := <-done
		logFile.Close()
		return err
	}
	if err := waitReady(ctx, "http://"+e.Addr().String()); err != nil {
		stop()
		return sim.Target{}, nil, err
	}
	t := sim.Target{BaseURL: "http://" + e.Addr().String(), Mint: minter(e.Signer()), Brokers: e.Brokers()}
	if virtual != nil {
		t.Clock, t.Quiesce = virtual, e.Quiesce
	}
	return t, stop, nil
}

func minter(s *dispatch.Signer) func(string, dispatch.Role) (string, error) {
	exp := time.Now().Add(7 * 24 * time.Hour)
	return func(sub string, role dispatch.Role) (string, error) {
		return s.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: exp})
	}
}

// raiseFileLimit lifts the soft open-files limit to the hard one: every
// simulated driver and live rider holds a socket, twice when in-process.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func clock(d time.Duration) string {
	return fmt.Sprintf("%02d:%02d", int(d/time.Hour), int(d%time.Hour/time.Minute))
}

func printSummary(w io.Writer, s sim.Summary, out string) {
	fmt.Fprintf(w, "requests %d  created %d  matched %d (%.1f%%)  no_driver %d  completed %d  live at end %d\n",
		s.Requests, s.Created, s.Matched, 100*s.MatchRate, s.NoDriver, s.Completed, s.LiveAtEnd)
	fmt.Fprintf(w, "wait until offer p50/p90/p99 %.1f/%.1f/%.1f s  until pickup p50/p90/p99 %.0f/%.0f/%.0f s  pickup ETA mean %.0f s\n",
		s.WaitUntilOfferS.P50, s.WaitUntilOfferS.P90, s.WaitUntilOfferS.P99,
		s.WaitUntilPickupS.P50, s.WaitUntilPickupS.P90, s.WaitUntilPickupS.P99, s.PickupETAS.Mean)
	fmt.Fprintf(w, "request to offer at the client p50/p99 %.1f/%.1f ms  offers declined %d timed out %d  utilisation %.2f\n",
		s.RequestToOfferMS.P50, s.RequestToOfferMS.P99, s.OffersDeclined, s.OffersTimedOut, s.DriverUtilisation)
	inv := "not checked (no access to ride events)"
	if s.Invariants.Checked {
		inv = fmt.Sprintf("%d events over %d rides: %d double assignments, %d lost, %d inconsistent",
			s.Invariants.Events, s.Invariants.Rides, s.Invariants.DoubleAssignment, s.Invariants.Lost, s.Invariants.Inconsistent)
	}
	fmt.Fprintf(w, "invariants: %s\nwall %.1f s; wrote %s and %s\n", inv, s.WallSeconds,
		filepath.Join(out, "summary.json"), filepath.Join(out, "report.html"))
}

// waitReady polls the engine's /readyz until every partition is rebuilt.
func waitReady(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("engine at %s not ready: %w", base, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
