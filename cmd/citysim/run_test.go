package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hexdispatch/hexdispatch/sim"
)

const peakFile = "../../sim/testdata/demand_nyc_uber_2014-04-30_peak18h.csv.gz"

// TestNYCPeakSlice replays five minutes of the NYC evening peak at 10x with
// 300 drivers against the in-process engine: every invariant holds and
// more than 90% of the rides are matched. It runs the citysim binary built
// without the race detector: the simulation runs on the wall clock, and a
// race-instrumented engine on a shared 2-core machine would be measuring
// the instrumentation. The race detector covers the same code in the
// engine's and the sim package's own tests.
func TestNYCPeakSlice(t *testing.T) {
	out := t.TempDir()
	bin := filepath.Join(t.TempDir(), "citysim")
	build := exec.Command("go", "build", "-o", bin, ".")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	cmd := exec.Command(bin, "-demand", peakFile, "-from", "18:00", "-to", "18:05",
		"-drivers", "300", "-speed", "10", "-seed", "7", "-drain", "1m", "-warmup", "30s", "-out", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("citysim: %v\n%s\n%s", err, stdout.String(), tail(stderr.String()))
	}
	t.Log(stdout.String())
	b, err := os.ReadFile(filepath.Join(out, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s sim.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Requests < 200 || s.Created != s.Requests {
		t.Errorf("requests %d created %d (rejected %v), want every one of the slice's ~220 created", s.Requests, s.Created, s.Rejected)
	}
	if s.MatchRate <= 0.9 {
		t.Errorf("match rate %.3f, want > 0.9", s.MatchRate)
	}
	inv := s.Invariants
	if !inv.Checked || !inv.OK() || inv.Rides < s.Created {
		t.Errorf("invariants: %+v", inv)
	}
	if s.OffersToBusy != 0 {
		t.Errorf("%d offers reached drivers already busy", s.OffersToBusy)
	}
	if s.WaitUntilPickupS.N == 0 || s.PickupETAS.Mean <= 0 || s.DriverUtilisation <= 0 {
		t.Errorf("KPIs missing: %+v %+v %v", s.WaitUntilPickupS, s.PickupETAS, s.DriverUtilisation)
	}
	html, err := os.ReadFile(filepath.Join(out, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(html), "data:image/png;base64,"); n < 4 {
		t.Errorf("report has %d plots, want the wait histogram, match rate and heat maps", n)
	}
}

// TestNYCPeakSliceIsDeterministic replays the same five minutes twice in
// deterministic mode with the same seed: the summaries agree on every
// figure the wall clock does not decide, and the invariants hold.
func TestNYCPeakSliceIsDeterministic(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "citysim")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	var got [2][]byte
	for i := range got {
		out := t.TempDir()
		cmd := exec.Command(bin, "-demand", peakFile, "-from", "18:00", "-to", "18:05", "-drivers", "300",
			"-speed", "1000", "-seed", "7", "-drain", "1m", "-warmup", "30s", "-deterministic", "-out", out)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("citysim: %v\n%s\n%s", err, stdout.String(), tail(stderr.String()))
		}
		b, err := os.ReadFile(filepath.Join(out, "summary.json"))
		if err != nil {
			t.Fatal(err)
		}
		var s sim.Summary
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		if !s.Deterministic || s.Created < 200 || s.MatchRate <= 0.9 || !s.Invariants.Checked || !s.Invariants.OK() {
			t.Fatalf("run %d: deterministic %v, created %d, match rate %.3f, invariants %+v", i, s.Deterministic, s.Created, s.MatchRate, s.Invariants)
		}
		got[i], _ = json.Marshal(s.Comparable())
		t.Logf("run %d: %s", i, strings.TrimSpace(stdout.String()))
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Fatalf("same seed, different summaries:\n%s\n%s", got[0], got[1])
	}
}

func TestMalformedRowsAreReportedWithLineNumbers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "demand.csv.gz")
	f, _ := os.Create(path)
	zw := gzip.NewWriter(f)
	io.WriteString(zw, "t_s,lat,lng\n64800,40.75,-73.98\n64810,95.0,-73.98\nx,40.7,-73.9\n64820,40.76,-73.97\n")
	zw.Close()
	f.Close()
	var stdout, stderr bytes.Buffer
	// A bad flag after loading stops the run before any engine starts.
	err := run(context.Background(), []string{"-demand", path, "-drivers", "0", "-out", dir}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "drivers") {
		t.Fatalf("run: %v, want the bad -drivers named", err)
	}
	for _, want := range []string{"4 rows, 2 kept, 2 skipped", "line 3:", "lat", "line 4:"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{}, // no demand
		{"-demand", peakFile, "-synthetic", "100"}, // both
		{"-demand", peakFile, "-target", "ftp://x"},
		{"-demand", peakFile, "-target", "http://127.0.0.1:1"}, // no secret
		{"-demand", peakFile, "-policy", "random"},
		{"-demand", peakFile, "-from", "18:00", "-to", "17:00"},
		{"-demand", peakFile, "-from", "6pm"},
		{"-demand", peakFile, "-accept", "1.5"},
		{"-demand", peakFile, "-speed", "0"},
		{"-demand", peakFile, "-deterministic", "-target", "http://127.0.0.1:1", "-token-secret", "0123456789abcdef0123456789abcdef"},
		{"-demand", filepath.Join(t.TempDir(), "missing.csv")},
	} {
		t.Setenv("HEXD_TOKEN_SECRET", "")
		if err := run(context.Background(), append(args, "-out", t.TempDir()), io.Discard, io.Discard); err == nil {
			t.Errorf("run(%q) = nil, want an error", args)
		}
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}
