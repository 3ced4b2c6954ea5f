package dispatch_test

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

var (
	timesSquare = geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	brooklyn    = geo.LatLng{Lat: 40.6782, Lng: -73.9442}
)

func newOutcomes(t *testing.T, clk *manualClock) *dispatch.Outcomes {
	t.Helper()
	cfg := dispatch.DefaultOutcomesConfig()
	cfg.Now = clk.Now
	o, err := dispatch.NewOutcomes(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// rideEvents is one ride's stream: requested, searching, then offered and
// accepted (eta > 0) or no_driver (eta 0).
func rideEvents(id string, pickup geo.LatLng, at time.Time, eta float64) []dispatch.RideEvent {
	ev := func(v uint64, kind string, from, to dispatch.State) dispatch.RideEvent {
		e := dispatch.RideEvent{V: 1, Ride: dispatch.RideID(id), Version: v, Kind: kind, From: from, To: to, Rider: "u",
			Pickup: pickup, At: at.Add(time.Duration(v) * time.Second)}
		if to >= dispatch.Offered && eta > 0 {
			e.Driver, e.PickupETA = positions.DriverID("d-"+id), eta
		}
		return e
	}
	out := []dispatch.RideEvent{ev(1, "requested", 0, dispatch.Requested), ev(2, "search", dispatch.Requested, dispatch.Searching)}
	if eta > 0 {
		return append(out, ev(3, "offer", dispatch.Searching, dispatch.Offered), ev(4, "accept", dispatch.Offered, dispatch.Accepted),
			ev(5, "arrive", dispatch.Accepted, dispatch.Arrived))
	}
	return append(out, ev(3, "no_driver", dispatch.Searching, dispatch.NoDriver))
}

func cellOf(t *testing.T, p geo.LatLng, res int) geo.Cell {
	t.Helper()
	c, err := geo.CellAt(p, res)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOutcomesLayers(t *testing.T) {
	clk := &manualClock{now: t0}
	o := newOutcomes(t, clk)
	var all []dispatch.RideEvent
	all = append(all, rideEvents("a", timesSquare, t0.Add(-2*time.Minute), 120)...)
	all = append(all, rideEvents("b", timesSquare, t0.Add(-time.Minute), 0)...)
	all = append(all, rideEvents("c", brooklyn, t0.Add(-3*time.Minute), 60)...)
	all = append(all, rideEvents("old", brooklyn, t0.Add(-time.Hour), 30)...) // before the window
	all = append(all, all[:5]...)                                             // ride a delivered twice
	for _, e := range all {
		if err := o.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	x, y := cellOf(t, timesSquare, 9), cellOf(t, brooklyn, 9)
	want := map[string]map[geo.Cell]float64{
		dispatch.LayerDemand:    {x: 2, y: 1},
		dispatch.LayerMatched:   {x: 1, y: 1},
		dispatch.LayerUnmatched: {x: 1},
		dispatch.LayerETA:       {x: 120, y: 60},
	}
	for layer, w := range want {
		got, err := o.Layer(layer, 9)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(w) {
			t.Fatalf("%s = %v, want %v", layer, got, w)
		}
		for c, v := range w {
			if got[c] != v {
				t.Fatalf("%s[%s] = %v, want %v", layer, c, got[c], v)
			}
		}
	}
	// Coarser resolutions sum the children; eta averages the rides.
	near := geo.LatLng{Lat: 40.7585, Lng: -73.9850}
	o.Add(rideEvents("d", near, t0.Add(-time.Minute), 60)[3])
	o.Add(rideEvents("d", near, t0.Add(-time.Minute), 60)[0])
	eta7, _ := o.Layer(dispatch.LayerETA, 7)
	if p := cellOf(t, timesSquare, 7); p != cellOf(t, near, 7) || eta7[p] != 90 {
		t.Fatalf("res 7 eta = %v, want (120+60)/2 = 90 in %s", eta7, p)
	}
	if _, err := o.Layer("nope", 9); err == nil {
		t.Fatal("unknown layer accepted")
	}
	if st := o.Stats(); st.Late != 5 || st.Bad != 0 {
		t.Fatalf("stats = %+v, want the 5 old events late", st)
	}
	if err := o.Add(dispatch.RideEvent{Ride: "bad", To: dispatch.Accepted, Pickup: geo.LatLng{Lat: 91}}); err == nil {
		t.Fatal("event with an invalid pickup accepted")
	}

	// Past the window everything is gone, and the rides are forgotten.
	clk.Add(16 * time.Minute)
	if got, _ := o.Layer(dispatch.LayerDemand, 9); len(got) != 0 {
		t.Fatalf("demand after the window = %v", got)
	}
	o.Add(rideEvents("e", brooklyn, clk.Now(), 0)[0])
	if st := o.Stats(); st.Rides != 1 || st.Cells != 1 {
		t.Fatalf("after the window: %+v, want 1 ride and 1 cell", st)
	}
}

func TestOutcomesDecayedDemand(t *testing.T) {
	clk := &manualClock{now: t0}
	o := newOutcomes(t, clk)
	// One request now, one five minutes (a half-life) ago, at the middle
	// of their buckets.
	mid := t0.Truncate(time.Minute).Add(30 * time.Second)
	clk.Set(mid)
	o.Add(rideEvents("now", timesSquare, mid, 0)[0])
	o.Add(rideEvents("then", brooklyn, mid.Add(-5*time.Minute), 0)[0])
	d := o.DecayedDemand(9)
	if a, b := d[cellOf(t, timesSquare, 9)], d[cellOf(t, brooklyn, 9)]; math.Abs(a-1) > 1e-9 || math.Abs(b-0.5) > 1e-9 {
		t.Fatalf("decayed demand now %v, a half-life ago %v: want 1 and 0.5", a, b)
	}
}

func TestSurge(t *testing.T) {
	c := cellOf(t, timesSquare, 9)
	ring, err := geo.Ring(c, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := ring[0]
	far := cellOf(t, brooklyn, 9)
	tests := []struct {
		name   string
		demand map[geo.Cell]float64
		supply map[geo.Cell]int
		want   float64
	}{
		{"no supply caps at 3", map[geo.Cell]float64{c: 10}, nil, 3},
		{"balanced", map[geo.Cell]float64{c: 2}, map[geo.Cell]int{c: 1}, 1},
		{"more supply than demand stays 1", map[geo.Cell]float64{c: 1}, map[geo.Cell]int{c: 5}, 1},
		{"three requests per driver", map[geo.Cell]float64{c: 6}, map[geo.Cell]int{c: 1}, 2},
		{"neighbour supply counts", map[geo.Cell]float64{c: 6}, map[geo.Cell]int{n: 5}, 1},
		{"neighbour demand counts", map[geo.Cell]float64{c: 3, n: 3}, map[geo.Cell]int{c: 1}, 2},
		{"far supply does not", map[geo.Cell]float64{c: 6}, map[geo.Cell]int{c: 1, far: 50}, 2},
		{"rounded to a tenth", map[geo.Cell]float64{c: 2.5}, map[geo.Cell]int{c: 1}, 1.1},
	}
	for _, tt := range tests {
		if got := dispatch.Surge(tt.demand, tt.supply)[c]; got != tt.want {
			t.Errorf("%s: surge = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestOutcomesConsume: the aggregator reads the ride-events topic of every
// partition (two dispatchers writing), skips a record that is not a ride
// event and counts it.
func TestOutcomesConsume(t *testing.T) {
	kc := newKafka(t)
	addrs := kc.ListenAddrs()
	o, err := dispatch.NewOutcomes(dispatch.DefaultOutcomesConfig())
	if err != nil {
		t.Fatal(err)
	}
	prod := newProducer(t, addrs, kgo.DefaultProduceTopic(dispatch.DefaultRideEventsTopic))
	now := time.Now()
	var recs []*kgo.Record
	for i, id := range []string{"p1", "p2", "p3", "p4"} {
		pickup := timesSquare
		if i%2 == 1 {
			pickup = brooklyn
		}
		for _, e := range rideEvents(id, pickup, now.Add(-time.Minute), 90) {
			b, _ := json.Marshal(e)
			recs = append(recs, &kgo.Record{Key: []byte(id), Value: b})
		}
	}
	recs = append(recs, &kgo.Record{Key: []byte("junk"), Value: []byte("{not json")})
	if err := prod.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cons := newProducer(t, addrs, o.OutcomesConsumerOpts(dispatch.DefaultRideEventsTopic)...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Consume(ctx, cons) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for o.Stats().Events+o.Stats().Bad < uint64(len(recs)) {
		if time.Now().After(deadline) {
			t.Fatalf("consumed %+v of %d records", o.Stats(), len(recs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	m, _ := o.Layer(dispatch.LayerMatched, 9)
	if m[cellOf(t, timesSquare, 9)] != 2 || m[cellOf(t, brooklyn, 9)] != 2 {
		t.Fatalf("matched = %v, want 2 and 2", m)
	}
	if st := o.Stats(); st.Bad != 1 {
		t.Fatalf("stats = %+v, want the junk record counted bad", st)
	}
}

// FuzzRideEventRecord feeds arbitrary ride-events record values to the ops
// aggregator, as Consume does: a record either decodes into an event the
// aggregator takes or is refused with an error, never a panic, and the
// layers stay finite and non-negative.
func FuzzRideEventRecord(f *testing.F) {
	for _, e := range rideEvents("r1", timesSquare, t0, 90) {
		b, _ := json.Marshal(e)
		f.Add(b)
	}
	f.Add([]byte(`{"ride":"x","to":"no_driver","pickup":{"lat":91,"lng":0}}`))
	f.Add([]byte(`{"ride":"x","to":"accepted","pickup":{"lat":0,"lng":0},"pickup_eta_s":-1e308,"at":"2026-11-23T18:00:00Z"}`))
	f.Add([]byte(`{"ride":"","to":"weird"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, value []byte) {
		clk := &manualClock{now: t0}
		o := newOutcomes(t, clk)
		var e dispatch.RideEvent
		if json.Unmarshal(value, &e) != nil {
			return
		}
		o.Add(e)
		for _, layer := range dispatch.OutcomeLayers {
			m, err := o.Layer(layer, 9)
			if err != nil {
				t.Fatal(err)
			}
			for c, v := range m {
				if math.IsNaN(v) || math.IsInf(v, 0) || (layer != dispatch.LayerETA && v < 0) {
					t.Fatalf("%s[%s] = %v from %q", layer, c, v, value)
				}
			}
		}
	})
}
