package sim

import (
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/positions"
)

// lifecycle returns the events of one ride through the given kinds, one
// second apart from start.
func lifecycle(id dispatch.RideID, driver positions.DriverID, start time.Time, kinds ...dispatch.EventKind) []dispatch.RideEvent {
	evs := []dispatch.RideEvent{{Ride: id, Version: 1, Kind: "requested", To: dispatch.Requested, At: start}}
	state := dispatch.Requested
	for i, k := range kinds {
		next, err := dispatch.Next(state, k)
		if err != nil {
			panic(err)
		}
		e := dispatch.RideEvent{Ride: id, Version: uint64(i + 2), Kind: k.String(), From: state, To: next,
			At: start.Add(time.Duration(i+1) * time.Second)}
		if k >= dispatch.EvOffer {
			e.Driver = driver
		}
		evs = append(evs, e)
		state = next
	}
	return evs
}

var fullTrip = []dispatch.EventKind{dispatch.EvSearch, dispatch.EvOffer, dispatch.EvAccept, dispatch.EvArrive, dispatch.EvStart, dispatch.EvComplete}

func TestCheckRidesAcceptsCleanHistory(t *testing.T) {
	t0 := time.Date(2014, 4, 30, 18, 0, 0, 0, time.UTC)
	var evs []dispatch.RideEvent
	evs = append(evs, lifecycle("r1", "d1", t0, fullTrip...)...)
	// the same driver again after r1 completed, and a resent event
	evs = append(evs, lifecycle("r2", "d1", t0.Add(time.Minute), fullTrip...)...)
	evs = append(evs, evs[3])
	evs = append(evs, lifecycle("r3", "", t0, dispatch.EvSearch, dispatch.EvNoDriver)...)
	rep := CheckRides(evs, map[dispatch.RideID]dispatch.State{"r1": dispatch.Completed, "r2": dispatch.InTrip, "r3": dispatch.NoDriver})
	if !rep.OK() || rep.Rides != 3 {
		t.Fatalf("clean history: %+v", rep)
	}
}

func TestCheckRidesFindsViolations(t *testing.T) {
	t0 := time.Date(2014, 4, 30, 18, 0, 0, 0, time.UTC)
	t.Run("double assignment", func(t *testing.T) {
		evs := lifecycle("r1", "d1", t0, fullTrip...)
		evs = append(evs, lifecycle("r2", "d1", t0.Add(2*time.Second), fullTrip...)...) // accepted while on r1
		rep := CheckRides(evs, nil)
		if rep.DoubleAssignment != 1 {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("gap", func(t *testing.T) {
		evs := lifecycle("r1", "d1", t0, fullTrip...)
		evs = append(evs[:2], evs[3:]...)
		if rep := CheckRides(evs, nil); rep.Inconsistent != 1 || rep.Violations[0].Kind != "gap" {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("illegal transition", func(t *testing.T) {
		evs := lifecycle("r1", "d1", t0, dispatch.EvSearch, dispatch.EvOffer)
		evs = append(evs, dispatch.RideEvent{Ride: "r1", Version: 4, Kind: "complete", From: dispatch.Offered, To: dispatch.Completed, At: t0})
		if rep := CheckRides(evs, nil); rep.Inconsistent != 1 || rep.Violations[0].Kind != "bad_transition" {
			t.Fatalf("%+v", rep)
		}
	})
	t.Run("lost", func(t *testing.T) {
		evs := lifecycle("r1", "d1", t0, dispatch.EvSearch, dispatch.EvOffer)
		seen := map[dispatch.RideID]dispatch.State{"r1": dispatch.Accepted, "r9": dispatch.Searching}
		if rep := CheckRides(evs, seen); rep.Lost != 2 {
			t.Fatalf("%+v", rep)
		}
	})
}

func TestQuantiles(t *testing.T) {
	q := quantiles([]float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10})
	if q.N != 10 || q.P50 != 5 || q.P90 != 9 || q.P99 != 10 || q.Max != 10 || q.Mean != 5.5 {
		t.Fatalf("%+v", q)
	}
	if (quantiles(nil) != Quantiles{}) {
		t.Fatal("empty sample")
	}
}
