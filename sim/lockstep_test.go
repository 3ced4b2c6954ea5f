package sim_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/internal/engine"
	"github.com/hexdispatch/hexdispatch/sim"
)

// runDeterministic runs cfg against a fresh in-process engine on a virtual
// clock, in deterministic mode.
func runDeterministic(t *testing.T, cfg sim.CityConfig, policy string) sim.Summary {
	t.Helper()
	target := startEngine(t, func(ec *engine.Config) {
		ec.Policy, ec.Clock = policy, clock.NewVirtual(time.Now())
	})
	s, _, err := sim.RunCity(context.Background(), target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Deterministic || !s.Invariants.Checked || !s.Invariants.OK() {
		t.Fatalf("deterministic %v, invariants %+v", s.Deterministic, s.Invariants)
	}
	return s
}

// TestDeterministicModeRepeats runs the same synthetic city twice per
// policy in deterministic mode, under the race detector: the summaries
// agree on everything but what the wall clock decides. Supply is short of
// demand, so drivers are contended, offers are declined and searches
// retry: the order of all of it must repeat. Another seed gives another
// city.
func TestDeterministicModeRepeats(t *testing.T) {
	demand, err := sim.Synthetic(sim.SanFrancisco(), 1800, 2*time.Minute, 5)
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultCityConfig()
	cfg.Demand, cfg.From, cfg.To, cfg.Drain, cfg.WarmUp = demand, 0, 2*time.Minute, 2*time.Minute, 20*time.Second
	cfg.Drivers, cfg.Speed, cfg.Seed, cfg.Accept = 25, 1000, 11, 0.8
	var greedy sim.Summary
	for _, policy := range []string{"greedy", "batched"} {
		t.Run(policy, func(t *testing.T) {
			a := runDeterministic(t, cfg, policy)
			if policy == "greedy" {
				greedy = a
			}
			b := runDeterministic(t, cfg, policy)
			ja, _ := json.Marshal(a.Comparable())
			jb, _ := json.Marshal(b.Comparable())
			if string(ja) != string(jb) {
				t.Fatalf("same seed, different summaries:\n%s\n%s", ja, jb)
			}
			if a.Created < 40 || a.Matched == 0 || a.OffersDeclined == 0 {
				t.Fatalf("the city did not exercise the engine: %s", ja)
			}
			t.Logf("%s: requests %d matched %d no_driver %d declined %d, wall %.1f s and %.1f s",
				policy, a.Requests, a.Matched, a.NoDriver, a.OffersDeclined, a.WallSeconds, b.WallSeconds)
		})
	}
	other := cfg
	other.Seed = 12
	ja, _ := json.Marshal(greedy.Comparable())
	jc, _ := json.Marshal(runDeterministic(t, other, "greedy").Comparable())
	if string(ja) == string(jc) {
		t.Fatal("seeds 11 and 12 gave the same summary")
	}
}
