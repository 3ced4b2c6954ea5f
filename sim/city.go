package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/clock"
)

// Target is the engine a city simulation drives through its public API.
type Target struct {
	// BaseURL is the engine's HTTP address, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Mint returns a bearer token for a subject and role.
	Mint func(sub string, role dispatch.Role) (string, error)
	// Brokers, when set, are the engine's Kafka brokers: the invariant
	// checker reads the ride-events topic there.
	Brokers []string
	// Settle, when set, is called once the simulation stopped and before
	// the invariants are checked, so the engine can flush its ride events.
	Settle func(ctx context.Context) error
	// Clock and Quiesce, both set, run the simulation in deterministic
	// mode (see lockstep.go): Clock is the in-process engine's virtual
	// clock, which only the simulation moves, and Quiesce waits until the
	// engine has handled framesIn driver frames and done everything they
	// and the calls so far asked for, and returns how many messages it
	// wrote to drivers (engine.Engine.Quiesce).
	Clock   *clock.Virtual
	Quiesce func(ctx context.Context, framesIn uint64) (framesOut uint64, err error)
}

// Deterministic reports whether t runs the simulation in deterministic
// mode.
func (t Target) Deterministic() bool { return t.Clock != nil && t.Quiesce != nil }

// CityConfig configures a city simulation. Durations are simulated time.
type CityConfig struct {
	Demand Demand
	// Trips, when set, supply dropoffs and trip durations to requests that
	// have none: each such request takes the displacement and duration of
	// a trip drawn from it.
	Trips []Request
	// From and To bound the replayed demand (offsets from its midnight).
	From, To time.Duration
	// Drain keeps the simulation running after To so searches and trips in
	// flight can end.
	Drain time.Duration
	// WarmUp brings the drivers online this long before From, so the
	// first requests find them in the engine.
	WarmUp time.Duration

	Drivers   int
	Placement string        // "uniform" over the demand's bbox or "demand" (at random past pickups)
	Shift     time.Duration // each driver's time online; 0 = the whole run
	Ping      time.Duration // position report interval
	GPSNoiseM float64       // standard deviation of position noise
	CityKMH   float64       // driving speed
	Detour    float64       // road distance over straight-line distance
	Accept    float64       // probability a driver accepts an offer
	// AnswerDelay is the mean time a driver takes to answer (uniform over
	// 0.5x to 1.5x).
	AnswerDelay time.Duration
	BoardTime   time.Duration // at the pickup, from arrived to start
	// Reposition sends drivers who finish a trip more than 1 km from
	// recent demand back toward it (available while they drive).
	Reposition bool
	// RequestAttempts is how many times a rider sends a ride request that
	// gets 429, 503 or no answer, waiting the server's Retry-After in
	// between; 0 means 3.
	RequestAttempts int

	Speed    float64 // time acceleration
	Seed     uint64
	Progress io.Writer // live KPIs, one line every second; nil for none
	// Snapshots are the simulated times of supply and demand heat maps.
	Snapshots []time.Duration
}

// DefaultCityConfig returns the defaults: 4 s pings with 5 m noise, 25 km/h
// with a 1.3 detour, 95% of offers accepted after about 3 s, 30 s boarding,
// real time.
func DefaultCityConfig() CityConfig {
	return CityConfig{Placement: "demand", Ping: 4 * time.Second, GPSNoiseM: 5, CityKMH: 25, Detour: 1.3,
		Accept: 0.95, AnswerDelay: 3 * time.Second, BoardTime: 30 * time.Second, Drain: 3 * time.Minute,
		WarmUp: time.Minute, Reposition: true, Speed: 1}
}

