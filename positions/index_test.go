package positions_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// fakeClock is a settable clock for TTL tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestIndex(t testing.TB, ttl time.Duration) (*positions.Index, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)}
	cfg := positions.DefaultConfig()
	cfg.TTL = ttl
	cfg.Now = clk.Now
	x, err := positions.NewIndex(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return x, clk
}

func mustUpsert(t *testing.T, x *positions.Index, id positions.DriverID, p geo.LatLng, st positions.Status, seq uint64, at time.Time) positions.Outcome {
	t.Helper()
	o, err := x.Upsert(id, p, st, seq, at)
	if err != nil {
		t.Fatalf("Upsert(%s, %v, seq %d): %v", id, p, seq, err)
	}
	return o
}

var sf = geo.LatLng{Lat: 37.7749, Lng: -122.4194}

func TestUpsertSequenceGuard(t *testing.T) {
	x, clk := newTestIndex(t, 30*time.Second)
	a := geo.LatLng{Lat: 37.7749, Lng: -122.4194}
	b := geo.LatLng{Lat: 37.7849, Lng: -122.4094}
	c := geo.LatLng{Lat: 37.7649, Lng: -122.4294}
	steps := []struct {
		seq  uint64
		pos  geo.LatLng
		want positions.Outcome
		at   geo.LatLng // where the driver is after the step
	}{
		{5, a, positions.Inserted, a},
		{5, b, positions.Stale, a},   // duplicate seq
		{4, c, positions.Stale, a},   // out of order
		{7, b, positions.Updated, b}, // newer, moves bucket
		{6, c, positions.Stale, b},   // late arrival of an older one
		{8, b, positions.Updated, b}, // same place, newer
	}
	for i, s := range steps {
		if got := mustUpsert(t, x, "d1", s.pos, positions.StatusAvailable, s.seq, clk.Now()); got != s.want {
			t.Fatalf("step %d (seq %d): outcome %v, want %v", i, s.seq, got, s.want)
		}
		d, ok := x.Get("d1")
		if !ok || d.Pos != s.at {
			t.Fatalf("step %d: Get = %+v, %v; want at %v", i, d, ok, s.at)
		}
	}
	if st := x.Stats(); st.Stale != 3 || st.Inserted != 1 || st.Updated != 2 {
		t.Fatalf("stats = %+v", st)
	}
	if x.Len() != 1 {
		t.Fatalf("Len = %d", x.Len())
	}
}

func TestDuplicatesAndReorderingConverge(t *testing.T) {
	// A clean stream and the same stream with duplicates and reordering
	// end in the same state.
	clean, clk := newTestIndex(t, time.Minute)
	noisy, _ := newTestIndex(t, time.Minute)
	type ev struct {
		id  positions.DriverID
		seq uint64
		p   geo.LatLng
	}
	var evs []ev
	for seq := uint64(1); seq <= 20; seq++ {
		for _, id := range []positions.DriverID{"a", "b", "c"} {
			evs = append(evs, ev{id, seq, geo.LatLng{Lat: 37.7 + float64(seq)*0.001, Lng: -122.4 - float64(len(id))*0.01}})
		}
	}
	for _, e := range evs {
		mustUpsert(t, clean, e.id, e.p, positions.StatusAvailable, e.seq, clk.Now())
	}
	// Reverse pairs and duplicate everything.
	for i := 0; i+1 < len(evs); i += 2 {
		for _, e := range []ev{evs[i+1], evs[i], evs[i+1], evs[i]} {
			mustUpsert(t, noisy, e.id, e.p, positions.StatusAvailable, e.seq, clk.Now())
		}
	}
	for _, id := range []positions.DriverID{"a", "b", "c"} {
		want, _ := clean.Get(id)
		got, _ := noisy.Get(id)
		if got != want {
			t.Fatalf("driver %s: noisy %+v, clean %+v", id, got, want)
		}
	}
}

func TestTTLBoundary(t *testing.T) {
	const ttl = 30 * time.Second
	x, clk := newTestIndex(t, ttl)
	t0 := clk.Now()
	mustUpsert(t, x, "d1", sf, positions.StatusAvailable, 1, t0)

	clk.Advance(ttl - time.Nanosecond)
	if _, ok := x.Get("d1"); !ok {
		t.Fatal("driver gone 1 ns before TTL")
	}
	if got, _ := x.Nearest(sf, 1, 100, positions.Filter{}); len(got) != 1 || got[0].Age != ttl-time.Nanosecond {
		t.Fatalf("Nearest 1 ns before TTL = %+v", got)
	}
	if n := x.Expire(); n != 0 {
		t.Fatalf("Expire before TTL dropped %d", n)
	}

	clk.Advance(time.Nanosecond) // exactly TTL old
	if _, ok := x.Get("d1"); ok {
		t.Fatal("driver still there at exactly TTL")
	}
	if got, _ := x.Nearest(sf, 1, 100, positions.Filter{}); len(got) != 0 {
		t.Fatalf("Nearest at TTL = %+v", got)
	}
	if n := x.Expire(); n != 1 || x.Len() != 0 {
		t.Fatalf("Expire at TTL dropped %d, Len %d", n, x.Len())
	}

	// A position already TTL old on arrival is dropped; one just younger
	// is kept.
	if o := mustUpsert(t, x, "d2", sf, positions.StatusAvailable, 1, clk.Now().Add(-ttl)); o != positions.TooOld {
		t.Fatalf("TTL-old upsert: %v", o)
	}
	if o := mustUpsert(t, x, "d2", sf, positions.StatusAvailable, 1, clk.Now().Add(-ttl+time.Nanosecond)); o != positions.Inserted {
		t.Fatalf("just-young upsert: %v", o)
	}
	// A future stamp counts as now, so a skewed clock cannot make a
	// driver immortal.
	mustUpsert(t, x, "d3", sf, positions.StatusAvailable, 1, clk.Now().Add(time.Hour))
	clk.Advance(ttl)
	if _, ok := x.Get("d3"); ok {
		t.Fatal("future-stamped driver outlived TTL")
	}
}

