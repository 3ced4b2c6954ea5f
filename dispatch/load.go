package dispatch

import (
	"context"
	"math"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// LoadConfig configures a LoadMonitor.
type LoadConfig struct {
	// SchedTarget is the goroutine scheduling latency (p99 over the last
	// sample) at which the process counts as saturated: work waits for a
	// CPU that long before it runs.
	SchedTarget time.Duration
	// Every is the sampling period.
	Every time.Duration
	// Searches, when set, reports the ride searches running and their
	// bound; a process near MaxActive is loaded however idle its CPUs.
	Searches func() (active, max int)
}

// DefaultLoadConfig returns the defaults: saturated at a 20 ms scheduling
// p99, sampled every 250 ms.
func DefaultLoadConfig() LoadConfig {
	return LoadConfig{SchedTarget: 20 * time.Millisecond, Every: 250 * time.Millisecond}
}

// LoadMonitor estimates how loaded the process is, for shedding GPS before
// rides: Pressure is at least 1 when goroutines wait SchedTarget or more
// for a CPU, or when the ride searches reach their bound.
type LoadMonitor struct {
	cfg      LoadConfig
	pressure atomic.Uint64 // float64 bits
	sched    atomic.Uint64 // float64 bits: the last scheduling p99, seconds
}

// NewLoadMonitor returns a monitor at pressure 0; Run samples.
func NewLoadMonitor(cfg LoadConfig) *LoadMonitor {
	if cfg.SchedTarget <= 0 {
		cfg.SchedTarget = DefaultLoadConfig().SchedTarget
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultLoadConfig().Every
	}
	return &LoadMonitor{cfg: cfg}
}

// Pressure is the load relative to saturation: below 1 the process keeps
// up, at 1 or more it does not.
func (m *LoadMonitor) Pressure() float64 { return math.Float64frombits(m.pressure.Load()) }

// SchedP99 is the last sample's goroutine scheduling latency p99.
func (m *LoadMonitor) SchedP99() time.Duration {
	return time.Duration(math.Float64frombits(m.sched.Load()) * float64(time.Second))
}

// Run samples until ctx ends.
func (m *LoadMonitor) Run(ctx context.Context) error {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	var prev *metrics.Float64Histogram
	t := time.NewTicker(m.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		metrics.Read(sample)
		var p99 float64
		if sample[0].Value.Kind() == metrics.KindFloat64Histogram {
			h := sample[0].Value.Float64Histogram()
			p99 = histQuantile(h, prev, 0.99)
			prev = &metrics.Float64Histogram{Counts: append([]uint64(nil), h.Counts...), Buckets: h.Buckets}
		}
		m.sched.Store(math.Float64bits(p99))
		m.pressure.Store(math.Float64bits(m.compute(p99)))
	}
}

func (m *LoadMonitor) compute(schedP99 float64) float64 {
	p := schedP99 / m.cfg.SchedTarget.Seconds()
	if m.cfg.Searches != nil {
		if active, limit := m.cfg.Searches(); limit > 0 {
			p = max(p, float64(active)/float64(limit))
		}
	}
	return p
}

// histQuantile is the q-quantile of the observations between two
// snapshots of a runtime/metrics histogram (prev nil: since start), taken
// as the upper bound of the bucket it falls in.
func histQuantile(cur, prev *metrics.Float64Histogram, q float64) float64 {
	var total uint64
	counts := make([]uint64, len(cur.Counts))
	for i, c := range cur.Counts {
		if prev != nil && i < len(prev.Counts) {
			c -= prev.Counts[i]
		}
		counts[i] = c
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			upper := cur.Buckets[i+1]
			if math.IsInf(upper, 1) {
				return cur.Buckets[i]
			}
			return upper
		}
	}
	return cur.Buckets[len(cur.Buckets)-1]
}
