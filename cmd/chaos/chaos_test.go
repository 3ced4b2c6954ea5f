package main

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/sim"
)

func TestPlan(t *testing.T) {
	c := scheduleConfig{Phase: 570 * time.Second, Every: 15 * time.Second, Workers: 2,
		RedisDown: [2]time.Duration{2 * time.Second, 5 * time.Second}, BrokerDown: [2]time.Duration{3 * time.Second, 3 * time.Second}, Seed: 7}
	p := plan(c)
	if len(p) != 38 {
		t.Fatalf("%d faults, want 38 (570 s / 15 s)", len(p))
	}
	count := map[faultKind]int{}
	victims := map[int]int{}
	for i, f := range p {
		count[f.Kind]++
		slot := time.Duration(i) * c.Every
		if f.At < slot || f.At > slot+c.Every/4 {
			t.Errorf("fault %d at %v: outside the first quarter of its slot [%v, %v]", i, f.At, slot, slot+c.Every/4)
		}
		switch f.Kind {
		case workerKill:
			victims[f.Worker]++
			if f.Down != 0 {
				t.Errorf("fault %d: a kill with an outage %v", i, f.Down)
			}
		case redisRestart:
			if f.Down < c.RedisDown[0] || f.Down > c.RedisDown[1] {
				t.Errorf("fault %d: redis down %v outside %v", i, f.Down, c.RedisDown)
			}
		case brokerPause:
			if f.Down != 3*time.Second {
				t.Errorf("fault %d: pause %v, want 3s", i, f.Down)
			}
		}
	}
	// 38 = 9 blocks of four and two more: kills 18-20, the others 9-11.
	if count[workerKill] < 18 || count[redisRestart] < 9 || count[brokerPause] < 9 {
		t.Errorf("kinds %v: want every kind in its share", count)
	}
	if d := victims[0] - victims[1]; d < -1 || d > 1 {
		t.Errorf("victims %v: want them to rotate", victims)
	}
	again := plan(c)
	for i := range p {
		if p[i] != again[i] {
			t.Fatalf("same seed, different schedule at %d: %+v vs %+v", i, p[i], again[i])
		}
	}
	c.Seed = 8
	other := plan(c)
	same := true
	for i := range p {
		same = same && p[i] == other[i]
	}
	if same {
		t.Error("seed 8 gave seed 7's schedule")
	}
	if got := plan(scheduleConfig{Phase: time.Second, Every: 15 * time.Second, Workers: 2}); got != nil {
		t.Errorf("phase shorter than a slot: %v", got)
	}
}

