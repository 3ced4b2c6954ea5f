package sim

import (
	"math"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// rideRec is what the simulation saw of one ride request.
type rideRec struct {
	idx      int
	req      Request
	dropoff  geo.LatLng
	sentSim  time.Duration
	sentWall time.Time
	first    time.Time // wall time of the first attempt
	id       dispatch.RideID
	status   int // HTTP status of the request (201 when created)

	offerSim  time.Duration // first offer, as the driver got it
	offerWall time.Time
	offers    int

	acceptedSim, arrivedSim, completedSim time.Duration
	acceptedETA, acceptedDist             float64
	driver                                string
	final                                 dispatch.State // last state the rider saw
}

// earlyOffer is an offer that reached a driver before the rider's request
// returned.
type earlyOffer struct {
	sim  time.Duration
	wall time.Time
	n    int
}

// tracker collects what riders and drivers see, from many goroutines.
type tracker struct {
	mu      sync.Mutex
	rides   []*rideRec
	byID    map[dispatch.RideID]*rideRec
	early   map[dispatch.RideID]*earlyOffer
	retries int

	declined, expired, cancelledOffers, busyOffers, actionErrors int
	driverErrors                                                 int

	online, busy time.Duration   // driver time online, and on a job
	idleGaps     []time.Duration // idle time before each accepted job
}

func newTracker() *tracker {
	return &tracker{byID: map[dispatch.RideID]*rideRec{}, early: map[dispatch.RideID]*earlyOffer{}}
}

func (t *tracker) add(r *rideRec) {
	t.mu.Lock()
	t.rides = append(t.rides, r)
	t.mu.Unlock()
}

// created records a ride the engine accepted.
func (t *tracker) created(r *rideRec, id dispatch.RideID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r.id = id
	t.byID[id] = r
	if e, ok := t.early[id]; ok {
		r.offerSim, r.offerWall, r.offers = e.sim, e.wall, e.n
		delete(t.early, id)
	}
}

func (t *tracker) offered(id dispatch.RideID, sim time.Duration, wall time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.byID[id]
	if !ok {
		e := t.early[id]
		if e == nil {
			e = &earlyOffer{sim: sim, wall: wall}
			t.early[id] = e
		}
		e.n++
		return
	}
	if r.offers == 0 {
		r.offerSim, r.offerWall = sim, wall
	}
	r.offers++
}

// with runs f on the ride's record, if the simulation made that ride.
func (t *tracker) with(id dispatch.RideID, f func(*rideRec)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r, ok := t.byID[id]; ok {
		f(r)
	}
}

// locked runs f with the tracker locked.
func (t *tracker) locked(f func(t *tracker)) {
	t.mu.Lock()
	f(t)
	t.mu.Unlock()
}

// Quantiles summarises a sample.
type Quantiles struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
}

