// Command ride takes one ride through a running hexdispatch, from request
// to drop-off, playing both apps over the public API: a driver comes
// online on the driver WebSocket and streams positions, a rider requests a
// ride and watches it on the ride WebSocket, and the driver accepts the
// offer, arrives, starts and completes the trip. It prints each step.
//
//	go run ./examples/ride -base http://127.0.0.1:8080 -driver-token ... -rider-token ...
//
// With `make run` the printed dev tokens of driver d1 and rider u1 do.
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
		fmt.Fprintln(os.Stderr, "ride:", err)
		os.Exit(1)
	}
}
