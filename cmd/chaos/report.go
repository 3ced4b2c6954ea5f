package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hexdispatch/hexdispatch/sim"
)

// sample is one look of the monitor at the engine (every 100 ms).
type sample struct {
	at         time.Time
	ready      bool // every partition ready on a live worker, every live worker's /readyz 200
	registered bool // and the registry sends the api to those owners
	drivers    int  // drivers held in ready partitions
	held       map[string]int
}

func sampleOf(h health) sample {
	ready := h.ready == h.partitions && h.allWorkersReady
	return sample{at: h.at, ready: ready, registered: ready && h.registered == h.partitions, drivers: h.drivers, held: h.held}
}

// firstStable returns the time of the first sample at or after from where
// ok holds and keeps holding on every sample for at least stable (a later
// sample confirms it); false when there is none yet. Requiring a stable
// stretch keeps a rebalance that starts just after a resume from being
// read as an instant recovery.
func firstStable(samples []sample, from time.Time, stable time.Duration, ok func(sample) bool) (time.Time, bool) {
	var start time.Time
	for _, s := range samples {
		if s.at.Before(from) {
			continue
		}
		if !ok(s) {
			start = time.Time{}
			continue
		}
		if start.IsZero() {
			start = s.at
		}
		if s.at.Sub(start) >= stable {
			return start, true
		}
	}
	return time.Time{}, false
}

// faultRecord is one injected fault and how the engine came back.
type faultRecord struct {
	N      int    `json:"n"`
	Kind   string `json:"kind"`
	Target string `json:"target"`
	// Injected is the wall time of the injection; AtS the same as seconds
	// since the soak started.
	Injected time.Time `json:"injected"`
	AtS      float64   `json:"at_s"`
	// DownS is how long the component was out: the pause or the time
	// redis-server was down. 0 for a worker kill.
	DownS float64 `json:"down_s"`
	// RecoveryS is the time to recover, from the end of the fault (the
	// kill itself; Redis answering PING again; SIGCONT) to the later of:
	// every partition ready on a live worker and registered to it in
	// Redis, continuously for 2 s from then on; and the first probe ride
	// requested after the end of the fault reaching its driver as an
	// offer. -1: not recovered within the cap.
	RecoveryS float64 `json:"recovery_s"`
	// The parts of RecoveryS: every partition ready (/readyz), also
	// registered in Redis, and the first probe offer.
	ReadyS      float64 `json:"ready_s"`
	RegisteredS float64 `json:"registered_s"`
	ProbeS      float64 `json:"probe_s"`
	// RejoinS (worker_kill): from the restart of the killed worker to it
	// holding at least one partition with every partition ready and
	// registered again for 2 s (the rebalance it causes). -1: not within
	// the cap.
	RejoinS float64 `json:"rejoin_s,omitempty"`
	Error   string  `json:"error,omitempty"`

	// The window whose requests count as "during faults": injection to
	// recovery (to the cap when it did not recover).
	windowFrom, windowTo time.Time
}

// stats summarises a sample of durations in seconds. A value that never
// happened (+Inf: not recovered within the cap) counts in Stuck and sorts
// last; a percentile that lands on one reads -1.
type stats struct {
	N     int     `json:"n"`
	Stuck int     `json:"stuck,omitempty"`
	P50   float64 `json:"p50_s"`
	P90   float64 `json:"p90_s"`
	P99   float64 `json:"p99_s"`
	Max   float64 `json:"max_s"`
}

// statsOf uses the nearest-rank percentile: with fewer than 100 values
// the p99 is the maximum.
func statsOf(xs []float64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	fin := func(v float64) float64 {
		if math.IsInf(v, 1) {
			return -1
		}
		return round3(v)
	}
	at := func(p float64) float64 { return fin(s[max(0, int(math.Ceil(p*float64(len(s))))-1)]) }
	st := stats{N: len(s), P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: fin(s[len(s)-1])}
	for _, v := range s {
		if math.IsInf(v, 1) {
			st.Stuck++
		}
	}
	return st
}