func TestExpiredDriverAcceptsRestartedSeq(t *testing.T) {
	x, clk := newTestIndex(t, 10*time.Second)
	mustUpsert(t, x, "d1", sf, positions.StatusAvailable, 900, clk.Now())
	clk.Advance(10 * time.Second)
	// The app restarted and counts from 1 again; the old state is past TTL
	// (not yet swept), so the new position wins.
	if o := mustUpsert(t, x, "d1", sf, positions.StatusEnRoute, 1, clk.Now()); o != positions.Updated {
		t.Fatalf("restarted seq: %v", o)
	}
	if d, ok := x.Get("d1"); !ok || d.Seq != 1 || d.Status != positions.StatusEnRoute {
		t.Fatalf("Get = %+v, %v", d, ok)
	}
}

func TestRemove(t *testing.T) {
	x, clk := newTestIndex(t, time.Minute)
	for i, id := range []positions.DriverID{"a", "b", "c", "d"} {
		mustUpsert(t, x, id, geo.LatLng{Lat: 37.77 + float64(i)*1e-4, Lng: -122.42}, positions.StatusAvailable, 10, clk.Now())
	}
	if o := x.Remove("b", 10); o != positions.Stale {
		t.Fatalf("remove with old seq: %v", o)
	}
	if o := x.Remove("b", 11); o != positions.Removed {
		t.Fatalf("remove: %v", o)
	}
	if o := x.Remove("b", 12); o != positions.NotFound {
		t.Fatalf("second remove: %v", o)
	}
	if o := x.Remove("a", 0); o != positions.Removed {
		t.Fatalf("unconditional remove: %v", o)
	}
	if x.Len() != 2 {
		t.Fatalf("Len = %d", x.Len())
	}
	got, err := x.Nearest(geo.LatLng{Lat: 37.77, Lng: -122.42}, 10, 1000, positions.Filter{})
	if err != nil || len(got) != 2 || got[0].ID != "c" || got[1].ID != "d" {
		t.Fatalf("Nearest after removals = %+v, %v", got, err)
	}
}

func TestUpsertRejectsBadInput(t *testing.T) {
	x, clk := newTestIndex(t, time.Minute)
	tests := []struct {
		name string
		id   positions.DriverID
		p    geo.LatLng
		st   positions.Status
		want error
	}{
		{"empty id", "", sf, positions.StatusAvailable, positions.ErrInvalidDriver},
		{"long id", positions.DriverID(make([]byte, 65)), sf, positions.StatusAvailable, positions.ErrInvalidDriver},
		{"NaN lat", "d", geo.LatLng{Lat: math.NaN()}, positions.StatusAvailable, geo.ErrInvalidLatLng},
		{"lat 90.5", "d", geo.LatLng{Lat: 90.5}, positions.StatusAvailable, geo.ErrInvalidLatLng},
		{"lng -181", "d", geo.LatLng{Lng: -181}, positions.StatusAvailable, geo.ErrInvalidLatLng},
		{"zero status", "d", sf, 0, positions.ErrInvalidStatus},
		{"unknown status", "d", sf, 99, positions.ErrInvalidStatus},
	}
	for _, tt := range tests {
		if _, err := x.Upsert(tt.id, tt.p, tt.st, 1, clk.Now()); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	if x.Len() != 0 {
		t.Fatalf("bad input was stored: Len %d", x.Len())
	}
}

func TestNearestRejectsBadQuery(t *testing.T) {
	x, _ := newTestIndex(t, time.Minute)
	for _, q := range []struct {
		c geo.LatLng
		k int
		r float64
	}{
		{geo.LatLng{Lat: 100}, 1, 10},
		{sf, 0, 10},
		{sf, positions.MaxK + 1, 10},
		{sf, 1, 0},
		{sf, 1, -5},
		{sf, 1, math.NaN()},
		{sf, 1, math.Inf(1)},
	} {
		if _, err := x.Nearest(q.c, q.k, q.r, positions.Filter{}); !errors.Is(err, positions.ErrInvalidQuery) {
			t.Errorf("Nearest(%v, %d, %v) err = %v", q.c, q.k, q.r, err)
		}
	}
}

func TestNearestFilterAndOrder(t *testing.T) {
	x, clk := newTestIndex(t, time.Minute)
	// Drivers due north of the centre every 100 m; odd ones on a trip.
	for i := 1; i <= 10; i++ {
		st := positions.StatusAvailable
		if i%2 == 1 {
			st = positions.StatusOnTrip
		}
		p := geo.LatLng{Lat: sf.Lat + float64(i)*100/111195.08, Lng: sf.Lng}
		mustUpsert(t, x, positions.DriverID(rune('a'+i)), p, st, 1, clk.Now())
	}
	got, err := x.Nearest(sf, 3, 2000, positions.Available)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d candidates", len(got))
	}
	for i, c := range got {
		want := float64(2*(i+1)) * 100
		if c.Status != positions.StatusAvailable || math.Abs(c.DistanceM-want) > 0.05 {
			t.Fatalf("candidate %d = %+v, want available at %v m", i, c, want)
		}
	}
	// The radius is inclusive of what it reaches and exclusive beyond.
	got, _ = x.Nearest(sf, 10, 450, positions.Filter{})
	if len(got) != 4 {
		t.Fatalf("within 450 m: %d candidates, want 4", len(got))
	}
}

