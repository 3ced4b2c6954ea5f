package dispatch

import (
	"math"
	"runtime/metrics"
	"testing"
)

func TestHistQuantile(t *testing.T) {
	buckets := []float64{0, 0.001, 0.01, 0.1, math.Inf(1)}
	prev := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{100, 0, 0, 0}}
	cur := &metrics.Float64Histogram{Buckets: buckets, Counts: []uint64{190, 5, 4, 1}}
	// Since prev: 90 under 1 ms, 5 under 10 ms, 4 under 100 ms, 1 above.
	for _, tt := range []struct {
		q    float64
		prev *metrics.Float64Histogram
		want float64
	}{
		{0.5, prev, 0.001}, {0.95, prev, 0.01}, {0.99, prev, 0.1}, {1, prev, 0.1},
		{0.95, nil, 0.001}, // since start the 190 fast ones are 95%
	} {
		if got := histQuantile(cur, tt.prev, tt.q); got != tt.want {
			t.Errorf("q %v: %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := histQuantile(cur, cur, 0.99); got != 0 {
		t.Errorf("no new observations: %v, want 0", got)
	}
}
