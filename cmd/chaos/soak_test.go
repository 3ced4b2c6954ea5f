package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/engineproc"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{})
	os.Exit(m.Run())
}

// TestSoak runs the real program: a fault-free run and a chaos run of 90 s
// each against the real binaries (built here), with a fault every 10 s.
// It takes about three minutes, so it runs only with HEXD_TEST_LONG=1;
// the default suite keeps the schedule, recovery and report tests above.
func TestSoak(t *testing.T) {
	if os.Getenv("HEXD_TEST_LONG") != "1" {
		t.Skip("HEXD_TEST_LONG=1 runs the 2 x 90 s soak")
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err != nil {
		if _, err := exec.LookPath("redis-server"); err != nil {
			t.Fatal("redis-server not found")
		}
	}
	bin := t.TempDir()
	for _, pkg := range []string{"hexdispatch", "devbroker"} {
		if _, err := engineproc.BuildTo(context.Background(), bin, pkg); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	err := run(ctx, []string{"-duration", "90s", "-every", "10s", "-drivers", "120", "-rate", "0.5",
		"-bin-dir", bin, "-out", out, "-progress=false"}, &stdout, &stderr)
	t.Logf("stdout:\n%s", stdout.String())
	if err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Chaos.Faults) < 3 {
		t.Errorf("%d faults injected, want at least 3", len(r.Chaos.Faults))
	}
	for _, f := range r.Chaos.Faults {
		if f.RecoveryS < 0 || (f.Kind == string(workerKill) && f.RejoinS < 0) {
			t.Errorf("fault %d %s did not recover: %+v", f.N, f.Kind, f)
		}
	}
	if r.InvariantViolation != 0 || !r.Chaos.Invariants.Checked || r.Chaos.Invariants.Rides == 0 {
		t.Errorf("invariants: %d violations, %+v", r.InvariantViolation, r.Chaos.Invariants)
	}
	if r.MatchBaseline.Requests == 0 || r.MatchChaos.Requests == 0 {
		t.Errorf("no requests: baseline %+v, chaos %+v", r.MatchBaseline, r.MatchChaos)
	}
	// Every child process is gone: nothing answers on the api any more.
	if r.Chaos.Summary.Target != "" {
		if resp, err := healthClient.Get(r.Chaos.Summary.Target + "/livez"); err == nil {
			resp.Body.Close()
			t.Errorf("the api at %s still answers after run returned", r.Chaos.Summary.Target)
		}
	}
}