// inf maps a "did not happen" -1 to +Inf, so it sorts last.
func inf(v float64) float64 {
	if v < 0 {
		return math.Inf(1)
	}
	return v
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// missingReport is the check "no live driver missing for longer than TTL
// plus rebuild time", from the monitor's samples: the drivers held in
// ready partitions, summed over the live workers, against the drivers the
// simulation keeps online (every simulated driver is online for the whole
// run, plus the probe driver). A sample is short when it holds fewer than
// Expected - Tolerance; a missing interval is a run of short samples, from
// the first to the next sample that is not short. Counts cannot name the
// drivers, so a driver missing while another is counted twice (a handoff
// between partitions in flight) would hide; the tolerance is for those
// handoffs and for positions in flight.
type missingReport struct {
	Expected   int     `json:"expected_drivers"`
	Tolerance  int     `json:"tolerance"`
	BoundS     float64 `json:"bound_s"` // TTL + rebuild bound
	From       string  `json:"from"`
	To         string  `json:"to"`
	Samples    int     `json:"samples"`
	MinHeld    int     `json:"min_held"`
	Intervals  int     `json:"intervals"`
	LongestS   float64 `json:"longest_s"`
	Violations int     `json:"violations"` // intervals longer than BoundS
}

func driversMissing(samples []sample, expected, tol int, from, to time.Time, bound time.Duration) missingReport {
	r := missingReport{Expected: expected, Tolerance: tol, BoundS: bound.Seconds(),
		From: from.UTC().Format(time.RFC3339), To: to.UTC().Format(time.RFC3339), MinHeld: -1}
	var start time.Time
	closeRun := func(end time.Time) {
		d := end.Sub(start)
		r.Intervals++
		r.LongestS = max(r.LongestS, round3(d.Seconds()))
		if d > bound {
			r.Violations++
		}
		start = time.Time{}
	}
	var last time.Time
	for _, s := range samples {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		r.Samples++
		last = s.at
		if r.MinHeld < 0 || s.drivers < r.MinHeld {
			r.MinHeld = s.drivers
		}
		short := s.drivers < expected-tol
		switch {
		case short && start.IsZero():
			start = s.at
		case !short && !start.IsZero():
			closeRun(s.at)
		}
	}
	if !start.IsZero() {
		closeRun(last)
	}
	return r
}

// rate is a match success rate: requests a driver accepted over every
// request the simulated riders made (a request the engine refused after
// the rider's retries counts as a failure).
type rate struct {
	Requests int     `json:"requests"`
	Matched  int     `json:"matched"`
	Rate     float64 `json:"rate"`
}

func matchRate(outs []sim.Outcome, in func(sim.Outcome) bool) rate {
	var r rate
	for _, o := range outs {
		if in != nil && !in(o) {
			continue
		}
		r.Requests++
		if o.Matched {
			r.Matched++
		}
	}
	if r.Requests > 0 {
		r.Rate = round3(float64(r.Matched) / float64(r.Requests))
	}
	return r
}

// runReport is what one run (baseline or chaos) measured.
type runReport struct {
	Name       string              `json:"name"`
	WallS      float64             `json:"wall_s"`
	Summary    sim.Summary         `json:"simulation"`
	Invariants sim.InvariantReport `json:"invariants"`
	Missing    missingReport       `json:"drivers_missing"`
	Probes     int                 `json:"probes"`
	ProbeOK    int                 `json:"probes_offered"`
	Unmatched  []unmatchedRide     `json:"unmatched,omitempty"` // the first 20 requests no driver accepted
	Faults     []faultRecord       `json:"faults,omitempty"`
	Skipped    int                 `json:"faults_skipped,omitempty"` // planned but past the end of the fault phase
	Error      string              `json:"error,omitempty"`
}

// target is one line of the targets.
type target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// report is report.json.
type report struct {
	Command  string            `json:"command"`
	Started  time.Time         `json:"started"`
	Config   map[string]any    `json:"config"`
	Defs     map[string]string `json:"definitions"`
	Baseline *runReport        `json:"baseline,omitempty"`
	Chaos    *runReport        `json:"chaos"`

	Recovery map[string]stats `json:"recovery"` // by kind; plus worker_rejoin
	// Match success: the chaos run over every request, over the requests
	// made during a fault (injection to recovery), the baseline (same
	// seed, same length, no faults) over every request and over the same
	// requests by index.
	MatchChaos         rate     `json:"match_chaos_all"`
	MatchDuringFaults  rate     `json:"match_during_faults"`
	MatchBaseline      rate     `json:"match_baseline_all"`
	MatchBaselineSame  rate     `json:"match_baseline_same_requests"`
	RatioDuringFaults  float64  `json:"ratio_during_faults_to_baseline"`
	RatioSameRequests  float64  `json:"ratio_during_faults_to_baseline_same_requests"`
	InvariantsChecked  []string `json:"invariants_checked"`
	InvariantViolation int      `json:"invariant_violations"`
	Targets            []target `json:"targets"`
}

var definitions = map[string]string{
	"recovery_s": "from the end of the fault (worker_kill: the kill; redis_restart: redis-server answering PING again; broker_pause: SIGCONT) " +
		"to the later of (a) every partition ready on a live worker (/readyz) and registered to that worker in the Redis ownership registry, " +
		"holding for 2 s, and (b) the first probe ride requested after the end of the fault reaching the probe driver as an offer",
	"worker_rejoin_s": "from restarting a killed worker to it owning a partition with every partition ready and registered again for 2 s",
	"match_success":   "requests a driver accepted over every request the simulated riders made (refused after retries counts as failed)",
	"during_faults":   "requests whose first attempt was sent between a fault's injection and its recovery",
	"drivers_missing": "drivers held in ready partitions (sum of the workers' /readyz) below the simulation's online drivers minus a tolerance; no such interval may last longer than TTL + rebuild bound",
}

// finish computes the cross-run figures and the targets.
func (r *report) finish(minFaults int, recoveryP99 time.Duration, ratio float64) {
	byKind := map[string][]float64{}
	for _, f := range r.Chaos.Faults {
		byKind[f.Kind] = append(byKind[f.Kind], inf(f.RecoveryS))
		if f.Kind == string(workerKill) {
			byKind["worker_kill_ready"] = append(byKind["worker_kill_ready"], inf(f.ReadyS))
		}
		if f.Kind == string(workerKill) && f.RejoinS != 0 {
			byKind["worker_rejoin"] = append(byKind["worker_rejoin"], inf(f.RejoinS))
		}
	}
	r.Recovery = map[string]stats{}
	for k, xs := range byKind {
		r.Recovery[k] = statsOf(xs)
	}
	outs := r.Chaos.Summary.Outcomes
	during := map[int]bool{}
	for _, o := range outs {
		for _, f := range r.Chaos.Faults {
			if !o.Sent.IsZero() && !o.Sent.Before(f.windowFrom) && !o.Sent.After(f.windowTo) {
				during[o.Index] = true
				break
			}
		}
	}
	r.MatchChaos = matchRate(outs, nil)
	r.MatchDuringFaults = matchRate(outs, func(o sim.Outcome) bool { return during[o.Index] })
	if r.Baseline != nil {
		b := r.Baseline.Summary.Outcomes
		r.MatchBaseline = matchRate(b, nil)
		r.MatchBaselineSame = matchRate(b, func(o sim.Outcome) bool { return during[o.Index] })
		if r.MatchBaseline.Rate > 0 {
			r.RatioDuringFaults = round3(r.MatchDuringFaults.Rate / r.MatchBaseline.Rate)
		}
		if r.MatchBaselineSame.Rate > 0 {
			r.RatioSameRequests = round3(r.MatchDuringFaults.Rate / r.MatchBaselineSame.Rate)
		}
	}
	r.InvariantsChecked = []string{
		"no driver committed to two rides (ride-events: a driver's accepted-to-end spans never overlap)",
		"every ride's events run from version 1 without gaps through legal transitions (terminal or live, consistent with its events)",
		"no lost ride: every ride a client created has events at least as far along as the client saw",
		"no live driver missing for longer than TTL + rebuild bound (workers' ready partitions vs the simulation's online drivers)",
	}
	inv := r.Chaos.Invariants
	r.InvariantViolation = inv.DoubleAssignment + inv.Lost + inv.Inconsistent + r.Chaos.Missing.Violations
	if !inv.Checked {
		r.InvariantViolation++ // unchecked is not clean
	}
	injected := len(r.Chaos.Faults)
	kills := r.Recovery[string(workerKill)]
	r.Targets = []target{
		{Name: "faults injected", Want: fmt.Sprintf(">= %d", minFaults), Got: fmt.Sprint(injected), Met: injected >= minFaults},
		{Name: "invariant violations", Want: "0", Got: fmt.Sprint(r.InvariantViolation), Met: r.InvariantViolation == 0},
		{Name: "worker recovery p99", Want: fmt.Sprintf("< %v", recoveryP99), Got: fmt.Sprintf("%.2f s (n=%d)", kills.P99, kills.N),
			Met: kills.N > 0 && kills.P99 >= 0 && kills.P99 < recoveryP99.Seconds()},
	}
	if r.Baseline != nil {
		r.Targets = append(r.Targets, target{Name: "match during faults / fault-free", Want: fmt.Sprintf(">= %.2f", ratio),
			Got: fmt.Sprintf("%.3f (%.1f%% / %.1f%%)", r.RatioDuringFaults, 100*r.MatchDuringFaults.Rate, 100*r.MatchBaseline.Rate),
			Met: r.RatioDuringFaults >= ratio})
	}
}

// write puts report.json into dir.
func (r *report) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644)
}

