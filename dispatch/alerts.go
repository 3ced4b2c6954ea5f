package dispatch

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// AlertThresholds are the levels at which the console's four alert panels
// turn red. The zero value of a field means its default.
type AlertThresholds struct {
	// MatchP99 bounds the p99 time from a ride request to its first offer;
	// default 1 s, the product's bound.
	MatchP99 time.Duration
	// Lag bounds the records any positions partition's owner is behind;
	// default 10,000.
	Lag float64
	// ErrorRate bounds the share of HTTP requests answered 5xx; default 1%.
	ErrorRate float64
	// HeapBytes bounds the live heap; default 80% of GOMEMLIMIT when one
	// is set, else 4 GiB.
	HeapBytes uint64
	// Window is how far back the rates and the p99 look; default 1 min.
	Window time.Duration
}

func (t AlertThresholds) withDefaults() AlertThresholds {
	if t.MatchP99 <= 0 {
		t.MatchP99 = time.Second
	}
	if t.Lag <= 0 {
		t.Lag = 10_000
	}
	if t.ErrorRate <= 0 {
		t.ErrorRate = 0.01
	}
	if t.HeapBytes == 0 {
		t.HeapBytes = 4 << 30
		if lim := debug.SetMemoryLimit(-1); lim > 0 && lim < math.MaxInt64 {
			t.HeapBytes = uint64(lim) / 10 * 8
		}
	}
	if t.Window <= 0 {
		t.Window = time.Minute
	}
	return t
}

// Alert states.
const (
	AlertOK      = "ok"
	AlertFiring  = "alert"
	AlertUnknown = "unknown" // the metric is not in this process
)

