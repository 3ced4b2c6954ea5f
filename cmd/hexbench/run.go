package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

type config struct {
	workloads   []string
	drivers     []int
	duration    time.Duration
	seed        uint64
	cpuProfile  string
	memProfile  string
	peer        string
	redisPath   string
	rate        float64
	wsDrivers   int
	apiProcs    int
	nice        int
	clientProcs int
	ratios      string
	refresh     time.Duration
	goBench     string
	timeline    string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("hexbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	wl := fs.String("workloads", "index-upsert,index-knn,index-memory", "comma-separated workloads: "+workloadNames())
	dr := fs.String("drivers", "10000,100000", "comma-separated driver counts for sized workloads")
	fs.DurationVar(&c.duration, "duration", 3*time.Second, "timed loop length per workload and size")
	fs.Uint64Var(&c.seed, "seed", 1, "random seed (fleets, queries, moves)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.StringVar(&c.memProfile, "memprofile", "", "write a heap profile at the end to this file")
	fs.StringVar(&c.peer, "peer", "", "also run each workload against a peer and print ratios: redis (Redis GEO on a redis-server started on loopback)")
	fs.StringVar(&c.redisPath, "redis-server", "redis-server", "redis-server binary for -peer redis")
	fs.Float64Var(&c.rate, "rate", 500, "match-e2e: ride requests per second, open loop")
	fs.IntVar(&c.wsDrivers, "ws-drivers", 0, "match-e2e: drivers that hold a WebSocket (the rest report over HTTP); 0 = as many as the open-file limit allows")
	fs.IntVar(&c.apiProcs, "api-procs", 0, "ws-conns: api processes to spread the connections over (split roles with a worker, devbroker and redis-server); 0 = as few as the open-file limit allows")
	fs.IntVar(&c.nice, "nice", 0, "match-e2e: once the engine has started, lower hexbench's own CPU priority by this much (0-19; the engine and redis-server keep theirs), so that on a machine it shares with them the load generator gives way; its own delays still count in the latencies it reports")
	fs.IntVar(&c.clientProcs, "client-procs", 1, "match-e2e: GOMAXPROCS of hexbench's own client side while it runs (the engine it starts keeps every core): its goroutines mostly wait on sockets, and one P spares the machine the wake-ups across a second; 0 = leave it")
	fs.DurationVar(&c.refresh, "refresh", 10*time.Second, "match-e2e: each driver reports its position again this often (the engine's TTL is three of these)")
	fs.StringVar(&c.timeline, "timeline", "", "match-e2e: write each offered ride's timeline to this file (CSV: system, when the request was sent in Unix microseconds, request to offer and request to the engine's send in microseconds, the last 0 when the engine's send time is not known), to see a tail's spread over the run")
	fs.StringVar(&c.goBench, "gobench", "", "convert `go test -bench` output (a file; - for stdin) into result lines and exit")
	fs.StringVar(&c.ratios, "ratios", "", "print the ratio table of a results file (JSON lines of earlier runs; - for stdin) and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, name := range strings.Split(*wl, ",") {
		name = strings.TrimSpace(name)
		if _, ok := workloads[name]; !ok {
			return c, fmt.Errorf("-workloads: unknown workload %q (have %s)", name, workloadNames())
		}
		c.workloads = append(c.workloads, name)
	}
	for _, s := range strings.Split(*dr, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 16_000_000 {
			return c, fmt.Errorf("-drivers: %q is not a count in [1, 16000000]", s)
		}
		c.drivers = append(c.drivers, n)
	}
	if c.peer != "" && c.peer != "redis" {
		return c, fmt.Errorf("-peer %q: the only peer is redis", c.peer)
	}
	if !(c.rate > 0 && c.rate <= 100_000) {
		return c, fmt.Errorf("-rate %v: want (0, 100000] requests/s", c.rate)
	}
	if c.refresh < time.Second || c.refresh > 10*time.Minute {
		return c, fmt.Errorf("-refresh %v: want 1s to 10m", c.refresh)
	}
	if c.apiProcs < 0 || c.apiProcs > 64 {
		return c, fmt.Errorf("-api-procs %d: want 0 to 64", c.apiProcs)
	}
	if c.clientProcs < 0 || c.clientProcs > 256 {
		return c, fmt.Errorf("-client-procs %d: want 0 to 256", c.clientProcs)
	}
	if c.nice < 0 || c.nice > 19 {
		return c, fmt.Errorf("-nice %d: want 0 to 19", c.nice)
	}
	if c.wsDrivers < 0 {
		return c, fmt.Errorf("-ws-drivers %d: want >= 0", c.wsDrivers)
	}
	if c.duration <= 0 || c.duration > time.Hour {
		return c, fmt.Errorf("-duration %v: want (0, 1h]", c.duration)
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.goBench != "" {
		return goBenchResults(cfg.goBench, os.Stdin, stdout)
	}
	if cfg.ratios != "" {
		return ratiosFromFile(cfg.ratios, os.Stdin, stdout)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var timeline *Timeline
	if cfg.timeline != "" {
		if timeline, err = createTimeline(cfg.timeline); err != nil {
			return err
		}
		defer func() {
			if cerr := timeline.Close(); err == nil {
				err = cerr
			}
		}()
	}
	var peer *redisPeer
	if cfg.peer == "redis" {
		peer, err = startRedis(ctx, cfg.redisPath, stderr)
		if err != nil {
			return err
		}
		defer peer.Close()
	}
	var all []Result
	for _, name := range cfg.workloads {
		w := workloads[name]
		sizes := []int{0}
		if w.Sized {
			sizes = cfg.drivers
		}
		for _, n := range sizes {
			if err := ctx.Err(); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "hexbench: %s drivers=%d ...\n", name, n)
			env := Env{Drivers: n, Duration: cfg.duration, Seed: cfg.seed, Progress: stderr, Rate: cfg.rate, WSDrivers: cfg.wsDrivers, Refresh: cfg.refresh, APIProcs: cfg.apiProcs, Nice: cfg.nice, ClientProcs: cfg.clientProcs, Timeline: timeline}
			results, err := w.Run(ctx, env)
			if err != nil {
				return fmt.Errorf("%s (drivers=%d): %w", name, n, err)
			}
			if peer != nil && w.RedisPeer != nil {
				fmt.Fprintf(stderr, "hexbench: %s drivers=%d against redis-geo ...\n", name, n)
				pr, err := w.RedisPeer(ctx, env, peer)
				if err != nil {
					return fmt.Errorf("%s (drivers=%d) on redis: %w", name, n, err)
				}
				results = append(results, pr...)
			}
			for _, r := range results {
				if r.GOMAXPROCS == 0 { // a workload that changes it says what it ran at
					r.GOMAXPROCS = runtime.GOMAXPROCS(0)
				}
				if err := writeResult(stdout, r); err != nil {
					return err
				}
				all = append(all, r)
			}
			runtime.GC()
		}
	}
	if peer != nil {
		printRatios(stderr, all)
	}
	if cfg.memProfile != "" {
		f, err := os.Create(cfg.memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		runtime.GC()
		return pprof.WriteHeapProfile(f)
	}
	return nil
}
