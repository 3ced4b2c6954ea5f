package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/cli"
	"github.com/hexdispatch/hexdispatch/internal/engine"
)

// config is what the flags (and their HEXD_* environment overrides) set.
type config struct {
	addr            string
	role            string
	shutdownTimeout time.Duration
	logLevel        string
	logFormat       string
	kafka           string        // comma-separated brokers; empty = in-process kfake
	partitions      int           // partitions of the positions topic
	ttl             time.Duration // driver TTL, also the rebuild window
	sessionTimeout  time.Duration // worker consumer-group session timeout
	redis           string        // host:port; empty = in-process miniredis
	tokenSecret     string        // HMAC secret of bearer tokens; empty = dev secret
	offerTimeout    time.Duration
	stallTimeout    time.Duration
	maxTrip         time.Duration
	fanOut          int
	allowedOrigins  string // extra browser origins for the driver WebSocket
	rpcAddr         string // worker query RPC listen address (role worker with -redis)
	policy          string // default matching policy
	batchWindow     time.Duration
	gcPercent       int // the collector's GOGC; 0 leaves the runtime's
}

// defaultGCPercent is the engine's GOGC unless told otherwise: the heap
// may grow to three times what is live before a collection (Go's default
// is twice). A collection's mark phase is where match latency's tail comes
// from, and its work depends on the live heap, not on the goal, so fewer
// of them is a shorter tail for memory (BENCHMARKS.md: at 50,000 drivers
// and 500 rides/s, a cycle every 2.7 s instead of 1.6 s and a heap of
// about 400 MB instead of 270 MB).
const defaultGCPercent = 200

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("hexdispatch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "HTTP listen address (API, /livez, /readyz, /metrics)")
	fs.StringVar(&c.role, "role", "all", "process role: "+strings.Join(engine.Roles, " | "))
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug | info | warn | error")
	fs.StringVar(&c.logFormat, "log-format", "json", "log format on stderr: json | text")
	fs.StringVar(&c.kafka, "kafka", "", "comma-separated Kafka brokers (host:port); empty starts an in-process Kafka (kfake)")
	fs.IntVar(&c.partitions, "partitions", 16, "partitions of the driver-positions topic (every gateway and worker must agree)")
	fs.DurationVar(&c.ttl, "ttl", 30*time.Second, "a driver silent this long disappears; also the window a worker replays to rebuild a partition")
	fs.DurationVar(&c.sessionTimeout, "session-timeout", 3*time.Second, "worker consumer-group session timeout: how long a dead worker's partitions stay unowned (Kafka's group.min.session.timeout.ms, 6s by default, must allow it)")
	fs.StringVar(&c.redis, "redis", "", "Redis address (host:port); empty starts an in-process Redis (miniredis)")
	fs.StringVar(&c.tokenSecret, "token-secret", "", "HMAC secret of bearer tokens (at least 16 bytes); empty uses a dev secret kept in the temp dir and prints dev tokens")
	fs.DurationVar(&c.offerTimeout, "offer-timeout", 10*time.Second, "how long a driver has to answer an offer before the next candidate gets it")
	fs.DurationVar(&c.stallTimeout, "stall-timeout", dispatch.DefaultStallTimeout, "an accepted or arrived ride whose driver takes no next step for this long expires, freeing the driver")
	fs.DurationVar(&c.maxTrip, "max-trip", dispatch.DefaultMaxTrip, "a ride in_trip for this long expires, freeing the driver")
	fs.IntVar(&c.fanOut, "fan-out", 1, "offer each ride to this many of the best free drivers at once; the first to accept wins, the others get offer_cancelled")
	fs.StringVar(&c.rpcAddr, "rpc-addr", "127.0.0.1:0", "role worker with -redis: listen address of the internal query RPC that api processes call (published in Redis; port 0 picks one)")
	fs.StringVar(&c.policy, "policy", "greedy", "default matching policy: greedy | batched (ops switch it per region at /v1/ops/policy)")
	fs.DurationVar(&c.batchWindow, "batch-window", 2*time.Second, "how long the batched policy collects a region's requests before planning them")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", "", "comma-separated extra browser origins (host patterns) allowed to open the driver WebSocket")
	fs.IntVar(&c.gcPercent, "gc-percent", defaultGCPercent, "the garbage collector's GOGC (25 to 1000): a higher value collects less often, for a bigger heap; 0 leaves the runtime's setting. A GOGC environment variable wins over the default, not over the flag")
	if err := cli.ApplyEnv(fs, "HEXD_"); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.gcPercent != 0 && (c.gcPercent < 25 || c.gcPercent > 1000) {
		return c, fmt.Errorf("-gc-percent %d: want 25 to 1000, or 0 to leave GOGC", c.gcPercent)
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "gc-percent" })
	if _, env := os.LookupEnv("HEXD_GC_PERCENT"); !set && !env && os.Getenv("GOGC") != "" {
		c.gcPercent = 0
	}
	if !slices.Contains(engine.Roles, c.role) {
		return c, fmt.Errorf("-role %q: want one of %s", c.role, strings.Join(engine.Roles, ", "))
	}
	if c.partitions < 1 || c.partitions > 1<<16 {
		return c, fmt.Errorf("-partitions %d: want 1..65536", c.partitions)
	}
	if c.sessionTimeout < 100*time.Millisecond {
		return c, fmt.Errorf("-session-timeout %v: want at least 100ms", c.sessionTimeout)
	}
	if c.ttl <= 0 {
		return c, fmt.Errorf("-ttl %v: must be positive", c.ttl)
	}
	if c.role == "api" && (c.redis == "" || c.kafka == "") {
		return c, errors.New("-role api needs -kafka and -redis: it finds the workers through the ownership registry in Redis")
	}
	if c.policy != "greedy" && c.policy != "batched" {
		return c, fmt.Errorf("-policy %q: want greedy or batched", c.policy)
	}
	if c.batchWindow < 10*time.Millisecond || c.batchWindow > time.Minute {
		return c, fmt.Errorf("-batch-window %v: want 10ms to 1m", c.batchWindow)
	}
	if c.offerTimeout < time.Second || c.offerTimeout > 5*time.Minute {
		return c, fmt.Errorf("-offer-timeout %v: want 1s to 5m", c.offerTimeout)
	}
	if c.stallTimeout < time.Minute || c.maxTrip < time.Minute {
		return c, fmt.Errorf("-stall-timeout %v and -max-trip %v: want at least 1m", c.stallTimeout, c.maxTrip)
	}
	if c.fanOut < 1 || c.fanOut > 16 {
		return c, fmt.Errorf("-fan-out %d: want 1 to 16", c.fanOut)
	}
	if c.shutdownTimeout <= 0 {
		return c, fmt.Errorf("-shutdown-timeout %v: must be positive", c.shutdownTimeout)
	}
	return c, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want json or text", format)
}

