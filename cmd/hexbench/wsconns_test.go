package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The split form of ws-conns: two api processes behind a devbroker, a
// redis-server and a worker, the clients in a child process. The offers
// reach the clients: each driver is in its api process's band and each
// ride is requested where its pickup's drivers are.
func TestWSConnsSplitRoles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the engine, a devbroker and a redis-server")
	}
	if _, err := exec.LookPath("redis-server"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("redis-server not on PATH")
	}
	var out bytes.Buffer
	args := []string{"-workloads", "ws-conns", "-drivers", "200", "-api-procs", "2", "-duration", "1s"}
	if err := run(context.Background(), args, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("result %q: %v", out.String(), err)
	}
	if r.Drivers != 200 || r.BytesPerDriver <= 0 || !strings.Contains(r.Note, "2 api processes") {
		t.Fatalf("result %+v", r)
	}
	// Offers to drivers on another api process would not be sent at all;
	// errors (sent, not received in time) are for a loaded machine to make.
	if r.Ops == 0 || r.Errors >= r.Ops || r.P99us <= 0 {
		t.Fatalf("offers: %d received, %d not, p99 %v µs; %s", r.Ops, r.Errors, r.P99us, r.Note)
	}
}