// Validate checks c; errors name the setting.
func (c CityConfig) Validate() error {
	switch {
	case len(c.Demand.Requests) == 0:
		return errors.New("demand: no requests")
	case c.To <= c.From:
		return fmt.Errorf("to %s must be after from %s", clockString(c.To), clockString(c.From))
	case c.Drivers < 1:
		return fmt.Errorf("drivers %d: want at least 1", c.Drivers)
	case c.Placement != "uniform" && c.Placement != "demand":
		return fmt.Errorf("placement %q: want uniform or demand", c.Placement)
	case c.RequestAttempts < 0:
		return fmt.Errorf("request attempts %d: must not be negative", c.RequestAttempts)
	case c.Ping <= 0 || c.Shift < 0 || c.Drain < 0 || c.WarmUp < 0 || c.AnswerDelay < 0 || c.BoardTime < 0:
		return errors.New("ping must be positive; shift, drain, warm-up, answer delay and board time not negative")
	case !(c.CityKMH > 0) || !(c.Detour >= 1) || c.GPSNoiseM < 0 || math.IsInf(c.CityKMH, 0):
		return fmt.Errorf("city speed %v km/h must be positive, detour %v at least 1, noise %v not negative", c.CityKMH, c.Detour, c.GPSNoiseM)
	case !(c.Accept >= 0 && c.Accept <= 1):
		return fmt.Errorf("accept %v: want a probability in [0, 1]", c.Accept)
	case !(c.Speed > 0) || c.Speed > 1000:
		return fmt.Errorf("speed %v: want (0, 1000]", c.Speed)
	}
	return c.Demand.BBox.Validate()
}

// city is one running simulation.
type city struct {
	cfg    CityConfig
	target Target
	clock  *Clock
	http   *http.Client
	track  *tracker
	snaps  *Snapshots
	rng    *rand.Rand // setup only, before goroutines start

	drivers []*simDriver
	reqs    []simRequest // the replayed demand, sorted by time; read-only once running

	// WebSocket frames the drivers sent and read, and driver HTTP calls:
	// what deterministic mode's loop waits on.
	sent, read, posts atomic.Uint64
	// settle, in deterministic mode, waits for the engine (lockstep.settle).
	settle func(ctx context.Context) error
}

// attempts is how many times a rider sends a ride request.
func (c *city) attempts() int {
	if c.cfg.RequestAttempts == 0 {
		return 3
	}
	return c.cfg.RequestAttempts
}

// RunCity replays cfg.Demand against target with cfg.Drivers simulated
// drivers and returns the KPIs and the heat-map samples. It stops at To + Drain or when ctx ends
// (then with ctx's error and the summary so far).
func RunCity(ctx context.Context, target Target, cfg CityConfig) (Summary, *Snapshots, error) {
	if err := cfg.Validate(); err != nil {
		return Summary{}, nil, fmt.Errorf("city simulation: %w", err)
	}
	demand := cfg.Demand.Window(cfg.From, cfg.To)
	if len(demand.Requests) == 0 {
		return Summary{}, nil, fmt.Errorf("city simulation: no request between %s and %s", clockString(cfg.From), clockString(cfg.To))
	}
	c := &city{cfg: cfg, target: target, track: newTracker(),
		rng: rand.New(rand.NewPCG(cfg.Seed, 0xc17)),
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute}}}
	defer c.http.CloseIdleConnections()
	c.snaps = newSnapshots(cfg.Snapshots, demand)
	c.placeDrivers(demand)
	reqs := c.prepareRequests(demand)
	c.reqs = reqs

	wallStart := time.Now()
	end := cfg.To + cfg.Drain
	var err error
	if target.Deterministic() {
		c.clock = newVirtualClock(target.Clock, cfg.From-cfg.WarmUp, cfg.Speed)
		err = c.withProgress(ctx, end, func(ctx context.Context) error { return c.runLockstep(ctx, reqs, end) })
	} else {
		c.clock = NewClock(cfg.From-cfg.WarmUp, cfg.Speed)
		err = c.withProgress(ctx, end, func(ctx context.Context) error { return c.runRealTime(ctx, reqs, end) })
	}

	s := Summary{Demand: cfg.Demand.Name, From: clockString(cfg.From), To: clockString(cfg.To), Drivers: cfg.Drivers,
		Speed: cfg.Speed, Seed: cfg.Seed, Target: target.BaseURL, Deterministic: target.Deterministic()}
	for _, d := range c.drivers {
		d.account(c.track)
	}
	c.track.summarise(&s, cfg.From, cfg.To)
	s.WallSeconds = round3(time.Since(wallStart).Seconds())
	if err != nil {
		return s, c.snaps, err
	}
	s.Invariants, err = c.checkInvariants(ctx)
	return s, c.snaps, err
}

