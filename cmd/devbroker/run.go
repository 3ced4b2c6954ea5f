package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/hexdispatch/hexdispatch/internal/cli"
	"github.com/hexdispatch/hexdispatch/positions"
)

type config struct {
	ports         []int
	partitions    int
	dlqPartitions int
	dataDir       string
	minSession    time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var ports string
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&ports, "ports", "9092", "comma-separated loopback ports, one broker each; 0 picks a free port")
	fs.IntVar(&c.partitions, "partitions", 16, "partitions of the "+positions.DefaultTopic+" topic")
	fs.IntVar(&c.dlqPartitions, "dlq-partitions", 1, "partitions of the "+positions.DefaultDLQTopic+" topic")
	fs.StringVar(&c.dataDir, "data-dir", "", "directory to persist topics and groups in (empty: memory only); state is reloaded from it on start")
	fs.DurationVar(&c.minSession, "min-session-timeout", 500*time.Millisecond, "smallest consumer-group session timeout the broker accepts (Kafka's default is 6s; workers fail over faster with less)")
	if err := cli.ApplyEnv(fs, "HEXD_DEVBROKER_"); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(ports, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p < 0 || p > 65535 {
			return c, fmt.Errorf("-ports %q: %q is not a port", ports, s)
		}
		c.ports = append(c.ports, p)
	}
	switch {
	case c.partitions < 1 || c.partitions > 1<<16:
		return c, fmt.Errorf("-partitions %d: want 1..65536", c.partitions)
	case c.dlqPartitions < 1 || c.dlqPartitions > 1<<16:
		return c, fmt.Errorf("-dlq-partitions %d: want 1..65536", c.dlqPartitions)
	case c.minSession <= 0:
		return c, fmt.Errorf("-min-session-timeout %v: must be positive", c.minSession)
	}
	return c, nil
}

// run starts the cluster, prints its addresses as the first stdout line
// ("devbroker listening on host:port,..."), and stops it when ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	opts := []kfake.Opt{
		kfake.Ports(cfg.ports...),
		kfake.SeedTopics(int32(cfg.partitions), positions.DefaultTopic),
		kfake.SeedTopics(int32(cfg.dlqPartitions), positions.DefaultDLQTopic),
		kfake.DefaultNumPartitions(cfg.partitions),
		kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(cfg.minSession),
	}
	if cfg.dataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	fmt.Fprintf(stdout, "devbroker listening on %s\n", strings.Join(c.ListenAddrs(), ","))
	<-ctx.Done()
	// Close persists the state when -data-dir is set.
	c.Close()
	fmt.Fprintln(stderr, "devbroker stopped")
	return nil
}
