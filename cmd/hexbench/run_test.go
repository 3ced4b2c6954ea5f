package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestRunPrintsOneJSONLinePerResult(t *testing.T) {
	var out, errOut bytes.Buffer
	// Sizes where the index dwarfs heap noise: the memory figure is a
	// difference of two heap readings.
	err := run(context.Background(), []string{
		"-workloads", "index-upsert,index-knn,index-memory",
		"-drivers", "20000,50000", "-duration", "20ms",
	}, &out, &errOut)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	sc := bufio.NewScanner(&out)
	seen := map[string]int{}
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if r.System != "hexdispatch" || (r.Drivers != 20000 && r.Drivers != 50000) {
			t.Fatalf("bad result %+v", r)
		}
		switch r.Workload {
		case "index-memory":
			if r.BytesPerDriver < 40 || r.BytesPerDriver > 400 || r.OpsPerS != 0 {
				t.Fatalf("memory result %+v", r)
			}
		default:
			if r.OpsPerS <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.BytesPerDriver != 0 {
				t.Fatalf("throughput result %+v", r)
			}
		}
		seen[r.Workload]++
	}
	for _, w := range []string{"index-upsert", "index-knn", "index-memory"} {
		if seen[w] != 2 {
			t.Fatalf("workload %s: %d results, want 2 (%v)", w, seen[w], seen)
		}
	}
	if !strings.Contains(errOut.String(), "index-knn drivers=50000") {
		t.Fatalf("no progress on stderr: %q", errOut.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-workloads", "nope"},
		{"-drivers", "0"},
		{"-drivers", "ten"},
		{"-duration", "-1s"},
		{"-client-procs", "-1"},
		{"-timeline", "/nonexistent-dir/timeline.csv", "-workloads", "index-memory", "-drivers", "10"},
		{"stray"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%v) = nil, want error", args)
		}
	}
}

func TestRound(t *testing.T) {
	for in, want := range map[float64]float64{1234567: 1234567, 3.14159: 3.142, 0.012345: 0.01235, 0: 0} {
		if got := round(in); got != want {
			t.Errorf("round(%v) = %v, want %v", in, got, want)
		}
	}
}

func TestRunWithRedisPeerPrintsRatios(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required under CI: %v", err)
		}
		t.Skipf("redis-server not installed: %v", err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{
		"-peer", "redis", "-workloads", "index-upsert,index-knn,index-memory",
		"-drivers", "1000", "-duration", "40ms",
	}, &out, &errOut)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	peers := map[string]int{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if r.System == "redis-geo" {
			if r.OpsPerS <= 0 && r.BytesPerDriver <= 0 {
				t.Fatalf("empty peer result %+v", r)
			}
			peers[r.Workload]++
		}
	}
	if peers["index-upsert"] != 1 || peers["index-knn"] != 2 || peers["index-memory"] != 1 {
		t.Fatalf("peer results per workload = %v", peers)
	}
	for _, w := range []string{"ratio ours/peer", "index-knn", "index-memory"} {
		if !strings.Contains(errOut.String(), w) {
			t.Fatalf("ratio table lacks %q:\n%s", w, errOut.String())
		}
	}
}

func TestGatherWorkloads(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-workloads", "gather,gather-rpc", "-drivers", "3000", "-duration", "50ms"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	n := 0
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.OpsPerS <= 0 || r.P99us <= 0 {
			t.Fatalf("result %s: %v", sc.Text(), err)
		}
		// A gather past its deadline answers partial, which a loaded
		// machine (go test runs packages side by side) can cause now and
		// then; most must be whole.
		var partial int
		if i := strings.LastIndex(r.Note, ", "); i < 0 || !strings.HasSuffix(r.Note, " partial") {
			t.Fatalf("note %q does not count partial answers", r.Note)
		} else if _, err := fmt.Sscanf(r.Note[i+2:], "%d partial", &partial); err != nil || partial*10 > int(r.Ops) {
			t.Fatalf("%s: %d of %d gathers partial (%v)", r.Workload, partial, r.Ops, err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d results, want 2", n)
	}
}

func TestWSConnsWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the engine")
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-workloads", "ws-conns", "-drivers", "200"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.Drivers != 200 || r.BytesPerDriver <= 0 {
		t.Fatalf("result %q: %v", out.String(), err)
	}
}
