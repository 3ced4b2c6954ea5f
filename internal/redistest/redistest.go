// Package redistest starts a real redis-server for tests: on a free
// loopback port, in a temporary directory, with persistence off. Tests of
// code that talks to Redis use it instead of mocking the client.
//
// When the binary is missing the test fails under CI=true and is skipped
// otherwise, so a laptop without Redis still runs the rest of the suite.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/loopback"
)

// Binary is where redis-server is looked for first; PATH is searched next.
const Binary = "/usr/bin/redis-server"

// startTimeout bounds how long Start waits for the first PING answer.
const startTimeout = 10 * time.Second

// Server is one redis-server process bound to a fixed loopback address.
// Stop and Restart keep the address and directory, so clients configured
// with Addr reconnect after a restart; data survives a restart only with
// Options.AppendOnly (otherwise it is a Redis that lost its memory).
//
// Concurrency: the methods may be called from any goroutine; mu serialises
// them.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	opts Options
	port int
	// Addr is host:port of the server.
	Addr string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Options change how the server runs.
type Options struct {
	// AppendOnly turns on the append-only file with an fsync per write,
	// so that data survives Stop and Restart, as a production Redis
	// holding leases should be run.
	AppendOnly bool
}

// Start starts a redis-server without persistence for t and registers its
// shutdown with t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := findBinary()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redistest: redis-server not found at %s or on PATH (CI=true: install redis-server)", Binary)
		}
		t.Skipf("redistest: redis-server not found at %s or on PATH; skipping", Binary)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), opts: opts}
	// A port picked by listening on :0 can be taken by someone else before
	// redis-server binds it; try a few.
	var err error
	for range 5 {
		s.port, err = loopback.FreePort()
		if err != nil {
			continue
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stop()
	})
	return s
}

// Addr starts a redis-server for t and returns its address; the server is
// stopped by t.Cleanup.
func Addr(t testing.TB) string {
	t.Helper()
	return Start(t).Addr
}

// Client returns a go-redis client for s, closed by t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// Stop kills the server and waits for it to exit. Stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
}

// Restart starts the server again on the same address, stopping it first
// if it is running (so a fault test can Stop, observe, then Restart). It
// fails the test if the server cannot be started.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
	// The old process has exited, but its port can linger briefly; retry
	// until the deadline.
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: restart on %s: %v", s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond) // waiting for the OS, not for our own goroutines
	}
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// start launches the process and waits for PING. s.mu is held or s is not
// shared yet.
func (s *Server) start() error {
	aof := []string{"--appendonly", "no"}
	if s.opts.AppendOnly {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--dir", s.dir,
		"--protected-mode", "yes", "--loglevel", "warning",
	}, aof...)
	cmd := exec.Command(s.bin, args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("redis-server on %s exited before answering PING: %w", s.Addr, err)
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("no PING answer from %s in %v: %w", s.Addr, startTimeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling an outside process with a deadline
	}
}

// stop kills the process and waits for it. s.mu is held.
func (s *Server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func findBinary() string {
	if _, err := os.Stat(Binary); err == nil {
		return Binary
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	return ""
}
