// Command citysim replays rider demand against the hexdispatch engine with
// simulated drivers, through the engine's public API, and reports KPIs.
//
//	go run ./cmd/citysim -demand ../shared/data/demand_nyc_uber_2014-04-30_peak18h.csv.gz \
//	    -drivers 2500 -speed 20 -seed 1 -out citysim-out
//
// With no -target it starts the real engine in-process (embedded Kafka and
// Redis) with its timeouts scaled by -speed. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "citysim:", err)
		os.Exit(1)
	}
}