// run is the whole program; main only wires signals and exit codes, so tests
// start the real thing in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	if cfg.gcPercent != 0 {
		defer debug.SetGCPercent(debug.SetGCPercent(cfg.gcPercent))
	}
	e, err := engine.New(ctx, cfg.engineConfig(), log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "hexdispatch role=%s listening on http://%s\n", cfg.role, e.Addr())
	if e.DevTokens() {
		e.PrintDevTokens(stdout)
	}
	return e.Run(ctx)
}

// engineConfig maps the flags onto the engine's configuration.
func (c config) engineConfig() engine.Config {
	ec := engine.DefaultConfig()
	ec.Addr, ec.Role, ec.ShutdownTimeout = c.addr, c.role, c.shutdownTimeout
	ec.Kafka = splitList(c.kafka)
	ec.Partitions, ec.TTL, ec.SessionTimeout = c.partitions, c.ttl, c.sessionTimeout
	ec.Redis, ec.TokenSecret, ec.OfferTimeout = c.redis, c.tokenSecret, c.offerTimeout
	ec.StallTimeout, ec.MaxTrip, ec.FanOut = c.stallTimeout, c.maxTrip, c.fanOut
	ec.AllowedOrigins = splitList(c.allowedOrigins)
	ec.RPCAddr, ec.Policy, ec.BatchWindow = c.rpcAddr, c.policy, c.batchWindow
	return ec
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
