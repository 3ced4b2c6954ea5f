package sim_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/internal/engine"
	"github.com/hexdispatch/hexdispatch/sim"
)

// TestRunCityAgainstEngine drives a small synthetic city through a real
// in-process engine under the race detector: every request is created,
// the ride events pass the invariants, and the KPIs add up. Match rates
// are judged by cmd/citysim's test on real data, without instrumentation.
func TestRunCityAgainstEngine(t *testing.T) {
	const speed = 10
	ctx := context.Background()
	target := startEngine(t, func(ec *engine.Config) {
		ec.OfferTimeout, ec.SearchDeadline = 10*time.Second/speed, 60*time.Second/speed
	})

	demand, err := sim.Synthetic(sim.SanFrancisco(), 900, time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultCityConfig()
	cfg.Demand, cfg.From, cfg.To, cfg.Drain, cfg.WarmUp = demand, 0, time.Minute, 20*time.Second, 10*time.Second
	cfg.Drivers, cfg.Speed, cfg.Seed, cfg.Snapshots = 40, speed, 3, []time.Duration{30 * time.Second}
	s, shots, err := sim.RunCity(ctx, target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("requests %d created %d matched %d no_driver %d rejected %v invariants %+v",
		s.Requests, s.Created, s.Matched, s.NoDriver, s.Rejected, s.Invariants)
	if s.Requests != len(demand.Requests) || s.Created == 0 {
		t.Errorf("requests %d of %d, created %d", s.Requests, len(demand.Requests), s.Created)
	}
	if !s.Invariants.Checked || !s.Invariants.OK() {
		t.Errorf("invariants: %+v", s.Invariants)
	}
	if s.Matched > s.Created || s.Completed > s.Matched || len(s.Timeline) != 2 {
		t.Errorf("KPIs do not add up: %+v", s)
	}
	if err := sim.WriteOutputs(t.TempDir(), s, shots); err != nil {
		t.Fatal(err)
	}
}

// startEngine runs an in-process engine (4 partitions, embedded Kafka and
// Redis; tune edits its config) until the test ends, and returns it as a
// simulation target; with a virtual clock in the config, a deterministic
// one.
func startEngine(t *testing.T, tune func(*engine.Config)) sim.Target {
	t.Helper()
	ec := engine.DefaultConfig()
	ec.Addr, ec.TokenSecret, ec.Partitions = "127.0.0.1:0", "city-test-secret-0123456789", 4
	tune(&ec)
	ctx, cancel := context.WithCancel(context.Background())
	e, err := engine.New(ctx, ec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
	})
	signer := e.Signer()
	target := sim.Target{BaseURL: "http://" + e.Addr().String(), Brokers: e.Brokers(),
		Mint: func(sub string, role dispatch.Role) (string, error) {
			return signer.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
		}}
	if v, ok := ec.Clock.(*clock.Virtual); ok {
		target.Clock, target.Quiesce = v, e.Quiesce
	}
	return target
}
