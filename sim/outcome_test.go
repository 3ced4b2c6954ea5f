package sim

import (
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

func TestSummariseOutcomes(t *testing.T) {
	tr := newTracker()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	matched := &rideRec{idx: 0, req: Request{At: time.Minute}, first: t0, status: 201}
	tr.add(matched)
	tr.created(matched, "r1")
	matched.acceptedSim, matched.final = 2*time.Minute, dispatch.Completed
	refused := &rideRec{idx: 1, req: Request{At: 2 * time.Minute}, first: t0.Add(time.Second), status: 503}
	tr.add(refused)

	var s Summary
	tr.summarise(&s, 0, 10*time.Minute)
	want := []Outcome{
		{Index: 0, At: time.Minute, Sent: t0, Status: 201, Ride: "r1", Matched: true, Final: dispatch.Completed},
		{Index: 1, At: 2 * time.Minute, Sent: t0.Add(time.Second), Status: 503},
	}
	if len(s.Outcomes) != len(want) {
		t.Fatalf("outcomes %+v, want %+v", s.Outcomes, want)
	}
	for i := range want {
		if s.Outcomes[i] != want[i] {
			t.Errorf("outcome %d = %+v, want %+v", i, s.Outcomes[i], want[i])
		}
	}
}

func TestValidateRequestAttempts(t *testing.T) {
	c := DefaultCityConfig()
	c.Demand = Demand{Requests: []Request{{At: time.Minute}}, BBox: SanFrancisco().BBox}
	c.From, c.To, c.Drivers = 0, time.Hour, 1
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	c.RequestAttempts = -1
	if err := c.Validate(); err == nil {
		t.Fatal("negative RequestAttempts accepted")
	}
}