// runRealTime runs a goroutine per driver and rider on the wall clock
// (scaled by Speed) until end.
func (c *city) runRealTime(ctx context.Context, reqs []simRequest, end time.Duration) error {
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, d := range c.drivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run(runCtx, c, end)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.riders(runCtx, reqs, &wg)
	}()
	err := c.clock.SleepUntil(ctx, end)
	stop()
	wg.Wait()
	return err
}

// withProgress runs run while printing progress.
func (c *city) withProgress(ctx context.Context, end time.Duration, run func(context.Context) error) error {
	pctx, stop := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		c.progress(pctx, end)
	}()
	err := run(ctx)
	stop()
	<-progressDone
	return err
}

// placeDrivers creates the drivers: where they start, when their shift
// runs, their random streams.
func (c *city) placeDrivers(demand Demand) {
	cfg := c.cfg
	span := cfg.To - cfg.From
	for i := range cfg.Drivers {
		d := &simDriver{idx: i, id: fmt.Sprintf("sim-d%d", i),
			rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1<<32))}
		if cfg.Placement == "demand" {
			q := demand.Requests[c.rng.IntN(len(demand.Requests))]
			d.pos = c.jitter(q.Pickup, 300)
		} else {
			b := demand.BBox
			d.pos = geo.LatLng{Lat: b.MinLat + c.rng.Float64()*(b.MaxLat-b.MinLat), Lng: b.MinLng + c.rng.Float64()*(b.MaxLng-b.MinLng)}
		}
		d.shiftStart, d.shiftEnd = cfg.From-cfg.WarmUp, cfg.To+cfg.Drain
		if cfg.Shift > 0 && cfg.Shift < span {
			d.shiftStart = cfg.From + time.Duration(c.rng.Int64N(int64(span-cfg.Shift)+1))
			d.shiftEnd = d.shiftStart + cfg.Shift
		}
		c.drivers = append(c.drivers, d)
	}
}

// demandNear returns a pickup of a request within a quarter hour of now,
// chosen with rng and moved by up to a few hundred metres; false when
// there is none.
func (c *city) demandNear(now time.Duration, rng *rand.Rand) (geo.LatLng, bool) {
	at := func(q simRequest, t time.Duration) int { return cmp.Compare(q.At, t) }
	lo, _ := slices.BinarySearchFunc(c.reqs, now-15*time.Minute, at)
	hi, _ := slices.BinarySearchFunc(c.reqs, now+15*time.Minute, at)
	if hi <= lo {
		return geo.LatLng{}, false
	}
	p := c.reqs[lo+rng.IntN(hi-lo)].Pickup
	return offsetM(p, rng.NormFloat64()*300, rng.NormFloat64()*300, c.cfg.Demand.BBox), true
}

// jitter moves p by a Gaussian offset of sigma metres, kept inside the
// demand's bbox.
func (c *city) jitter(p geo.LatLng, sigmaM float64) geo.LatLng {
	return offsetM(p, c.rng.NormFloat64()*sigmaM, c.rng.NormFloat64()*sigmaM, c.cfg.Demand.BBox)
}

// offsetM moves p north and east by metres, clamped to b.
func offsetM(p geo.LatLng, northM, eastM float64, b geo.BBox) geo.LatLng {
	const mPerDeg = 111_320.0
	q := geo.LatLng{Lat: p.Lat + northM/mPerDeg, Lng: p.Lng + eastM/(mPerDeg*math.Cos(p.Lat*math.Pi/180))}
	q.Lat = min(max(q.Lat, b.MinLat), b.MaxLat)
	q.Lng = min(max(q.Lng, b.MinLng), b.MaxLng)
	return q
}

// simRequest is a ride request with its dropoff and trip duration settled.
type simRequest struct {
	Request
	dropoff geo.LatLng
	trip    time.Duration
}