func quantiles(xs []float64) Quantiles {
	if len(xs) == 0 {
		return Quantiles{}
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	at := func(p float64) float64 { return s[min(len(s)-1, int(math.Ceil(p*float64(len(s))))-1)] }
	return Quantiles{N: len(s), Mean: round3(sum / float64(len(s))), P50: round3(at(0.50)), P90: round3(at(0.90)),
		P99: round3(at(0.99)), Max: round3(s[len(s)-1])}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// Minute is one simulated minute of the timeline.
type Minute struct {
	T        string `json:"t"` // HH:MM
	Requests int    `json:"requests"`
	Matched  int    `json:"matched"`
	NoDriver int    `json:"no_driver"`
}

// Summary is the outcome of a run: summary.json.
type Summary struct {
	Demand      string  `json:"demand"`
	From        string  `json:"from"`
	To          string  `json:"to"`
	Drivers     int     `json:"drivers"`
	Speed       float64 `json:"speed"`
	Seed        uint64  `json:"seed"`
	Target      string  `json:"target"`
	WallSeconds float64 `json:"wall_seconds"`
	// Deterministic: the run was in deterministic mode, where the same
	// seed gives the same Comparable summary.
	Deterministic bool `json:"deterministic"`

	Requests         int            `json:"requests"`
	Created          int            `json:"created"`
	Rejected         map[string]int `json:"rejected,omitempty"` // by HTTP status or error
	Retries          int            `json:"retries"`
	Matched          int            `json:"matched"`
	MatchRate        float64        `json:"match_rate"`
	NoDriver         int            `json:"no_driver"`
	NoDriverRate     float64        `json:"no_driver_rate"`
	Completed        int            `json:"completed"`
	CancelledByRider int            `json:"cancelled_by_rider"`
	CancelledByDrv   int            `json:"cancelled_by_driver"`
	Expired          int            `json:"expired"`
	LiveAtEnd        int            `json:"live_at_end"`

	WaitUntilOfferS  Quantiles `json:"wait_until_offer_s"`
	WaitUntilPickupS Quantiles `json:"wait_until_pickup_s"`
	PickupDistanceM  Quantiles `json:"pickup_distance_m"`
	PickupETAS       Quantiles `json:"pickup_eta_s"`
	RequestToOfferMS Quantiles `json:"request_to_offer_ms"` // wall clock, at the client

	Offers          int `json:"offers"`
	OffersDeclined  int `json:"offers_declined"`
	OffersTimedOut  int `json:"offers_timed_out"`
	OffersCancelled int `json:"offers_cancelled"`
	OffersToBusy    int `json:"offers_to_busy_drivers"` // must be 0
	ActionErrors    int `json:"driver_action_errors"`
	DriverErrors    int `json:"driver_connection_errors"`

	DriverUtilisation float64   `json:"driver_utilisation"` // share of online time on a job
	IdleSearchS       Quantiles `json:"idle_search_s"`      // idle time before each job

	Invariants InvariantReport `json:"invariants"`
	Timeline   []Minute        `json:"timeline"`
	// Outcomes lists every request in demand order, for callers that
	// relate outcomes to wall-clock events (the chaos soak's fault
	// windows). Not in summary.json.
	Outcomes []Outcome `json:"-"`

	waitSample   []float64 // wait until offer, for the report's histograms
	pickupSample []float64 // wait until pickup
}

// Comparable returns s without what the wall clock decides: the target's
// address, the wall time, the request-to-offer latency at the client, and
// the count of ride-events records (at-least-once delivery may repeat
// one; the checker counts each event once). Two deterministic runs with
// the same seed and settings give equal Comparable summaries.
func (s Summary) Comparable() Summary {
	s.Target, s.WallSeconds, s.RequestToOfferMS = "", 0, Quantiles{}
	s.Invariants.Events = 0
	s.Outcomes = slices.Clone(s.Outcomes)
	for i := range s.Outcomes {
		s.Outcomes[i].Sent, s.Outcomes[i].Ride = time.Time{}, ""
	}
	return s
}

// summarise builds the Summary from the tracker.
func (t *tracker) summarise(s *Summary, from, to time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s.Rejected = map[string]int{}
	s.Retries = t.retries
	var waitOffer, waitPickup, dist, eta, lat []float64
	minutes := int((to-from)/time.Minute) + 1
	timeline := make([]Minute, max(0, minutes))
	for i := range timeline {
		timeline[i].T = clockString(from + time.Duration(i)*time.Minute)
	}
	for _, r := range t.rides {
		s.Outcomes = append(s.Outcomes, Outcome{Index: r.idx, At: r.req.At, Sent: r.first, Status: r.status,
			Ride: r.id, Matched: r.acceptedSim > 0, Final: r.final})
		s.Requests++
		m := -1
		if i := int((r.req.At - from) / time.Minute); i >= 0 && i < len(timeline) {
			m = i
			timeline[i].Requests++
		}
		if r.id == "" {
			s.Rejected[statusName(r.status)]++
			continue
		}
		s.Created++
		s.Offers += r.offers
		if r.offers > 0 {
			waitOffer = append(waitOffer, (r.offerSim - r.sentSim).Seconds())
			lat = append(lat, float64(r.offerWall.Sub(r.sentWall))/float64(time.Millisecond))
		}
		if r.acceptedSim > 0 {
			s.Matched++
			if m >= 0 {
				timeline[m].Matched++
			}
			dist = append(dist, r.acceptedDist)
			eta = append(eta, r.acceptedETA)
		}
		if r.arrivedSim > 0 {
			waitPickup = append(waitPickup, (r.arrivedSim - r.sentSim).Seconds())
		}
		switch r.final {
		case dispatch.Completed:
			s.Completed++
		case dispatch.NoDriver:
			s.NoDriver++
			if m >= 0 {
				timeline[m].NoDriver++
			}
		case dispatch.CancelledByRider:
			s.CancelledByRider++
		case dispatch.CancelledByDriver:
			s.CancelledByDrv++
		case dispatch.Expired:
			s.Expired++
		default:
			s.LiveAtEnd++
		}
	}
	if s.Created > 0 {
		s.MatchRate = round3(float64(s.Matched) / float64(s.Created))
		s.NoDriverRate = round3(float64(s.NoDriver) / float64(s.Created))
	}
	s.WaitUntilOfferS, s.WaitUntilPickupS = quantiles(waitOffer), quantiles(waitPickup)
	s.waitSample, s.pickupSample = waitOffer, waitPickup
	s.PickupDistanceM, s.PickupETAS, s.RequestToOfferMS = quantiles(dist), quantiles(eta), quantiles(lat)
	s.OffersDeclined, s.OffersTimedOut, s.OffersCancelled = t.declined, t.expired, t.cancelledOffers
	s.OffersToBusy, s.ActionErrors, s.DriverErrors = t.busyOffers, t.actionErrors, t.driverErrors
	if t.online > 0 {
		s.DriverUtilisation = round3(float64(t.busy) / float64(t.online))
	}
	idle := make([]float64, len(t.idleGaps))
	for i, g := range t.idleGaps {
		idle[i] = g.Seconds()
	}
	s.IdleSearchS = quantiles(idle)
	s.Timeline = timeline
}

// Outcome is what became of one ride request.
type Outcome struct {
	Index   int             // position in the replayed demand
	At      time.Duration   // simulated request time
	Sent    time.Time       // wall time of the first attempt
	Status  int             // HTTP status of the last attempt (0: transport error)
	Ride    dispatch.RideID // empty when no attempt created a ride
	Matched bool            // a driver accepted it
	Final   dispatch.State  // the last state the rider saw
}

func statusName(code int) string {
	if code == 0 {
		return "transport_error"
	}
	return "http_" + strconv.Itoa(code)
}

// clockString prints a time of day (or beyond, for multi-day demand) as
// HH:MM.
func clockString(d time.Duration) string {
	if d < 0 {
		return "-" + clockString(-d)
	}
	h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
	return pad2(h) + ":" + pad2(m)
}

func pad2(v int) string {
	if v < 10 {
		return "0" + strconv.Itoa(v)
	}
	return strconv.Itoa(v)
}
