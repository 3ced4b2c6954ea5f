package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hexdispatch/hexdispatch/internal/cli"
	"github.com/hexdispatch/hexdispatch/sim"
)

// config is what the flags (and their HEXD_CHAOS_* overrides) set.
type config struct {
	duration     time.Duration // wall length of each run (baseline and chaos)
	every        time.Duration // one fault per slot of this length
	seed         uint64
	workers      int
	partitions   int
	drivers      int
	rate         float64 // ride requests per wall-clock second
	speed        float64 // simulated time per wall time
	ttl          time.Duration
	rebuildBound time.Duration
	redisDown    [2]time.Duration
	brokerDown   [2]time.Duration
	warm, drain  time.Duration // wall time before and after the demand
	baseline     bool
	out          string
	binDir       string
	redisBin     string
	progress     bool
	attempts     int // rider attempts per ride request (429/503/no answer)

	minFaults     int
	recoveryP99   time.Duration
	minRatio      float64
	failOnTargets bool

	hexdispatchBin, devbrokerBin string
	secret                       string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var redisDown, brokerDown string
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "wall length of the chaos run (and of the fault-free baseline run)")
	fs.DurationVar(&c.every, "every", 15*time.Second, "one fault per slot of this length over the fault phase")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the fault schedule and of the simulation (demand, drivers, answers)")
	fs.IntVar(&c.workers, "workers", 2, "worker processes (at least 2, so a killed worker's partitions move)")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of the positions topic")
	fs.IntVar(&c.drivers, "drivers", 400, "simulated drivers, all online for the whole run")
	fs.Float64Var(&c.rate, "rate", 0.6, "ride requests per wall-clock second (Poisson, San Francisco hot spots)")
	fs.Float64Var(&c.speed, "speed", 4, "simulated time per wall time: trips, answers and boarding run this much faster")
	fs.DurationVar(&c.ttl, "ttl", 30*time.Second, "engine driver TTL (-ttl of every process)")
	fs.DurationVar(&c.rebuildBound, "rebuild-bound", 5*time.Second, "a driver may be missing from the workers for at most TTL plus this")
	fs.StringVar(&redisDown, "redis-down", "2s-5s", "how long redis-server stays down per restart: a duration or lo-hi")
	fs.StringVar(&brokerDown, "broker-pause", "2s-6s", "how long the broker stays paused: a duration or lo-hi")
	fs.DurationVar(&c.warm, "warmup", 15*time.Second, "wall time the drivers are online before the first request")
	fs.DurationVar(&c.drain, "drain", 15*time.Second, "wall time after the last request before the simulation stops")
	fs.BoolVar(&c.baseline, "baseline", true, "first run the same simulation (same length and seed) without faults, for the match-rate ratio")
	fs.StringVar(&c.out, "out", "chaos-out", "directory for report.json and each run's process logs")
	fs.StringVar(&c.binDir, "bin-dir", "bin", "directory holding the hexdispatch and devbroker binaries")
	fs.StringVar(&c.redisBin, "redis-server", "", "redis-server binary (default: /usr/bin/redis-server, else PATH)")
	fs.IntVar(&c.attempts, "rider-attempts", 8, "a rider sends a refused ride request (429, 503, no answer) up to this many times, waiting Retry-After (2 s on a Redis outage) in between")
	fs.BoolVar(&c.progress, "progress", true, "print the simulation's live progress line on stderr")
	fs.IntVar(&c.minFaults, "min-faults", 30, "target: at least this many faults injected")
	fs.DurationVar(&c.recoveryP99, "recovery-p99", 5*time.Second, "target: worker-kill recovery p99 below this")
	fs.Float64Var(&c.minRatio, "min-ratio", 0.95, "target: match success during faults over the fault-free run at least this")
	fs.BoolVar(&c.failOnTargets, "fail-on-targets", false, "exit non-zero when a target is missed (invariant violations always do)")
	if err := cli.ApplyEnv(fs, "HEXD_CHAOS_"); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.redisDown, err = parseRange("redis-down", redisDown); err != nil {
		return c, err
	}
	if c.brokerDown, err = parseRange("broker-pause", brokerDown); err != nil {
		return c, err
	}
	if err := c.validate(); err != nil {
		return c, err
	}
	c.hexdispatchBin, c.devbrokerBin = filepath.Join(c.binDir, "hexdispatch"), filepath.Join(c.binDir, "devbroker")
	for _, b := range []string{c.hexdispatchBin, c.devbrokerBin} {
		if _, err := os.Stat(b); err != nil {
			return c, fmt.Errorf("-bin-dir %s: %w (build it: go build -o %s ./cmd/%s)", c.binDir, err, b, filepath.Base(b))
		}
	}
	if c.redisBin == "" {
		c.redisBin = "/usr/bin/redis-server"
		if _, err := os.Stat(c.redisBin); err != nil {
			if c.redisBin, err = exec.LookPath("redis-server"); err != nil {
				return c, errors.New("redis-server not found at /usr/bin/redis-server or on PATH; pass -redis-server")
			}
		}
	}
	var raw [24]byte
	rand.Read(raw[:])
	c.secret = hex.EncodeToString(raw[:])
	return c, nil
}