// print writes the short human table.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nchaos soak: %d faults injected", len(r.Chaos.Faults))
	if r.Chaos.Skipped > 0 {
		fmt.Fprintf(w, " (%d planned faults skipped: past the end of the fault phase)", r.Chaos.Skipped)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-4s %-14s %-8s %8s %7s %10s %8s %8s %8s %8s\n", "#", "kind", "target", "at_s", "down_s", "recovery_s", "ready_s", "regist_s", "probe_s", "rejoin_s")
	for _, f := range r.Chaos.Faults {
		rejoin := "-"
		if f.Kind == string(workerKill) {
			rejoin = secs(f.RejoinS)
		}
		down := "-"
		if f.Kind != string(workerKill) {
			down = fmt.Sprintf("%.1f", f.DownS)
		}
		fmt.Fprintf(w, "%-4d %-14s %-8s %8.1f %7s %10s %8s %8s %8s %8s\n", f.N, f.Kind, f.Target, f.AtS, down,
			secs(f.RecoveryS), secs(f.ReadyS), secs(f.RegisteredS), secs(f.ProbeS), rejoin)
	}
	fmt.Fprintf(w, "\nrecovery (s)      %5s %7s %7s %7s %7s\n", "n", "p50", "p90", "p99", "max")
	for _, k := range []string{string(workerKill), "worker_kill_ready", "worker_rejoin", string(redisRestart), string(brokerPause)} {
		if s, ok := r.Recovery[k]; ok {
			fmt.Fprintf(w, "%-17s %5d %7s %7s %7s %7s\n", k, s.N, secs(s.P50), secs(s.P90), secs(s.P99), secs(s.Max))
		}
	}
	inv := r.Chaos.Invariants
	fmt.Fprintf(w, "\ninvariants: %d ride events over %d rides: %d double assignments, %d lost, %d inconsistent (checked=%v)\n",
		inv.Events, inv.Rides, inv.DoubleAssignment, inv.Lost, inv.Inconsistent, inv.Checked)
	m := r.Chaos.Missing
	fmt.Fprintf(w, "drivers missing: %d intervals below %d-%d held, longest %.1f s (bound %.0f s), %d over the bound, min held %d\n",
		m.Intervals, m.Expected, m.Tolerance, m.LongestS, m.BoundS, m.Violations, m.MinHeld)
	fmt.Fprintf(w, "match success: chaos %s, during faults %s", rateString(r.MatchChaos), rateString(r.MatchDuringFaults))
	if r.Baseline != nil {
		fmt.Fprintf(w, ", fault-free %s, fault-free same requests %s", rateString(r.MatchBaseline), rateString(r.MatchBaselineSame))
	}
	fmt.Fprintln(w)
	for _, u := range r.Chaos.Unmatched {
		last := "no event"
		if len(u.History) > 0 {
			last = u.History[len(u.History)-1]
		}
		fmt.Fprintf(w, "  unmatched: request %d sent %s, HTTP %d, ride %s, rider saw %q, last event %s\n",
			u.Index, u.Sent.Format("15:04:05.000"), u.Status, u.Ride, u.Final, last)
	}
	fmt.Fprintln(w, "\ntargets:")
	for _, t := range r.Targets {
		met := "MET"
		if !t.Met {
			met = "NOT MET"
		}
		fmt.Fprintf(w, "  %-34s want %-8s got %-30s %s\n", t.Name, t.Want, t.Got, met)
	}
}

func secs(v float64) string {
	if v < 0 {
		return "stuck"
	}
	return fmt.Sprintf("%.2f", v)
}

func rateString(r rate) string {
	return fmt.Sprintf("%.1f%% (%d/%d)", 100*r.Rate, r.Matched, r.Requests)
}
