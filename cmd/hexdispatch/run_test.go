package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of run's logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRun starts run() on a free loopback port and returns its base URL.
// The server is stopped and waited for when the test ends.
func startRun(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		err := run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), pw, stderr)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("run did not stop after cancel; stderr:\n%s", stderr)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading banner: %v; stderr:\n%s", err, stderr)
	}
	go io.Copy(io.Discard, pr)
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("banner %q has no URL", line)
	}
	return strings.TrimSpace(line[i:])
}

func TestRunServesLivezAndMetrics(t *testing.T) {
	base := startRun(t)
	for path, want := range map[string]string{"/livez": "ok", "/metrics": "go_goroutines"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s = %d %q, want 200 containing %q", path, resp.StatusCode, body, want)
		}
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-role", "boss"},
		{"-shutdown-timeout", "0s"},
		{"-log-level", "loud"},
		{"-log-format", "xml"},
		{"-policy", "fastest"},
		{"-batch-window", "2h"},
		{"-stall-timeout", "10s"},
		{"-max-trip", "0s"},
		{"-fan-out", "0"},
		{"-gc-percent", "10"},
		{"-gc-percent", "5000"},
		{"-role", "api"}, // needs -kafka and -redis
		{"extra"},
		{"-nosuchflag"},
	} {
		var stderr bytes.Buffer
		if err := run(context.Background(), args, io.Discard, &stderr); err == nil {
			t.Errorf("run(%v) = nil, want error", args)
		}
	}
}

// The collector runs at -gc-percent, 200 by default; a GOGC in the
// environment wins over the default but not over the flag or its
// HEXD_ variable, and 0 leaves the runtime's setting.
func TestGCPercent(t *testing.T) {
	for _, tc := range []struct {
		gogc, env string
		args      []string
		want      int
	}{
		{want: defaultGCPercent},
		{gogc: "150", want: 0},
		{gogc: "150", args: []string{"-gc-percent", "300"}, want: 300},
		{gogc: "150", env: "400", want: 400},
		{args: []string{"-gc-percent", "0"}, want: 0},
	} {
		for k, v := range map[string]string{"GOGC": tc.gogc, "HEXD_GC_PERCENT": tc.env} {
			t.Setenv(k, v) // restored at the end
			if v == "" {
				os.Unsetenv(k)
			}
		}
		c, err := parseFlags(tc.args, io.Discard)
		if err != nil || c.gcPercent != tc.want {
			t.Errorf("GOGC=%q HEXD_GC_PERCENT=%q %v: gc percent %d, %v; want %d", tc.gogc, tc.env, tc.args, c.gcPercent, err, tc.want)
		}
	}
}

func TestEnvOverridesDefault(t *testing.T) {
	t.Setenv("HEXD_ROLE", "worker")
	c, err := parseFlags(nil, io.Discard)
	if err != nil || c.role != "worker" {
		t.Fatalf("role = %q, %v", c.role, err)
	}
	c, err = parseFlags([]string{"-role", "all"}, io.Discard)
	if err != nil || c.role != "all" {
		t.Fatalf("flag should win over env: role = %q, %v", c.role, err)
	}
	t.Setenv("HEXD_SHUTDOWN_TIMEOUT", "soon")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "HEXD_SHUTDOWN_TIMEOUT") {
		t.Fatalf("bad env err = %v", err)
	}
}
