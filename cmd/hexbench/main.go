// Command hexbench runs hexdispatch's benchmark workloads and prints one
// JSON line per result on stdout (progress goes to stderr):
//
//	go run ./cmd/hexbench -workloads index-upsert,index-knn,index-memory \
//	    -drivers 10000,100000,1000000 -duration 3s
//
// Each workload lives in its own file and registers itself; see workload.go.
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
		fmt.Fprintln(os.Stderr, "hexbench:", err)
		os.Exit(1)
	}
}
