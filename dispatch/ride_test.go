package dispatch_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

var (
	t0      = time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	pickup  = geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	dropoff = geo.LatLng{Lat: 40.6413, Lng: -73.7781}
)

var allStates = []dispatch.State{dispatch.Requested, dispatch.Searching, dispatch.Offered, dispatch.Accepted,
	dispatch.Arrived, dispatch.InTrip, dispatch.Completed, dispatch.CancelledByRider, dispatch.CancelledByDriver,
	dispatch.NoDriver, dispatch.Expired}

var allEvents = []dispatch.EventKind{dispatch.EvSearch, dispatch.EvOffer, dispatch.EvDecline, dispatch.EvOfferTimeout,
	dispatch.EvAccept, dispatch.EvArrive, dispatch.EvStart, dispatch.EvComplete, dispatch.EvRiderCancel,
	dispatch.EvDriverCancel, dispatch.EvNoDriver, dispatch.EvExpire}

// TestEveryTransition checks the full state x event table: the legal ones
// and, by omission, that every other pair is refused.
func TestEveryTransition(t *testing.T) {
	legal := map[dispatch.State]map[dispatch.EventKind]dispatch.State{
		dispatch.Requested: {dispatch.EvSearch: dispatch.Searching, dispatch.EvRiderCancel: dispatch.CancelledByRider, dispatch.EvExpire: dispatch.Expired},
		dispatch.Searching: {dispatch.EvOffer: dispatch.Offered, dispatch.EvNoDriver: dispatch.NoDriver, dispatch.EvRiderCancel: dispatch.CancelledByRider, dispatch.EvExpire: dispatch.Expired},
		dispatch.Offered: {dispatch.EvAccept: dispatch.Accepted, dispatch.EvDecline: dispatch.Searching, dispatch.EvOfferTimeout: dispatch.Searching,
			dispatch.EvRiderCancel: dispatch.CancelledByRider, dispatch.EvExpire: dispatch.Expired},
		dispatch.Accepted: {dispatch.EvArrive: dispatch.Arrived, dispatch.EvRiderCancel: dispatch.CancelledByRider, dispatch.EvDriverCancel: dispatch.CancelledByDriver, dispatch.EvExpire: dispatch.Expired},
		dispatch.Arrived:  {dispatch.EvStart: dispatch.InTrip, dispatch.EvRiderCancel: dispatch.CancelledByRider, dispatch.EvDriverCancel: dispatch.CancelledByDriver, dispatch.EvExpire: dispatch.Expired},
		dispatch.InTrip:   {dispatch.EvComplete: dispatch.Completed, dispatch.EvExpire: dispatch.Expired},
	}
	for _, s := range allStates {
		for _, k := range allEvents {
			got, err := dispatch.Next(s, k)
			want, ok := legal[s][k]
			switch {
			case ok && (err != nil || got != want):
				t.Errorf("%s + %s = %s, %v; want %s", s, k, got, err, want)
			case !ok && !errors.Is(err, dispatch.ErrIllegalTransition):
				t.Errorf("%s + %s = %s, %v; want ErrIllegalTransition", s, k, got, err)
			}
		}
		if s.Terminal() != (len(legal[s]) == 0) {
			t.Errorf("%s: Terminal() = %v but it has %d exits", s, s.Terminal(), len(legal[s]))
		}
	}
}

func TestHappyPathAndDriverChecks(t *testing.T) {
	r, err := dispatch.NewRide("r1", "u1", pickup, dropoff, t0)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		ev      dispatch.Event
		want    dispatch.State
		wantErr error
	}{
		{dispatch.Event{Kind: dispatch.EvSearch}, dispatch.Searching, nil},
		{dispatch.Event{Kind: dispatch.EvOffer}, dispatch.Searching, dispatch.ErrInvalidRide}, // no driver named
		{dispatch.Event{Kind: dispatch.EvOffer, Driver: "d1"}, dispatch.Offered, nil},
		{dispatch.Event{Kind: dispatch.EvAccept, Driver: "d2"}, dispatch.Offered, dispatch.ErrIllegalTransition}, // not the offered driver
		{dispatch.Event{Kind: dispatch.EvDecline, Driver: "d1"}, dispatch.Searching, nil},
		{dispatch.Event{Kind: dispatch.EvOffer, Driver: "d2"}, dispatch.Offered, nil},
		{dispatch.Event{Kind: dispatch.EvAccept, Driver: "d2"}, dispatch.Accepted, nil},
		{dispatch.Event{Kind: dispatch.EvComplete, Driver: "d2"}, dispatch.Accepted, dispatch.ErrIllegalTransition}, // skipping ahead
		{dispatch.Event{Kind: dispatch.EvArrive, Driver: "d2"}, dispatch.Arrived, nil},
		{dispatch.Event{Kind: dispatch.EvStart, Driver: "d2"}, dispatch.InTrip, nil},
		{dispatch.Event{Kind: dispatch.EvRiderCancel}, dispatch.InTrip, dispatch.ErrIllegalTransition}, // too late
		{dispatch.Event{Kind: dispatch.EvComplete, Driver: "d2"}, dispatch.Completed, nil},
	}
	for i, s := range steps {
		before := r
		err := r.Apply(s.ev)
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("step %d (%s): err = %v, want %v", i, s.ev.Kind, err, s.wantErr)
			}
			if r != before {
				t.Fatalf("step %d: a refused event changed the ride", i)
			}
		} else if err != nil {
			t.Fatalf("step %d (%s): %v", i, s.ev.Kind, err)
		}
		if r.State != s.want {
			t.Fatalf("step %d (%s): state %s, want %s", i, s.ev.Kind, r.State, s.want)
		}
	}
	if r.Offers != 2 || r.Declines != 1 || r.Driver != "d2" || r.Version != 9 {
		t.Fatalf("ride = %+v", r)
	}
}

