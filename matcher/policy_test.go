package matcher_test

import (
	"context"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func TestSwitchRoutesByRegion(t *testing.T) {
	x := newCrossing(t)
	l, _, _ := newLeases(t)
	b := newBatcher(t, x.g, l, 100*time.Millisecond, 256)
	g, err := matcher.NewGreedy(x.g, l, matcher.DefaultGreedyConfig())
	if err != nil {
		t.Fatal(err)
	}
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 4}
	s, err := matcher.NewSwitch(g, b, pt, matcher.PolicyGreedy)
	if err != nil {
		t.Fatal(err)
	}
	region, _ := geo.ShardCell(x.r1, pt.ShardRes)
	if s.PolicyFor(x.r1) != matcher.PolicyGreedy {
		t.Fatal("default policy not used")
	}
	if err := s.SetRegion(region, matcher.PolicyBatched); err != nil {
		t.Fatal(err)
	}
	if s.PolicyFor(x.r1) != matcher.PolicyBatched {
		t.Fatal("region override not used")
	}
	m, err := s.Match(context.Background(), matcher.MatchRequest{Ride: "r1", Pickup: x.r1})
	if err != nil || m.Driver.ID == "" {
		t.Fatalf("match: %+v %v", m, err)
	}
	if st := s.Stats(matcher.PolicyBatched); st.Requests != 1 || st.Matched != 1 || st.ETASum <= 0 {
		t.Fatalf("batched stats %+v", st)
	}
	if b.Stats().Windows != 1 {
		t.Fatal("the request did not go through a window")
	}
	// Bad changes are refused with a reason; removing the override works.
	c7, _ := geo.CellAt(x.r1, 7)
	for _, err := range []error{
		s.SetRegion(region, "fastest"),
		s.SetRegion(c7, matcher.PolicyBatched),
		s.SetRegion(geo.Cell(42), matcher.PolicyBatched),
		s.SetDefault("auction"),
	} {
		if err == nil {
			t.Error("a bad policy change was accepted")
		}
	}
	if err := s.SetRegion(region, ""); err != nil || s.PolicyFor(x.r1) != matcher.PolicyGreedy {
		t.Fatalf("override not removed: %v", err)
	}
	def, over := s.Policies()
	if def != matcher.PolicyGreedy || len(over) != 0 {
		t.Fatalf("policies %s %v", def, over)
	}
}

func TestETAQuantile(t *testing.T) {
	var st matcher.PolicyStats
	if st.ETAQuantile(0.9) != 0 {
		t.Fatal("no sample")
	}
	// 10 matches: 5 within 30 s, 4 within 2 min, 1 beyond 20 min.
	st.ETACounts[0], st.ETACounts[3], st.ETACounts[len(matcher.ETABuckets)] = 5, 4, 1
	for q, want := range map[float64]time.Duration{0.5: 30 * time.Second, 0.9: 2 * time.Minute, 0.99: 20 * time.Minute} {
		if got := st.ETAQuantile(q); got != want {
			t.Errorf("q%v = %v, want %v", q, got, want)
		}
	}
}
