package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRatiosSkipOtherBackends: hexdispatch measured on another backend
// (match-e2e on redis-server) is not a peer, so it makes no ratio row.
func TestRatiosSkipOtherBackends(t *testing.T) {
	var out bytes.Buffer
	printRatios(&out, []Result{
		{System: "hexdispatch", Workload: "match-e2e", Drivers: 50000, OpsPerS: 100},
		{System: "hexdispatch/redis-server", Workload: "match-e2e", Drivers: 50000, OpsPerS: 432},
		{System: "hexdispatch", Workload: "index-knn", Drivers: 1000, OpsPerS: 500},
		{System: "redis-geo", Workload: "index-knn", Drivers: 1000, OpsPerS: 10},
	})
	if strings.Contains(out.String(), "match-e2e") || !strings.Contains(out.String(), "50.0x") {
		t.Fatalf("ratios:\n%s", out.String())
	}
}