func TestFirstStable(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	mk := func(oks ...bool) []sample {
		var out []sample
		for i, ok := range oks {
			out = append(out, sample{at: at(i * 500), ready: ok})
		}
		return out
	}
	ready := func(s sample) bool { return s.ready }
	tests := []struct {
		name    string
		samples []sample
		from    time.Time
		want    time.Time
		ok      bool
	}{
		{"ready from the start", mk(true, true, true, true, true), t0, t0, true},
		{"flap after the first ready sample", mk(true, false, true, true, true, true, true), t0, at(1000), true},
		{"not yet stable", mk(false, true, true, true), t0, time.Time{}, false},
		{"samples before from are ignored", mk(true, true, false, true, true, true, true, true), at(1000), at(1500), true},
		{"never", mk(false, false, false), t0, time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := firstStable(tt.samples, tt.from, 2*time.Second, ready)
			if ok != tt.ok || !got.Equal(tt.want) {
				t.Errorf("firstStable = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestDriversMissing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var samples []sample
	held := []int{100, 100, 40, 40, 40, 99, 100, 0, 0, 100, 97}
	for i, n := range held {
		samples = append(samples, sample{at: t0.Add(time.Duration(i) * time.Second), drivers: n})
	}
	r := driversMissing(samples, 100, 2, t0, t0.Add(time.Hour), 2500*time.Millisecond)
	// Short samples: 2-4 (3 s, over the bound), 7-8 (2 s), 10 (to the end: 0 s).
	if r.Intervals != 3 || r.LongestS != 3 || r.Violations != 1 || r.MinHeld != 0 || r.Samples != len(held) {
		t.Errorf("report %+v: want 3 intervals, longest 3 s, 1 violation, min 0", r)
	}
	r = driversMissing(samples, 100, 2, t0.Add(5*time.Second), t0.Add(6*time.Second), time.Second)
	if r.Intervals != 0 || r.Samples != 2 {
		t.Errorf("window of two good samples: %+v", r)
	}
}

func TestParseReadyz(t *testing.T) {
	body := "not ready\npartition 0 ready drivers=12\npartition 3 rebuilding drivers=4\npartition 5 ready drivers=0\npartition x ready drivers=1\ngarbage\n"
	got := parseReadyz(body)
	if len(got) != 2 || got[0] != 12 || got[5] != 0 {
		t.Errorf("parseReadyz = %v, want map[0:12 5:0]", got)
	}
}

func TestReportFinish(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	outs := func(matched ...bool) []sim.Outcome {
		var out []sim.Outcome
		for i, m := range matched {
			out = append(out, sim.Outcome{Index: i, Sent: at(float64(i)), Matched: m})
		}
		return out
	}
	r := &report{
		Baseline: &runReport{Summary: sim.Summary{Outcomes: outs(true, true, true, true, true, true, true, true, true, false)},
			Invariants: sim.InvariantReport{Checked: true}},
		Chaos: &runReport{Summary: sim.Summary{Outcomes: outs(true, false, true, true, true, true, true, true, true, true)},
			Invariants: sim.InvariantReport{Checked: true},
			Faults: []faultRecord{
				{Kind: string(workerKill), RecoveryS: 3, ReadyS: 2, RejoinS: 1, windowFrom: at(0.5), windowTo: at(2.5)},
				{Kind: string(workerKill), RecoveryS: -1, ReadyS: -1, RejoinS: -1, windowFrom: at(5.5), windowTo: at(5.9)},
				{Kind: string(redisRestart), RecoveryS: 1, windowFrom: at(8.5), windowTo: at(9.5)},
			}},
	}
	r.finish(3, 5*time.Second, 0.95)
	// During faults: requests 1, 2 (fault 1) and 9 (fault 3): 2 of 3.
	if r.MatchDuringFaults != (rate{Requests: 3, Matched: 2, Rate: 0.667}) {
		t.Errorf("during faults %+v", r.MatchDuringFaults)
	}
	if r.MatchBaselineSame != (rate{Requests: 3, Matched: 2, Rate: 0.667}) || r.MatchBaseline.Rate != 0.9 {
		t.Errorf("baseline %+v, same requests %+v", r.MatchBaseline, r.MatchBaselineSame)
	}
	if r.RatioSameRequests != 1 || r.RatioDuringFaults != round3(0.667/0.9) {
		t.Errorf("ratios %v %v", r.RatioDuringFaults, r.RatioSameRequests)
	}
	k := r.Recovery[string(workerKill)]
	if k.N != 2 || k.Stuck != 1 || k.P50 != 3 || k.P99 != -1 {
		t.Errorf("worker_kill stats %+v: want the stuck one last, p99 -1", k)
	}
	met := map[string]bool{}
	for _, tg := range r.Targets {
		met[tg.Name] = tg.Met
	}
	if !met["faults injected"] || !met["invariant violations"] || met["worker recovery p99"] || met["match during faults / fault-free"] {
		t.Errorf("targets %+v", r.Targets)
	}
	dir := t.TempDir()
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	var sb strings.Builder
	r.print(&sb)
	if !strings.Contains(sb.String(), "stuck") || !strings.Contains(sb.String(), "NOT MET") {
		t.Errorf("table does not show the stuck recovery and the missed target:\n%s", sb.String())
	}
}

func TestUnmatchedRides(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	outs := []sim.Outcome{
		{Index: 0, Ride: "r0", Matched: true},
		{Index: 1, Ride: "r1", Sent: t0, Status: 201, Final: dispatch.Expired},
		{Index: 2, Status: 503},
	}
	events := []dispatch.RideEvent{
		{Ride: "r1", Version: 2, Kind: "expire", To: dispatch.Expired, At: t0.Add(time.Minute)},
		{Ride: "r1", Version: 1, Kind: "requested", To: dispatch.Requested, At: t0},
		{Ride: "r0", Version: 1, Kind: "requested", To: dispatch.Requested, At: t0},
	}
	got := unmatchedRides(outs, events, 20)
	if len(got) != 2 || got[0].Index != 1 || got[1].Index != 2 || got[1].Ride != "" || got[1].Status != 503 {
		t.Fatalf("unmatched %+v", got)
	}
	want := []string{"v1 requested -> requested at 10:00:00.000", "v2 expire -> expired at 10:01:00.000"}
	if len(got[0].History) != 2 || got[0].History[0] != want[0] || got[0].History[1] != want[1] || got[0].Final != "expired" {
		t.Errorf("history %q, final %q; want %q, expired", got[0].History, got[0].Final, want)
	}
	if got := unmatchedRides(outs, events, 1); len(got) != 1 {
		t.Errorf("limit 1: %d", len(got))
	}
}

func TestStatsOf(t *testing.T) {
	var xs []float64
	for i := 1; i <= 200; i++ {
		xs = append(xs, float64(i)/10)
	}
	s := statsOf(xs)
	if s.N != 200 || s.P50 != 10 || s.P90 != 18 || s.P99 != 19.8 || s.Max != 20 {
		t.Errorf("statsOf = %+v", s)
	}
	if s := statsOf([]float64{1, math.Inf(1)}); s.Stuck != 1 || s.P50 != 1 || s.Max != -1 {
		t.Errorf("with a stuck value: %+v", s)
	}
}

func TestParseFlags(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{"hexdispatch", "devbroker"} {
		if err := os.WriteFile(filepath.Join(bin, b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ok := []string{"-bin-dir", bin, "-redis-server", "/bin/true"}
	c, err := parseFlags(ok, io.Discard)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.duration != 10*time.Minute || c.workers != 2 || len(c.secret) < 32 || c.redisDown != [2]time.Duration{2 * time.Second, 5 * time.Second} {
		t.Errorf("defaults %+v", c)
	}
	t.Setenv("HEXD_CHAOS_DURATION", "90s")
	if c, err = parseFlags(ok, io.Discard); err != nil || c.duration != 90*time.Second {
		t.Errorf("HEXD_CHAOS_DURATION=90s: %v, %v", c.duration, err)
	}
	for _, bad := range [][]string{
		{"-workers", "1"},
		{"-duration", "30s"},
		{"-redis-down", "5s-2s"},
		{"-broker-pause", "40s"},
		{"-every", "1s"},
		{"-bin-dir", filepath.Join(bin, "missing")},
		{"extra"},
	} {
		if _, err := parseFlags(append(append([]string{}, ok...), bad...), io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestRedisServerRestartKeepsData runs the real redis-server the soak
// uses: killed with SIGKILL and started again on the same port, it still
// has what was written before (AOF, fsync per write).
func TestRedisServerRestartKeepsData(t *testing.T) {
	bin := "/usr/bin/redis-server"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found at %s (CI=true: install it)", bin)
		}
		t.Skipf("redis-server not found at %s", bin)
	}
	var all procs
	t.Cleanup(all.closeAll)
	dir := t.TempDir()
	r, err := newRedisServer(bin, dir, dir, &all)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.start(ctx); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr})
	defer c.Close()
	if err := c.Set(ctx, "lease", "d1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered while stopped")
	}
	if err := r.start(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "lease").Result(); err != nil || v != "d1" {
		t.Fatalf("after restart: %q, %v; want d1", v, err)
	}
	all.closeAll()
	if r.cur.alive() {
		t.Error("closeAll left redis-server running")
	}
}
