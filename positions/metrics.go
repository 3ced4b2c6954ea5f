package positions

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// latencyBuckets is the number of power-of-two microsecond buckets: bucket
// i holds latencies in [2^(i-1), 2^i) µs, bucket 0 those under 1 µs, and
// the last everything from about 9 minutes up.
const latencyBuckets = 30

// LatencyHistogram counts durations in power-of-two microsecond buckets.
// It is lock-free: any goroutine may Observe, any may read. Quantiles are
// upper bucket bounds, so they overstate by less than a factor of two.
type LatencyHistogram struct {
	counts [latencyBuckets]atomic.Uint64
	sumNs  atomic.Int64
}

// Observe adds one duration (negative durations count as zero).
func (h *LatencyHistogram) Observe(d time.Duration) {
	us := max(d.Microseconds(), 0)
	i := min(bits.Len64(uint64(us)), latencyBuckets-1)
	h.counts[i].Add(1)
	h.sumNs.Add(max(int64(d), 0))
}

// LatencySnapshot is a copy of a histogram.
type LatencySnapshot struct {
	// Upper[i] is bucket i's upper bound; the last is +Inf.
	Upper  [latencyBuckets]time.Duration
	Counts [latencyBuckets]uint64 // per bucket, not cumulative
	Count  uint64
	Sum    time.Duration
}

// Snapshot copies h.
func (h *LatencyHistogram) Snapshot() LatencySnapshot {
	var s LatencySnapshot
	for i := range latencyBuckets {
		s.Upper[i] = time.Duration(uint64(1)<<i) * time.Microsecond
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	s.Upper[latencyBuckets-1] = time.Duration(math.MaxInt64)
	s.Sum = time.Duration(h.sumNs.Load())
	return s
}

// Quantile returns the upper bound of the bucket holding quantile q in
// [0, 1], or 0 if nothing was observed.
func (s LatencySnapshot) Quantile(q float64) time.Duration {
	if s.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.Count)))
	var seen uint64
	for i, c := range s.Counts {
		seen += c
		if seen >= rank && c > 0 {
			return s.Upper[i]
		}
	}
	return s.Upper[latencyBuckets-1]
}

// Sub returns the observations in s that are not in earlier (for a window
// between two snapshots).
func (s LatencySnapshot) Sub(earlier LatencySnapshot) LatencySnapshot {
	out := s
	out.Count = 0
	for i := range s.Counts {
		out.Counts[i] = s.Counts[i] - earlier.Counts[i]
		out.Count += out.Counts[i]
	}
	out.Sum = s.Sum - earlier.Sum
	return out
}
