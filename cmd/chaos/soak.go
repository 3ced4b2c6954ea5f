package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/sim"
)

const (
	// stableFor is how long a recovered state must hold to count.
	stableFor = 2 * time.Second
	// recoveryCap bounds the wait for one fault's recovery; beyond it the
	// fault is reported stuck and the soak goes on.
	recoveryCap = 60 * time.Second
	// sampleEvery is the monitor's period.
	sampleEvery = 100 * time.Millisecond
)

// monitor samples the engine's partitions every sampleEvery. The list is
// append-only and guarded by mu.
type monitor struct {
	c    *cluster
	mu   sync.Mutex
	list []sample
}

func (m *monitor) run(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		s := sampleOf(m.c.health(ctx))
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.list = append(m.list, s)
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// since returns the samples taken at or after t.
func (m *monitor) since(t time.Time) []sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := sort.Search(len(m.list), func(i int) bool { return !m.list[i].at.Before(t) })
	return append([]sample(nil), m.list[i:]...)
}

// soak runs one simulation against a fresh cluster, with the fault loop
// when faults is set, and checks the invariants afterwards. Every child
// process is killed and reaped before it returns.
func soak(ctx context.Context, cfg config, name string, faults bool, stderr io.Writer) (*runReport, error) {
	dir := filepath.Join(cfg.out, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	started := time.Now()
	fmt.Fprintf(stderr, "chaos: %s: starting redis-server, devbroker, %d workers and the api (logs in %s)\n", name, cfg.workers, filepath.Join(dir, "logs"))
	c, err := startCluster(ctx, cfg, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer c.close()
	signer, err := dispatch.NewSigner([]byte(cfg.secret))
	if err != nil {
		return nil, err
	}
	mint := minter(signer)

	var wg sync.WaitGroup
	defer wg.Wait() // runs after cancel: deferred calls run last first
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mon := &monitor{c: c}
	pr := newProber(c.baseURL, mint)
	wg.Add(2)
	go func() { defer wg.Done(); mon.run(gctx) }()
	go func() { defer wg.Done(); pr.run(gctx) }()

	city, err := cfg.cityConfig()
	if err != nil {
		return nil, err
	}
	if cfg.progress {
		city.Progress = stderr
	}
	fmt.Fprintf(stderr, "chaos: %s: %d requests over %v with %d drivers at %gx (api %s)\n", name,
		len(city.Demand.Requests), cfg.demandSpan(), cfg.drivers, cfg.speed, c.baseURL)
	simStart := time.Now()
	type simOut struct {
		s   sim.Summary
		err error
	}
	simDone := make(chan simOut, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, _, err := sim.RunCity(gctx, sim.Target{BaseURL: c.baseURL, Mint: mint}, city)
		simDone <- simOut{s, err}
	}()

	rep := &runReport{Name: name}
	warmEnd := simStart.Add(cfg.warm)
	demandEnd := warmEnd.Add(cfg.demandSpan())
	if faults {
		phaseStart, phaseEnd := warmEnd.Add(5*time.Second), demandEnd.Add(-5*time.Second)
		sched := plan(scheduleConfig{Phase: phaseEnd.Sub(phaseStart), Every: cfg.every, Workers: cfg.workers,
			RedisDown: cfg.redisDown, BrokerDown: cfg.brokerDown, Seed: cfg.seed})
		rep.Faults, rep.Skipped = faultLoop(gctx, c, mon, pr, sched, phaseStart, phaseEnd, started, stderr)
	}
	so := <-simDone
	rep.Summary = so.s
	if so.err != nil {
		rep.Error = so.err.Error()
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	fmt.Fprintf(stderr, "chaos: %s: simulation done (%d requests, %d matched); checking the ride events\n", name, so.s.Requests, so.s.Matched)

	seen := map[dispatch.RideID]dispatch.State{}
	for _, o := range so.s.Outcomes {
		if o.Ride != "" {
			seen[o.Ride] = o.Final
		}
	}
	cancel() // stop the probes and the monitor before reading the events
	wg.Wait()
	for _, id := range pr.rides() {
		seen[id] = 0 // created: must have events
	}
	rep.Probes, rep.ProbeOK = pr.counts()
	var events []dispatch.RideEvent
	rep.Invariants, events, err = checkRides(ctx, []string{c.kafka}, seen)
	if err != nil {
		rep.Error = fmt.Sprintf("invariant check: %v", err)
	}
	rep.Unmatched = unmatchedRides(so.s.Outcomes, events, 20)
	expected := cfg.drivers + probeDrivers
	tol := max(2, expected/200)
	rep.Missing = driversMissing(mon.since(warmEnd), expected, tol, warmEnd, demandEnd, cfg.ttl+cfg.rebuildBound)
	rep.WallS = round3(time.Since(started).Seconds())
	return rep, nil
}

// faultLoop injects the schedule, waiting after each fault until the
// engine recovered (or recoveryCap passed) and, for a worker kill,
// restarting the worker and waiting for it to rejoin. A fault whose time
// comes after phaseEnd is skipped.
func faultLoop(ctx context.Context, c *cluster, mon *monitor, pr *prober, sched []plannedFault,
	phaseStart, phaseEnd, soakStart time.Time, stderr io.Writer) ([]faultRecord, int) {
	var out []faultRecord
	for i, f := range sched {
		if !sleepUntil(ctx, phaseStart.Add(f.At)) {
			return out, 0
		}
		if time.Now().After(phaseEnd) {
			return out, len(sched) - i
		}
		rec := inject(ctx, c, mon, pr, f, len(out)+1, soakStart)
		if ctx.Err() != nil {
			return out, 0
		}
		out = append(out, rec)
		fmt.Fprintf(stderr, "chaos: fault %d %s %s at %.1f s: down %.1f s, recovered in %s (ready %s, registered %s, probe %s)",
			rec.N, rec.Kind, rec.Target, rec.AtS, rec.DownS, secs(rec.RecoveryS), secs(rec.ReadyS), secs(rec.RegisteredS), secs(rec.ProbeS))
		if f.Kind == workerKill {
			fmt.Fprintf(stderr, ", rejoined in %s", secs(rec.RejoinS))
		}
		if rec.Error != "" {
			fmt.Fprintf(stderr, " error: %s", rec.Error)
		}
		fmt.Fprintln(stderr)
	}
	return out, 0
}

// inject applies one fault, ends it, and measures the recovery.
func inject(ctx context.Context, c *cluster, mon *monitor, pr *prober, f plannedFault, n int, soakStart time.Time) faultRecord {
	rec := faultRecord{N: n, Kind: string(f.Kind), Injected: time.Now()}
	rec.AtS = round3(rec.Injected.Sub(soakStart).Seconds())
	var end time.Time
	switch f.Kind {
	case workerKill:
		rec.Target = c.workers[f.Worker].name
		c.killWorker(f.Worker)
		end = time.Now()
	case redisRestart:
		rec.Target = "redis"
		c.redis.stop()
		sleepUntil(ctx, rec.Injected.Add(f.Down))
		if err := c.redis.start(ctx); err != nil {
			rec.Error = err.Error()
		}
		end = time.Now()
	case brokerPause:
		rec.Target = "devbroker"
		if err := c.broker.pause(); err != nil {
			rec.Error = err.Error()
		}
		sleepUntil(ctx, rec.Injected.Add(f.Down))
		if err := c.broker.resume(); err != nil {
			rec.Error = err.Error()
		}
		end = time.Now()
	}
	if f.Kind != workerKill {
		rec.DownS = round3(end.Sub(rec.Injected).Seconds())
	}
	rec.windowFrom = rec.Injected
	rec.RecoveryS, rec.ReadyS, rec.RegisteredS, rec.ProbeS = waitRecovery(ctx, mon, pr, end)
	if rec.RecoveryS >= 0 {
		rec.windowTo = end.Add(time.Duration(rec.RecoveryS * float64(time.Second)))
	} else {
		rec.windowTo = end.Add(recoveryCap)
	}
	if f.Kind == workerKill {
		restarted := time.Now()
		if err := c.startWorker(ctx, f.Worker); err != nil {
			rec.Error = fmt.Sprintf("restart %s: %v", rec.Target, err)
			rec.RejoinS = -1
			return rec
		}
		name := rec.Target
		rec.RejoinS = -1
		for ctx.Err() == nil && time.Since(restarted) < recoveryCap+stableFor {
			t, ok := firstStable(mon.since(restarted), restarted, stableFor, func(s sample) bool { return s.registered && s.held[name] > 0 })
			if ok {
				rec.RejoinS = round3(t.Sub(restarted).Seconds())
				break
			}
			sleepUntil(ctx, time.Now().Add(sampleEvery))
		}
	}
	return rec
}

// waitRecovery waits until the partitions are covered (ready and
// registered, stable) and a probe sent after end got its offer, or
// recoveryCap passes. It returns the recovery and its parts in seconds
// from end; -1 for what did not happen within the cap.
func waitRecovery(ctx context.Context, mon *monitor, pr *prober, end time.Time) (recovery, ready, registered, probe float64) {
	since := func(t time.Time, ok bool) float64 {
		if !ok {
			return -1
		}
		return round3(max(0, t.Sub(end).Seconds()))
	}
	for {
		samples := mon.since(end)
		tReady, okReady := firstStable(samples, end, stableFor, func(s sample) bool { return s.ready })
		tReg, okReg := firstStable(samples, end, stableFor, func(s sample) bool { return s.registered })
		tProbe, okProbe := pr.firstSuccessAfter(end)
		ready, registered, probe = since(tReady, okReady), since(tReg, okReg), since(tProbe, okProbe)
		if okReg && okProbe {
			return max(registered, probe), ready, registered, probe
		}
		if ctx.Err() != nil || time.Since(end) > recoveryCap+stableFor {
			return -1, ready, registered, probe
		}
		sleepUntil(ctx, time.Now().Add(sampleEvery))
	}
}

// sleepUntil waits until t; false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// checkRides reads the ride-events topic and checks it against what the
// clients saw. The relay moves events as they happen and sweeps leftovers
// every 5 s, so it polls until the check passes or 30 s have passed.
// It also returns the events it read last.
func checkRides(ctx context.Context, brokers []string, seen map[dispatch.RideID]dispatch.State) (sim.InvariantReport, []dispatch.RideEvent, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		events, bad, err := sim.ReadRideEvents(rctx, brokers, dispatch.DefaultRideEventsTopic)
		cancel()
		if err != nil {
			return sim.InvariantReport{}, nil, err
		}
		rep := sim.CheckRides(events, seen)
		rep.Inconsistent += bad
		if rep.OK() || time.Now().After(deadline) {
			return rep, events, nil
		}
		if !sleepUntil(ctx, time.Now().Add(time.Second)) {
			return rep, events, ctx.Err()
		}
	}
}

// unmatchedRide is a simulated request no driver accepted, with its ride
// events, so a failed match can be read without the broker.
type unmatchedRide struct {
	Index   int       `json:"index"`
	Sent    time.Time `json:"sent"`
	Status  int       `json:"last_http_status"`
	Ride    string    `json:"ride,omitempty"`
	Final   string    `json:"final_seen,omitempty"`
	History []string  `json:"events,omitempty"` // "v1 requested -> requested at 15:04:05.000"
}

// unmatchedRides lists up to limit unmatched requests with their events.
func unmatchedRides(outs []sim.Outcome, events []dispatch.RideEvent, limit int) []unmatchedRide {
	byRide := map[dispatch.RideID][]dispatch.RideEvent{}
	for _, e := range events {
		byRide[e.Ride] = append(byRide[e.Ride], e)
	}
	var out []unmatchedRide
	for _, o := range outs {
		if o.Matched || len(out) >= limit {
			continue
		}
		u := unmatchedRide{Index: o.Index, Sent: o.Sent.UTC(), Status: o.Status, Ride: string(o.Ride)}
		if o.Final.Valid() {
			u.Final = o.Final.String()
		}
		evs := byRide[o.Ride]
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Version < evs[j].Version })
		for _, e := range evs {
			u.History = append(u.History, fmt.Sprintf("v%d %s -> %s at %s", e.Version, e.Kind, e.To, e.At.UTC().Format("15:04:05.000")))
		}
		out = append(out, u)
	}
	return out
}

func minter(s *dispatch.Signer) func(string, dispatch.Role) (string, error) {
	exp := time.Now().Add(24 * time.Hour)
	return func(sub string, role dispatch.Role) (string, error) {
		return s.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: exp})
	}
}