// prepareRequests gives every request a dropoff and a trip duration: its
// own when the source has them, else a trip drawn from cfg.Trips, else a
// random direction at an exponential distance (mean 5 km).
func (c *city) prepareRequests(d Demand) []simRequest {
	out := make([]simRequest, len(d.Requests))
	for i, q := range d.Requests {
		r := simRequest{Request: q}
		switch {
		case q.HasDropoff:
			r.dropoff, r.trip = q.Dropoff, q.TripDuration
		case len(c.cfg.Trips) > 0:
			t := c.cfg.Trips[c.rng.IntN(len(c.cfg.Trips))]
			north := (t.Dropoff.Lat - t.Pickup.Lat) * 111_320
			east := (t.Dropoff.Lng - t.Pickup.Lng) * 111_320 * math.Cos(t.Pickup.Lat*math.Pi/180)
			r.dropoff, r.trip = offsetM(q.Pickup, north, east, d.BBox), t.TripDuration
		default:
			dist, dir := c.rng.ExpFloat64()*5000, c.rng.Float64()*2*math.Pi
			r.dropoff = offsetM(q.Pickup, dist*math.Cos(dir), dist*math.Sin(dir), d.BBox)
		}
		if r.trip <= 0 {
			r.trip = c.driveTime(q.Pickup, r.dropoff)
		}
		out[i] = r
	}
	return out
}

// driveTime is the simulated time to drive from a to b.
func (c *city) driveTime(a, b geo.LatLng) time.Duration {
	m := geo.DistanceM(a, b) * c.cfg.Detour
	return time.Duration(m / (c.cfg.CityKMH / 3.6) * float64(time.Second))
}

// progress prints live KPIs every second.
func (c *city) progress(ctx context.Context, end time.Duration) {
	if c.cfg.Progress == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(c.cfg.Progress)
			return
		case <-t.C:
		}
		now := c.clock.Now()
		frac := float64(now-c.cfg.From+c.cfg.WarmUp) / float64(end-c.cfg.From+c.cfg.WarmUp)
		frac = min(max(frac, 0), 1)
		var reqs, created, matched, noDriver int
		var lat []float64
		c.track.locked(func(t *tracker) {
			for _, r := range t.rides {
				reqs++
				if r.id != "" {
					created++
				}
				if r.acceptedSim > 0 {
					matched++
				}
				if r.final == dispatch.NoDriver {
					noDriver++
				}
				if r.offers > 0 && r.id != "" {
					lat = append(lat, float64(r.offerWall.Sub(r.sentWall))/float64(time.Millisecond))
				}
			}
		})
		rate := 0.0
		if created > 0 {
			rate = 100 * float64(matched) / float64(created)
		}
		bar := strings.Repeat("#", int(frac*30)) + strings.Repeat(".", 30-int(frac*30))
		fmt.Fprintf(c.cfg.Progress, "\r[%s] %3.0f%% sim %s  requests %d  matched %.1f%%  no_driver %d  offer p99 %.0f ms   ",
			bar, frac*100, clockString(now), reqs, rate, noDriver, quantiles(lat).P99)
	}
}

// checkInvariants reads the ride events and checks them against what the
// riders saw.
func (c *city) checkInvariants(ctx context.Context) (InvariantReport, error) {
	if len(c.target.Brokers) == 0 {
		return InvariantReport{}, nil
	}
	if c.target.Settle != nil {
		if err := c.target.Settle(ctx); err != nil {
			return InvariantReport{}, fmt.Errorf("settling the engine: %w", err)
		}
	}
	seen := map[dispatch.RideID]dispatch.State{}
	c.track.locked(func(t *tracker) {
		for _, r := range t.rides {
			if r.id != "" {
				seen[r.id] = r.final
			}
		}
	})
	// The relay moves events as they happen and sweeps leftovers; poll
	// until every ride is accounted for or the deadline passes.
	deadline := time.Now().Add(20 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		events, bad, err := ReadRideEvents(rctx, c.target.Brokers, dispatch.DefaultRideEventsTopic)
		cancel()
		if err != nil {
			return InvariantReport{}, err
		}
		rep := CheckRides(events, seen)
		for range bad {
			rep.add(Violation{Kind: "undecodable", Detail: "a ride-events record is not a RideEvent"})
		}
		if rep.OK() || time.Now().After(deadline) {
			return rep, nil
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
