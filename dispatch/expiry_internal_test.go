package dispatch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

type noSend struct{}

func (noSend) Send(positions.DriverID, any) bool { return false }

type noDriver struct{}

func (noDriver) Match(context.Context, matcher.MatchRequest) (matcher.Match, error) {
	return matcher.Match{}, matcher.ErrNoDriver
}

// TestTripSweepDropsStaleEntries: entries left behind by a write that
// failed after tracking, or by a lost untrack, are dropped or re-scored,
// never expire a ride that is progressing; and a step taken between the
// sweep's read and its write wins.
func TestTripSweepDropsStaleEntries(t *testing.T) {
	ctx := context.Background()
	s, rdb := newRedisStore(t)
	leases, err := matcher.NewLeases(rdb, matcher.DefaultLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	now := t0.Add(time.Hour)
	xc := DefaultDispatcherConfig()
	xc.Store, xc.Finder, xc.Leases, xc.Notifier = s, noDriver{}, leases, noSend{}
	xc.Now = func() time.Time { return now }
	xc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := NewDispatcher(xc)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mk := func(id RideID, evs ...Event) {
		t.Helper()
		r, _ := NewRide(id, "u1", geo.LatLng{Lat: 1, Lng: 1}, geo.LatLng{Lat: 2, Lng: 2}, t0)
		if _, _, err := s.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if _, err := s.Apply(ctx, id, ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	accept := []Event{{Kind: EvSearch, At: t0}, {Kind: EvOffer, Driver: "d1", At: t0}, {Kind: EvAccept, Driver: "d1", At: t0}}
	// searching, yet tracked as accepted (its accept write failed).
	mk("never-accepted", Event{Kind: EvSearch, At: t0})
	s.trackTrip(ctx, Accepted, "never-accepted", t0)
	// accepted 50 min ago, arrived 5 min ago, still tracked as accepted
	// (the untrack was lost) and as arrived from too early a time.
	mk("arrived", append(accept, Event{Kind: EvArrive, Driver: "d1", At: now.Add(-5 * time.Minute)})...)
	s.trackTrip(ctx, Accepted, "arrived", t0)
	s.trackTrip(ctx, Arrived, "arrived", t0)
	// tracked, but gone.
	s.trackTrip(ctx, InTrip, "gone", t0.Add(-7*time.Hour))

	if n := d.Sweep(ctx); n != 0 {
		t.Fatalf("swept %d rides, want 0", n)
	}
	for st, want := range map[State]int{Accepted: 0, Arrived: 1, InTrip: 0} {
		ids, _ := s.stalledTrips(ctx, st, now, 100)
		if len(ids) != want {
			t.Errorf("%s: tracked %v, want %d entries", st, ids, want)
		}
	}
	// The arrived entry now carries the arrival time: not stalled yet.
	if ids, _ := s.stalledTrips(ctx, Arrived, now.Add(-6*time.Minute), 100); len(ids) != 0 {
		t.Errorf("arrived re-scored too early: %v", ids)
	}
	// A step between the sweep's read and its write wins over the expiry.
	mk("racing", accept...)
	_, err = s.applyChecked(ctx, "racing", Event{Kind: EvExpire, At: now}, func(cur Ride) error {
		if cur.State == Accepted { // the driver arrives just now
			if _, err := s.Apply(ctx, "racing", Event{Kind: EvArrive, Driver: "d1", At: now}); err != nil {
				t.Fatal(err)
			}
			return nil // read as still stalled: the write must lose its compare-and-set
		}
		return errMovedOn
	})
	if !errors.Is(err, errMovedOn) {
		t.Fatalf("expiry over a fresh step: %v", err)
	}
	if r, _ := s.Get(ctx, "racing"); r.State != Arrived {
		t.Fatalf("racing ride is %s", r.State)
	}
}
