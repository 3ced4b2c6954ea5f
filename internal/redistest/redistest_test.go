package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/internal/redistest"
)

func TestStartStopRestart(t *testing.T) {
	s := redistest.Start(t)
	c := s.Client(t)
	ctx := context.Background()

	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v", got, err)
	}

	s.Stop()
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(short).Err(); err == nil {
		t.Fatal("PING answered while stopped")
	}

	s.Restart()
	if !s.Running() {
		t.Fatal("not Running after Restart")
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after restart on the same address: %v", err)
	}
	// No persistence: a restart loses the data, like a Redis that lost
	// its memory.
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after restart = %d, %v; want 0", n, err)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := redistest.Start(t), redistest.Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("both servers on %s", a.Addr)
	}
	ctx := context.Background()
	if err := a.Client(t).Set(ctx, "only-a", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Client(t).Exists(ctx, "only-a").Result(); err != nil || n != 0 {
		t.Fatalf("key leaked to the other server: %d, %v", n, err)
	}
}

func TestRestartWhileRunning(t *testing.T) {
	s := redistest.Start(t)
	s.Restart()
	if err := s.Client(t).Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestAppendOnlySurvivesRestart(t *testing.T) {
	s := redistest.StartWith(t, redistest.Options{AppendOnly: true})
	c := s.Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after restart = %q, %v; want the persisted value", got, err)
	}
}
