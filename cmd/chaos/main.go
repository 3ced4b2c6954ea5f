// Command chaos is the chaos soak: it starts the engine as separate
// processes on loopback (a devbroker, a redis-server with AOF, two or more
// `hexdispatch -role worker` and one `-role api`), drives the city
// simulation through the api while it kill -9s and restarts workers,
// restarts Redis and pauses the broker, and then checks the invariants
// over the ride-events topic. It writes report.json and prints a table:
// faults injected, time to recover from each, invariants, violations, and
// the match success rate against a fault-free run of the same seed.
//
//	go build -o bin/hexdispatch ./cmd/hexdispatch && go build -o bin/devbroker ./cmd/devbroker
//	go run ./cmd/chaos -duration 10m -out chaos-out
//
// See the "Chaos soak" section of README.md (make chaos).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// quietRedis drops go-redis's own log lines (a dial refused while the
// soak has redis-server down is the point, not news).
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quietRedis{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}