func TestNewRideValidation(t *testing.T) {
	if _, err := dispatch.NewRide("", "u", pickup, dropoff, t0); !errors.Is(err, dispatch.ErrInvalidRide) {
		t.Errorf("empty id: %v", err)
	}
	if _, err := dispatch.NewRide("r", "", pickup, dropoff, t0); !errors.Is(err, dispatch.ErrInvalidRide) {
		t.Errorf("empty rider: %v", err)
	}
	_, err := dispatch.NewRide("r", "u", geo.LatLng{Lat: 95}, dropoff, t0)
	if !errors.Is(err, dispatch.ErrInvalidRide) || !errors.Is(err, geo.ErrInvalidLatLng) {
		t.Errorf("bad pickup: %v", err)
	}
}

func TestStateText(t *testing.T) {
	for _, s := range allStates {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back dispatch.State
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Fatalf("%s round trip: %v, %v", s, back, err)
		}
	}
	var s dispatch.State
	if err := s.UnmarshalText([]byte("teleported")); !errors.Is(err, dispatch.ErrInvalidRide) {
		t.Fatalf("unknown state: %v", err)
	}
}

// TestRandomEventsNeverBreakTheMachine throws random events (legal or not,
// from the right driver or not) at many rides: a refused event never changes
// a ride, every ride stays in a valid state, terminal rides stay put, and a
// ride is never lost (each one ends or is still live).
func TestRandomEventsNeverBreakTheMachine(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	drivers := []positions.DriverID{"", "d1", "d2", "d3"}
	for n := range 500 {
		r, err := dispatch.NewRide(dispatch.RideID("r"+strconv.Itoa(n)), "u", pickup, dropoff, t0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 60 {
			before := r
			ev := dispatch.Event{Kind: allEvents[rng.IntN(len(allEvents))], Driver: drivers[rng.IntN(len(drivers))], At: t0.Add(time.Duration(i) * time.Second)}
			err := r.Apply(ev)
			switch {
			case err != nil && r != before:
				t.Fatalf("ride %d: refused %s changed the ride", n, ev.Kind)
			case err == nil && r.Version != before.Version+1:
				t.Fatalf("ride %d: version %d after %d", n, r.Version, before.Version)
			case !r.State.Valid():
				t.Fatalf("ride %d: invalid state %d", n, r.State)
			case before.State.Terminal() && err == nil:
				t.Fatalf("ride %d: left terminal state %s by %s", n, before.State, ev.Kind)
			case (r.State == dispatch.Offered || r.State == dispatch.Accepted || r.State == dispatch.Arrived || r.State == dispatch.InTrip) && r.Driver == "":
				t.Fatalf("ride %d: %s without a driver", n, r.State)
			}
		}
	}
}

func TestFanOutAcceptReassignsTheDriver(t *testing.T) {
	r, err := dispatch.NewRide("r1", "u1", geo.LatLng{Lat: 1, Lng: 1}, geo.LatLng{Lat: 2, Lng: 2}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []dispatch.Event{{Kind: dispatch.EvSearch}, {Kind: dispatch.EvOffer, Driver: "a"}} {
		if err := r.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Apply(dispatch.Event{Kind: dispatch.EvAccept, Driver: "b"}); err == nil {
		t.Fatal("accept by another driver without FanOut was applied")
	}
	if err := r.Apply(dispatch.Event{Kind: dispatch.EvAccept, Driver: "b", FanOut: true, Token: 7}); err != nil {
		t.Fatal(err)
	}
	if r.State != dispatch.Accepted || r.Driver != "b" || r.LeaseToken != 7 {
		t.Fatalf("%+v", r)
	}
	if err := r.Apply(dispatch.Event{Kind: dispatch.EvArrive, Driver: "a"}); err == nil {
		t.Fatal("the replaced driver stepped the ride")
	}
}

// TestOfferCarriesPickupETA: the offer's ETA lands on the ride and on its
// ride-events record with the pickup, which the ops heatmap reads.
func TestOfferCarriesPickupETA(t *testing.T) {
	r, err := dispatch.NewRide("r1", "u1", pickup, dropoff, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []dispatch.Event{{Kind: dispatch.EvSearch}, {Kind: dispatch.EvOffer, Driver: "d1", ETA: 95 * time.Second}} {
		if err := r.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	if r.PickupETA != 95 {
		t.Fatalf("PickupETA = %v, want 95", r.PickupETA)
	}
	e := dispatch.NewRideEvent(r, "offer", dispatch.Searching)
	if e.Pickup != pickup || e.PickupETA != 95 || e.Driver != "d1" {
		t.Fatalf("event = %+v, want the pickup, ETA 95 and driver d1", e)
	}
}
