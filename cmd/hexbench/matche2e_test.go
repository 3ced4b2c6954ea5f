package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// TestMatchE2EWorkload runs match-e2e at a toy size against a real engine
// process so that it keeps working; the figures mean nothing here.
func TestMatchE2EWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	timeline := filepath.Join(t.TempDir(), "timeline.csv")
	err := run(ctx, []string{"-workloads", "match-e2e", "-drivers", "300", "-ws-drivers", "100",
		"-rate", "20", "-duration", "4s", "-refresh", "2s", "-timeline", timeline}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("result %q: %v", out.String(), err)
	}
	if r.Workload != "match-e2e" || r.Drivers != 300 || r.TargetPerS != 20 || r.GOMAXPROCS != 1 {
		t.Fatalf("result %+v", r)
	}
	// Every created ride is offered to a driver on a WebSocket: at least
	// one made it, with its latency measured at the driver.
	if r.Ops == 0 || r.OpsPerS <= 0 || r.OffersPerS <= 0 || r.P50us <= 0 || r.P99us < r.P50us {
		t.Fatalf("result %+v: want offered rides with latencies", r)
	}
	if !strings.Contains(r.Note, "engine ") {
		t.Fatalf("note %q does not name the engine's revision", r.Note)
	}
	// The drivers take their trips to the end (three steps a second
	// apart), so the run writes whole ride lifecycles.
	if !regexp.MustCompile(`[1-9][0-9]* trips completed`).MatchString(r.Note) || !strings.Contains(r.Note, " 0 driver frames") {
		t.Fatalf("note %q: want completed trips and no error frames", r.Note)
	}
	if !regexp.MustCompile(`engine phases of the first offers, p99 at most: start [0-9.e+-]+ ms, find [0-9.e+-]+ ms, record [0-9.e+-]+ ms, send [0-9.e+-]+ ms`).MatchString(r.Note) {
		t.Fatalf("note %q has no phase breakdown", r.Note)
	}
	checkTimeline(t, timeline, r)
}

// checkTimeline reads a -timeline file of one match-e2e result r: a line
// per offered ride, oldest request first, within the run's duration, the
// engine's send before the driver's read.
func checkTimeline(t *testing.T, path string, r Result) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if lines[0] != TimelineHeader || int64(len(lines)-1) != r.Ops {
		t.Fatalf("timeline: header %q and %d rides, want %q and %d", lines[0], len(lines)-1, TimelineHeader, r.Ops)
	}
	var first, last int64
	for i, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) != 4 || f[0] != r.System {
			t.Fatalf("timeline line %q: want 4 fields of system %s", l, r.System)
		}
		var v [3]int64
		for j := range v {
			if v[j], err = strconv.ParseInt(f[j+1], 10, 64); err != nil {
				t.Fatalf("timeline line %q: %v", l, err)
			}
		}
		if i == 0 {
			first = v[0]
		}
		if v[0] < last || v[1] <= 0 || v[2] < 0 || v[2] > v[1] {
			t.Fatalf("timeline line %q: want requests in order, and 0 <= request to send <= request to offer", l)
		}
		last = v[0]
	}
	if span := time.Duration(last-first) * time.Microsecond; span > time.Duration(r.Seconds*float64(time.Second))+time.Second {
		t.Fatalf("timeline spans %v, more than the %.1f s run", span, r.Seconds)
	}
}

// TestMatchE2EOnRedisServer: with -peer redis, match-e2e runs a second
// time with the engine on the peer's redis-server and counts its Redis
// commands per ride.
func TestMatchE2EOnRedisServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"-peer", "redis", "-workloads", "match-e2e", "-drivers", "300", "-ws-drivers", "100",
		"-rate", "20", "-duration", "1s", "-refresh", "2s"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var systems []string
	for line := range strings.Lines(out.String()) {
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("result %q: %v", line, err)
		}
		systems = append(systems, r.System)
		if r.Ops == 0 || r.P50us <= 0 {
			t.Fatalf("%s: result %+v: want offered rides with latencies", r.System, r)
		}
		if r.System == e2eRedisSystem && !strings.Contains(r.Note, "commands per created ride") {
			t.Fatalf("note %q does not count the Redis commands", r.Note)
		}
	}
	if len(systems) != 2 || systems[0] != "hexdispatch" || systems[1] != e2eRedisSystem {
		t.Fatalf("systems %v, want hexdispatch then %s", systems, e2eRedisSystem)
	}
}

// TestPhaseNote reads each phase's p99 from the difference of two
// cumulative readings, as the upper bound of the bucket that reaches it.
func TestPhaseNote(t *testing.T) {
	bucket := func(le float64, cum uint64) *dto.Bucket {
		return &dto.Bucket{UpperBound: proto.Float64(le), CumulativeCount: proto.Uint64(cum)}
	}
	reading := func(c1, c2, c3 uint64) phaseBuckets {
		b := phaseBuckets{}
		for p := range dispatch.NumPhases {
			b[p.String()] = []*dto.Bucket{bucket(0.001, c1), bucket(0.002, c2), bucket(math.Inf(1), c3)}
		}
		return b
	}
	// 1,000 observations after the first reading: 980 under 1 ms, 15 in
	// (1, 2] ms, 5 above: p99 is in the second bucket.
	before, after := reading(500, 500, 500), reading(1480, 1495, 1500)
	if got, want := phaseNote(before, after), "engine phases of the first offers, p99 at most: start 2 ms, find 2 ms, record 2 ms, send 2 ms"; got != want {
		t.Errorf("phaseNote = %q, want %q", got, want)
	}
	if got := phaseNote(before, before); !strings.Contains(got, "no first offers") {
		t.Errorf("no observations: %q", got)
	}
	delete(after, "send")
	if got := phaseNote(before, after); got != "engine phases unknown" {
		t.Errorf("phase missing: %q", got)
	}
}
