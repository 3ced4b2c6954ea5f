package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/engineproc"
)

const testSecret = "examples-ride-secret-0123456789"

// startEngine builds cmd/hexdispatch of this module and runs it on a free
// loopback port with every role in one process, as `make run` does; it
// returns the base URL once the engine is ready. The engine is stopped
// with SIGTERM at cleanup and must exit cleanly.
func startEngine(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	bin, cleanup, err := engineproc.Build(ctx, "hexdispatch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	var stderr bytes.Buffer
	p, err := engineproc.Start(ctx, bin, &stderr, "-addr", "127.0.0.1:0", "-token-secret", testSecret, "-partitions", "4", "-log-level", "warn")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("engine exited with %v\n%s", err, stderr.String())
		}
	})
	return p.Base
}

func mint(t *testing.T, sub string, role dispatch.Role) string {
	t.Helper()
	s, err := dispatch.NewSigner([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestRideAgainstTheEngine runs the example client against a real engine
// process: one ride from request to completion, every step printed.
func TestRideAgainstTheEngine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the engine")
	}
	base := startEngine(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, []string{"-base", base, "-driver-token", mint(t, "d1", dispatch.RoleDriver),
		"-rider-token", mint(t, "u1", dispatch.RoleRider), "-every", "100ms", "-timeout", "90s"}, &out, io.Discard)
	t.Logf("client output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	// Every step, in order.
	rest := out.String()
	for _, want := range []string{"driver: online", "rider:  requested ride", "driver: offered ride", "driver: accepts",
		"rider:  sees the ride accepted with driver d1", "driver: sends arrived", "rider:  sees the ride arrived",
		"driver: sends start", "rider:  sees the ride in_trip", "driver: sends complete", "rider:  sees the ride completed",
		"completed"} {
		i := strings.Index(rest, want)
		if i < 0 {
			t.Fatalf("output lacks %q after the previous steps", want)
		}
		rest = rest[i+len(want):]
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{},                     // no tokens
		{"-driver-token", "a"}, // no rider token
		{"-driver-token", "a", "-rider-token", "b", "-pickup", "91,0"},
		{"-driver-token", "a", "-rider-token", "b", "-dropoff", "north"},
		{"-driver-token", "a", "-rider-token", "b", "-base", "ftp://x"},
		{"-driver-token", "a", "-rider-token", "b", "extra"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
}
