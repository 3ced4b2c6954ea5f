package engine

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/internal/clock"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"role", func(c *Config) { c.Role = "boss" }, "role"},
		{"partitions", func(c *Config) { c.Partitions = -1 }, "partitions"},
		{"policy", func(c *Config) { c.Policy = "random" }, "policy"},
		{"api without services", func(c *Config) { c.Role = "api" }, "role api"},
		{"negative ttl", func(c *Config) { c.TTL = -time.Second }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Addr = "127.0.0.1:0"
			tc.mod(&c)
			_, err := New(context.Background(), c, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestEngineServesAndStops starts the whole engine from a zero Config
// (defaults filled in), checks it answers, and that Run returns cleanly
// when its context ends.
func TestEngineServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, Config{Addr: "127.0.0.1:0", TokenSecret: "engine-test-secret-0123456789"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if e.Signer() == nil || e.DevTokens() || len(e.Brokers()) == 0 {
		t.Fatalf("signer %v dev %v brokers %v", e.Signer(), e.DevTokens(), e.Brokers())
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	resp, err := http.Get("http://" + e.Addr().String() + "/livez")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/livez: %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// The embedded Redis expires keys as a real one does: on the wall clock,
// or on the engine's virtual clock as it moves.
func TestEmbeddedRedisExpiresKeys(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(t *testing.T, c Config) *Engine {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		c.Addr, c.TokenSecret = "127.0.0.1:0", "engine-test-secret-0123456789"
		e, err := New(ctx, c, quiet)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		return e
	}
	ctx := context.Background()

	t.Run("wall", func(t *testing.T) {
		e := start(t, Config{})
		if err := e.front.rdb.Set(ctx, "k", "v", time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for e.front.rdb.Exists(ctx, "k").Val() == 1 {
			if time.Now().After(deadline) {
				t.Fatal("a key with a 1 s TTL still exists after 15 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("virtual", func(t *testing.T) {
		v := clock.NewVirtual(time.Now())
		e := start(t, Config{Clock: v})
		if err := e.front.rdb.Set(ctx, "k", "v", 10*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		v.Advance(v.Now().Add(9 * time.Second))
		if e.front.rdb.Exists(ctx, "k").Val() != 1 {
			t.Fatal("expired before its TTL on the virtual clock")
		}
		v.Advance(v.Now().Add(2 * time.Second))
		if e.front.rdb.Exists(ctx, "k").Val() != 0 {
			t.Fatal("not expired after its TTL on the virtual clock")
		}
	})
}