// Alert is one panel of the console.
type Alert struct {
	Name      string  `json:"name"`
	State     string  `json:"state"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Unit      string  `json:"unit"`
	Detail    string  `json:"detail,omitempty"`
}

// PartitionLag is one positions partition's consumer lag.
type PartitionLag struct {
	Partition int     `json:"partition"`
	Records   float64 `json:"records"`
}

// Alerts is the body of GET /v1/ops/alerts: the four panels (match p99
// latency, consumer lag, error rate and dead letters, memory) and the
// figures behind them. Rates and the p99 cover the last Window seconds
// (less just after start).
type Alerts struct {
	Alerts        []Alert        `json:"alerts"`
	WindowSeconds float64        `json:"window_s"`
	MatchP99      *float64       `json:"match_p99_s,omitempty"`
	Matches       float64        `json:"matches"`
	Lag           []PartitionLag `json:"lag"`
	Requests      float64        `json:"requests"`
	Errors5xx     float64        `json:"errors_5xx"`
	ErrorRate     float64        `json:"error_rate"`
	DeadLetters   float64        `json:"dead_letters"`
	DeadTotal     float64        `json:"dead_letters_total"`
	HeapBytes     uint64         `json:"heap_alloc_bytes"`
	SysBytes      uint64         `json:"sys_bytes"`
	Goroutines    int            `json:"goroutines"`
	At            time.Time      `json:"at"`
}

// Metric names the panels read from the process's registry.
const (
	metricMatchLatency = "hexd_match_latency_seconds"
	metricHTTP         = "hexd_http_request_duration_seconds"
	metricDeadLetters  = "hexd_positions_dead_letters_total"
	metricLag          = "hexd_positions_consumer_lag"
)

type alertSnap struct {
	at              time.Time
	match           []*dto.Bucket // cumulative
	matches         float64
	requests, fails float64
	dead            float64
	hasMatch, hasDL bool
	hasHTTP         bool
	lag             []PartitionLag
	hasLag          bool
}

// alertWindow keeps recent snapshots of the counters so the panels show
// rates over the window rather than since start.
type alertWindow struct {
	g      prometheus.Gatherer
	remote func(context.Context) ([]*dto.MetricFamily, error)
	th     AlertThresholds

	mu    sync.Mutex
	snaps []alertSnap
}

func newAlertWindow(g prometheus.Gatherer, remote func(context.Context) ([]*dto.MetricFamily, error), th AlertThresholds) *alertWindow {
	return &alertWindow{g: g, remote: remote, th: th}
}

func (a *alertWindow) snapshot(ctx context.Context, now time.Time) alertSnap {
	s := alertSnap{at: now}
	var mfs []*dto.MetricFamily
	if a.g != nil {
		mfs, _ = a.g.Gather() // a partial gather still counts
	}
	if a.remote != nil {
		more, _ := a.remote(ctx)
		mfs = append(mfs, more...)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case metricMatchLatency:
			for _, m := range mf.GetMetric() {
				h := m.GetHistogram()
				s.hasMatch, s.match, s.matches = true, h.GetBucket(), float64(h.GetSampleCount())
			}
		case metricHTTP:
			s.hasHTTP = true
			for _, m := range mf.GetMetric() {
				n := float64(m.GetHistogram().GetSampleCount())
				s.requests += n
				for _, l := range m.GetLabel() {
					if l.GetName() == "code" && strings.HasPrefix(l.GetValue(), "5") {
						s.fails += n
					}
				}
			}
		case metricDeadLetters:
			for _, m := range mf.GetMetric() {
				s.hasDL = true
				s.dead += m.GetCounter().GetValue()
			}
		case metricLag:
			s.hasLag = true
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "partition" {
						p, _ := strconv.Atoi(l.GetValue())
						s.lag = append(s.lag, PartitionLag{Partition: p, Records: m.GetGauge().GetValue()})
					}
				}
			}
		}
	}
	sort.Slice(s.lag, func(i, j int) bool { return s.lag[i].Partition < s.lag[j].Partition })
	return s
}

// read takes a snapshot and compares it with the newest one at least a
// window old (or the oldest kept).
func (a *alertWindow) read(ctx context.Context, now time.Time) Alerts {
	cur := a.snapshot(ctx, now)
	a.mu.Lock()
	var base alertSnap
	if len(a.snaps) > 0 {
		base = a.snaps[0]
		for _, s := range a.snaps {
			if now.Sub(s.at) >= a.th.Window {
				base = s
			}
		}
	}
	// Keep what a later read may need as its base.
	keep := a.snaps[:0]
	for _, s := range a.snaps {
		if now.Sub(s.at) < 2*a.th.Window || s.at.Equal(base.at) {
			keep = append(keep, s)
		}
	}
	a.snaps = append(keep, cur)
	if len(a.snaps) > 1024 { // a console polled very often
		a.snaps = a.snaps[len(a.snaps)-1024:]
	}
	a.mu.Unlock()

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out := Alerts{WindowSeconds: now.Sub(base.at).Seconds(), Lag: cur.lag, HeapBytes: ms.HeapAlloc, SysBytes: ms.Sys,
		Goroutines: runtime.NumGoroutine(), At: now.UTC(), DeadTotal: cur.dead}
	if base.at.IsZero() {
		out.WindowSeconds = 0 // since start
	}
	if out.Lag == nil {
		out.Lag = []PartitionLag{}
	}
	th := a.th

	match := Alert{Name: "match_p99", Unit: "s", Threshold: th.MatchP99.Seconds(), State: AlertUnknown, Detail: "no dispatcher in this process"}
	if cur.hasMatch {
		out.Matches = cur.matches - base.matches
		match.State, match.Detail = AlertOK, "no ride requested in the window"
		if q, ok := bucketQuantile(0.99, cur.match, base.match, out.Matches); ok {
			out.MatchP99 = &q
			match.Value, match.Detail = q, ""
			if q > th.MatchP99.Seconds() {
				match.State = AlertFiring
			}
		}
	}
	lag := Alert{Name: "consumer_lag", Unit: "records", Threshold: th.Lag, State: AlertUnknown,
		Detail: "no positions worker answered"}
	if cur.hasLag {
		lag.State, lag.Detail = AlertOK, ""
		for _, l := range cur.lag {
			if l.Records > lag.Value {
				lag.Value, lag.Detail = l.Records, "partition "+strconv.Itoa(l.Partition)
			}
		}
		if lag.Value > th.Lag {
			lag.State = AlertFiring
		}
	}
	errs := Alert{Name: "error_rate", Unit: "ratio", Threshold: th.ErrorRate, State: AlertUnknown}
	if cur.hasHTTP || cur.hasDL {
		errs.State = AlertOK
		out.Requests, out.Errors5xx = cur.requests-base.requests, cur.fails-base.fails
		if out.Requests > 0 {
			out.ErrorRate = out.Errors5xx / out.Requests
		}
		out.DeadLetters = cur.dead - base.dead
		errs.Value = out.ErrorRate
		errs.Detail = strconv.FormatFloat(out.DeadLetters, 'f', 0, 64) + " dead letters in the window"
		if out.ErrorRate > th.ErrorRate || out.DeadLetters > 0 {
			errs.State = AlertFiring
		}
	}
	mem := Alert{Name: "memory", Unit: "bytes", Value: float64(ms.HeapAlloc), Threshold: float64(th.HeapBytes), State: AlertOK}
	if ms.HeapAlloc > th.HeapBytes {
		mem.State = AlertFiring
	}
	out.Alerts = []Alert{match, lag, errs, mem}
	return out
}

// bucketQuantile estimates the q-quantile of the total observations
// between two cumulative histogram snapshots (base may be nil; the +Inf
// bucket is implicit, as in the client's histograms), interpolating
// linearly inside the bucket as Prometheus's histogram_quantile does. An
// estimate above the last finite bound is that bound. It reports false
// when there were no observations.
func bucketQuantile(q float64, cur, base []*dto.Bucket, total float64) (float64, bool) {
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range cur {
		n := float64(b.GetCumulativeCount())
		if i < len(base) && base[i].GetUpperBound() == b.GetUpperBound() {
			n -= float64(base[i].GetCumulativeCount())
		}
		upper := b.GetUpperBound()
		if math.IsInf(upper, 1) {
			break
		}
		if n >= rank {
			if n-below <= 0 {
				return upper, true
			}
			return lower + (upper-lower)*(rank-below)/(n-below), true
		}
		lower, below = upper, n
	}
	return lower, true
}
