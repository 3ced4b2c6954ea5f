package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"testing"
)

func TestAssignWorkload(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-workloads", "assign", "-duration", "10ms"}, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	sc := bufio.NewScanner(&out)
	sizes := map[string]bool{}
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if r.Workload != "assign" || r.OpsPerS <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.Note == "" {
			t.Fatalf("bad result %+v", r)
		}
		sizes[r.Size] = true
	}
	if !sizes["100x100"] || !sizes["500x500"] || len(sizes) != 2 {
		t.Fatalf("sizes %v, want 100x100 and 500x500", sizes)
	}
}
