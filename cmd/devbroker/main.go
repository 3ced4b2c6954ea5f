// Command devbroker runs a standalone in-memory Kafka cluster (kfake) on
// loopback ports for local multi-process runs of hexdispatch:
//
//	go run ./cmd/devbroker -ports 9092 -partitions 16
//	hexdispatch -role worker -kafka 127.0.0.1:9092 -addr 127.0.0.1:8081
//
// Any Kafka client can reach it. It is for development and tests only: no
// replication, no security.
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
		fmt.Fprintln(os.Stderr, "devbroker:", err)
		os.Exit(1)
	}
}