func TestPolesAndAntimeridian(t *testing.T) {
	x, clk := newTestIndex(t, time.Minute)
	pts := map[positions.DriverID]geo.LatLng{
		"east":     {Lat: 0.5, Lng: 179.9999},
		"west":     {Lat: 0.5, Lng: -179.9999},
		"on180":    {Lat: 0.5, Lng: 180},
		"pole":     {Lat: 90, Lng: 45},
		"nearpole": {Lat: 89.9999, Lng: -135},
		"south":    {Lat: -89.99995, Lng: 10},
	}
	for id, p := range pts {
		mustUpsert(t, x, id, p, positions.StatusAvailable, 1, clk.Now())
	}
	got, err := x.Nearest(geo.LatLng{Lat: 0.5, Lng: -179.99995}, 3, 100, positions.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != "on180" {
		t.Fatalf("antimeridian Nearest = %+v", got)
	}
	// lng 180 is stored as -180, the same meridian.
	if got[0].Pos.Lng != -180 {
		t.Fatalf("lng 180 stored as %v", got[0].Pos.Lng)
	}
	// Across the pole: "pole" and "nearpole" are 11 m apart whatever the
	// longitudes say.
	got, err = x.Nearest(geo.LatLng{Lat: 89.99995, Lng: 45}, 5, 50, positions.Filter{})
	if err != nil || len(got) != 2 {
		t.Fatalf("polar Nearest = %+v, %v", got, err)
	}
	got, err = x.Nearest(geo.LatLng{Lat: -90, Lng: 0}, 5, 10, positions.Filter{})
	if err != nil || len(got) != 1 || got[0].ID != "south" {
		t.Fatalf("south polar Nearest = %+v, %v", got, err)
	}
	// A huge radius from anywhere finds everyone exactly once.
	got, err = x.Nearest(geo.LatLng{Lat: 45, Lng: 90}, 100, math.Pi*geo.EarthRadiusM, positions.Filter{})
	if err != nil || len(got) != len(pts) {
		t.Fatalf("global Nearest found %d of %d: %v", len(got), len(pts), err)
	}
}

func TestCellCounts(t *testing.T) {
	x, clk := newTestIndex(t, time.Minute)
	mustUpsert(t, x, "a", sf, positions.StatusAvailable, 1, clk.Now())
	mustUpsert(t, x, "b", geo.LatLng{Lat: sf.Lat + 1e-5, Lng: sf.Lng}, positions.StatusOnTrip, 1, clk.Now())
	mustUpsert(t, x, "c", geo.LatLng{Lat: 40.7128, Lng: -74.0060}, positions.StatusAvailable, 1, clk.Now())
	counts, err := x.CellCounts(9, positions.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	sfCell, _ := geo.CellAt(sf, 9)
	nyCell, _ := geo.CellAt(geo.LatLng{Lat: 40.7128, Lng: -74.0060}, 9)
	if len(counts) != 2 || counts[sfCell] != 2 || counts[nyCell] != 1 {
		t.Fatalf("counts = %v", counts)
	}
	counts, _ = x.CellCounts(7, positions.Available)
	sf7, _ := geo.CellAt(sf, 7)
	if counts[sf7] != 1 {
		t.Fatalf("available at res 7 = %v", counts)
	}
	if _, err := x.CellCounts(16, positions.Filter{}); err == nil {
		t.Fatal("res 16 accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []func(*positions.Config){
		func(c *positions.Config) { c.TTL = 0 },
		func(c *positions.Config) { c.CellSizeM = 1 },
		func(c *positions.Config) { c.CellSizeM = math.NaN() },
		func(c *positions.Config) { c.Now = nil },
	}
	for i, mut := range bad {
		c := positions.DefaultConfig()
		mut(&c)
		if _, err := positions.NewIndex(c); !errors.Is(err, positions.ErrInvalidConfig) {
			t.Errorf("case %d: err = %v", i, err)
		}
	}
}
