package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMixedWorkload(t *testing.T) {
	args := []string{"-workloads", "mixed", "-drivers", "2000", "-duration", "40ms"}
	redisOK := true
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required under CI: %v", err)
		}
		redisOK = false
	} else {
		args = append(args, "-peer", "redis")
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	systems := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		// Nine moves to one query, whichever system ran them (near 9:1 for
		// a short run: at least one batch of 64).
		if r.Workload != "mixed" || r.Ops < 64 || r.QueriesPerS <= 0 || r.UpdatesPerS < 8*r.QueriesPerS || r.UpdatesPerS > 10*r.QueriesPerS {
			t.Fatalf("result %+v", r)
		}
		systems[r.System]++
	}
	if systems["hexdispatch"] != 1 {
		t.Fatalf("results by system %v", systems)
	}
	if !redisOK {
		return
	}
	if systems["redis-geo"] != 2 {
		t.Fatalf("results by system %v, want both Redis clients", systems)
	}
	for _, w := range []string{"mixed updates", "mixed queries"} {
		if !strings.Contains(errOut.String(), w) {
			t.Fatalf("ratio table lacks %q:\n%s", w, errOut.String())
		}
	}
	// The same table from the results file.
	path := filepath.Join(t.TempDir(), "results.json")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := run(context.Background(), []string{"-ratios", path}, &table, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "mixed queries") {
		t.Fatalf("-ratios printed:\n%s", table.String())
	}
}

func TestParseGoBench(t *testing.T) {
	r, ok := parseGoBench("BenchmarkUpsert/drivers=10000-2   \t 9812345\t       312.5 ns/op\t       0 B/op\t       0 allocs/op")
	if !ok || r.Workload != "BenchmarkUpsert/drivers=10000" || r.GOMAXPROCS != 2 || r.Ops != 9812345 || r.OpsPerS != 3200000 || r.Note != "0 B/op, 0 allocs/op" {
		t.Fatalf("got %+v, %v", r, ok)
	}
	for _, line := range []string{"PASS", "ok  \tgithub.com/x/y\t1.2s", "BenchmarkX", "goos: linux"} {
		if _, ok := parseGoBench(line); ok {
			t.Errorf("%q parsed as a benchmark", line)
		}
	}
}
