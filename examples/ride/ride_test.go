package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

const testSecret = "examples-ride-secret-0123456789"

// startEngine builds cmd/hexdispatch of this module and runs it on a free
// loopback port with every role in one process, as `make run` does; it
// returns the base URL once the engine is ready. The engine is stopped
// with SIGTERM at cleanup.
func startEngine(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		t.Fatalf("go env GOMOD: %q, %v", mod, err)
	}
	bin := filepath.Join(t.TempDir(), "hexdispatch")
	build := exec.Command("go", "build", "-o", bin, "./cmd/hexdispatch")
	build.Dir = filepath.Dir(mod)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the engine: %v\n%s", err, b)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-token-secret", testSecret, "-partitions", "4", "-log-level", "warn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The banner names the address; the rest of stdout is drained until
	// the engine exits.
	banner := make(chan string, 1)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if i := strings.Index(sc.Text(), "http://"); i >= 0 {
				select {
				case banner <- strings.TrimSpace(sc.Text()[i:]):
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { <-drained; done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("engine exited with %v\n%s", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("engine did not stop in 20 s after SIGTERM")
		}
	})
	var base string
	select {
	case base = <-banner:
	case <-time.After(30 * time.Second):
		t.Fatalf("no banner from the engine in 30 s\n%s", stderr.String())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine not ready in 30 s\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
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