func (c config) validate() error {
	switch {
	case c.workers < 2 || c.workers > 16:
		return fmt.Errorf("-workers %d: want 2 to 16", c.workers)
	case c.partitions < c.workers || c.partitions > 1024:
		return fmt.Errorf("-partitions %d: want at least -workers and at most 1024", c.partitions)
	case c.drivers < 1 || c.drivers > 20000:
		return fmt.Errorf("-drivers %d: want 1 to 20000", c.drivers)
	case !(c.rate > 0) || c.rate > 1000:
		return fmt.Errorf("-rate %v: want (0, 1000] per second", c.rate)
	case !(c.speed >= 1) || c.speed > 60:
		return fmt.Errorf("-speed %v: want 1 to 60", c.speed)
	case c.ttl < time.Second || c.rebuildBound <= 0:
		return fmt.Errorf("-ttl %v must be at least 1s and -rebuild-bound %v positive", c.ttl, c.rebuildBound)
	case c.attempts < 1 || c.attempts > 100:
		return fmt.Errorf("-rider-attempts %d: want 1 to 100", c.attempts)
	case c.every < 5*time.Second:
		return fmt.Errorf("-every %v: want at least 5s (a fault needs time to recover)", c.every)
	case c.warm < 5*time.Second || c.drain < 0:
		return fmt.Errorf("-warmup %v must be at least 5s and -drain %v not negative", c.warm, c.drain)
	case c.demandSpan() < 2*c.every:
		return fmt.Errorf("-duration %v leaves %v of demand after warm-up and drain: want at least two fault slots (-every %v)", c.duration, c.demandSpan(), c.every)
	case c.redisDown[1] >= c.ttl || c.brokerDown[1] >= c.ttl:
		return fmt.Errorf("outages (-redis-down %v, -broker-pause %v) must be shorter than -ttl %v", c.redisDown, c.brokerDown, c.ttl)
	}
	return nil
}

// demandSpan is the wall time requests are made in.
func (c config) demandSpan() time.Duration { return c.duration - c.warm - c.drain }

// cityConfig is the simulation of one run: synthetic demand over San
// Francisco's hot spots at c.rate requests per wall second, c.drivers
// online throughout, positions every 2 s of wall time.
func (c config) cityConfig() (sim.CityConfig, error) {
	simDur := func(d time.Duration) time.Duration { return time.Duration(float64(d) * c.speed) }
	span := simDur(c.demandSpan())
	d, err := sim.Synthetic(sim.SanFrancisco(), c.rate*3600/c.speed, span, c.seed)
	if err != nil {
		return sim.CityConfig{}, err
	}
	cc := sim.DefaultCityConfig()
	cc.Demand, cc.From, cc.To = d, 0, span
	cc.WarmUp, cc.Drain = simDur(c.warm), simDur(c.drain)
	cc.Drivers, cc.Speed, cc.Seed = c.drivers, c.speed, c.seed
	cc.Ping = simDur(2 * time.Second)
	cc.RequestAttempts = c.attempts
	return cc, cc.Validate()
}

// parseRange parses "3s" or "2s-5s".
func parseRange(name, s string) ([2]time.Duration, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := time.ParseDuration(strings.TrimSpace(lo))
	b := a
	var err2 error
	if isRange {
		b, err2 = time.ParseDuration(strings.TrimSpace(hi))
	}
	if err1 != nil || err2 != nil || a <= 0 || b < a {
		return [2]time.Duration{}, fmt.Errorf("-%s %q: want a positive duration or lo-hi", name, s)
	}
	return [2]time.Duration{a, b}, nil
}

// run is the whole program: the baseline run, the chaos run, the report.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	raiseFileLimit()
	rep := &report{Command: strings.Join(append([]string{"chaos"}, args...), " "), Started: time.Now().UTC(), Defs: definitions,
		Config: map[string]any{"duration_s": cfg.duration.Seconds(), "every_s": cfg.every.Seconds(), "seed": cfg.seed,
			"workers": cfg.workers, "partitions": cfg.partitions, "drivers": cfg.drivers, "rate_per_s": cfg.rate,
			"speed": cfg.speed, "ttl_s": cfg.ttl.Seconds(), "rebuild_bound_s": cfg.rebuildBound.Seconds(),
			"redis_down_s":   []float64{cfg.redisDown[0].Seconds(), cfg.redisDown[1].Seconds()},
			"broker_pause_s": []float64{cfg.brokerDown[0].Seconds(), cfg.brokerDown[1].Seconds()},
			"warmup_s":       cfg.warm.Seconds(), "drain_s": cfg.drain.Seconds()}}
	if cfg.baseline {
		if rep.Baseline, err = soak(ctx, cfg, "baseline", false, stderr); err != nil {
			return err
		}
	}
	if rep.Chaos, err = soak(ctx, cfg, "chaos", true, stderr); err != nil {
		return err
	}
	rep.finish(cfg.minFaults, cfg.recoveryP99, cfg.minRatio)
	if err := rep.write(cfg.out); err != nil {
		return err
	}
	rep.print(stdout)
	fmt.Fprintf(stdout, "\nwrote %s\n", filepath.Join(cfg.out, "report.json"))
	if rep.InvariantViolation > 0 {
		return fmt.Errorf("%d invariant violations (see %s)", rep.InvariantViolation, filepath.Join(cfg.out, "report.json"))
	}
	if cfg.failOnTargets {
		for _, t := range rep.Targets {
			if !t.Met {
				return fmt.Errorf("target missed: %s: want %s, got %s", t.Name, t.Want, t.Got)
			}
		}
	}
	return nil
}

// raiseFileLimit lifts the soft open-files limit to the hard one: every
// simulated driver and live rider holds a socket.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
