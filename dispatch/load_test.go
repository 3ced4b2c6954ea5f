package dispatch_test

import (
	"context"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// TestGPSGivesWayUnderLoad: while the process is saturated, a driver's
// position within 2 s of its last accepted one with the same status is
// dropped and counted, not published; a status change, a new driver and
// a position 2 s later still go through, and without load everything
// does.
func TestGPSGivesWayUnderLoad(t *testing.T) {
	var pressure atomic.Uint64
	setPressure := func(p float64) { pressure.Store(math.Float64bits(p)) }
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) {
		c.Pressure = func() float64 { return math.Float64frombits(pressure.Load()) }
		c.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	d1, d2 := g.token(t, "d1", dispatch.RoleDriver), g.token(t, "d2", dispatch.RoleDriver)
	send := func(tok, id, status string, seq int) {
		t.Helper()
		body := `{"lat":40.75,"lng":-73.98,"status":"` + status + `","seq":` + string(rune('0'+seq)) + `}`
		if code, resp := post(t, g.srv.URL+"/v1/drivers/"+id+"/location", tok, body); code != 202 {
			t.Fatalf("%s seq %d: %d %s", id, seq, code, resp)
		}
	}
	advance := func(d time.Duration) { clock.Add(int64(d)) }

	send(d1, "d1", "available", 1) // no load: published
	advance(500 * time.Millisecond)
	send(d1, "d1", "available", 2) // no load: published
	setPressure(1.5)
	advance(500 * time.Millisecond)
	send(d1, "d1", "available", 3) // saturated, 0.5 s after seq 2: dropped
	send(d2, "d2", "available", 1) // a driver not seen before: published
	send(d1, "d1", "on_trip", 4)   // a status change: published
	advance(2 * time.Second)
	send(d1, "d1", "on_trip", 5) // 2 s later: published
	advance(100 * time.Millisecond)
	send(d1, "d1", "on_trip", 6) // dropped
	setPressure(0.9)
	send(d1, "d1", "on_trip", 7) // load gone: published
	if st := g.drivers.Stats(); st.Throttled != 2 || st.Positions != 6 {
		t.Fatalf("stats %+v, want 2 throttled and 6 published", st)
	}
}

// TestLoadMonitorSearches: the ride searches near their bound are load
// however idle the CPUs, and the monitor stops with its context.
func TestLoadMonitorSearches(t *testing.T) {
	var active atomic.Int64
	m := dispatch.NewLoadMonitor(dispatch.LoadConfig{SchedTarget: time.Hour, Every: 5 * time.Millisecond,
		Searches: func() (int, int) { return int(active.Load()), 100 }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	active.Store(100)
	waitFor(t, "pressure 1 at the search bound", func() bool { return m.Pressure() >= 1 })
	active.Store(10)
	waitFor(t, "pressure back to 0.1", func() bool { p := m.Pressure(); return p >= 0.1 && p < 0.2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
