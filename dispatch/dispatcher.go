package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/clock"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// Offer is a driver reserved for a ride: the lease token proves it.
type Offer struct {
	Driver    positions.DriverID
	Token     matcher.Token
	ETA       time.Duration
	DistanceM float64
}

// Finder picks the best free driver for a pickup and reserves it (a lease
// for the offer timeout), skipping the excluded drivers. It returns an
// error wrapping matcher.ErrNoDriver when nobody is free, and one wrapping
// matcher.ErrUnavailable when the reservation store is down.
// *matcher.Greedy implements it.
type Finder interface {
	Match(ctx context.Context, req matcher.MatchRequest) (matcher.Match, error)
}

// LeaseKeeper turns an offer's lease into the trip lock or lets it go;
// *matcher.Leases implements it.
type LeaseKeeper interface {
	Commit(ctx context.Context, driver positions.DriverID, ride matcher.RideID, token matcher.Token) error
	Release(ctx context.Context, driver positions.DriverID, ride matcher.RideID, token matcher.Token) error
}

// Notifier delivers messages to drivers; *Drivers implements it.
type Notifier interface {
	Send(id positions.DriverID, msg any) bool
}

// DispatcherConfig configures a Dispatcher.
type DispatcherConfig struct {
	Store    *RideStore
	Finder   Finder
	Leases   LeaseKeeper
	Notifier Notifier
	// Relay, when set, is told about every ride that changed so its events
	// reach Kafka at once rather than at the next sweep.
	Relay *Relay
	// OfferTimeout is how long a driver has to answer an offer.
	OfferTimeout time.Duration
	// MaxOffers is how many drivers a ride is offered to before no_driver.
	MaxOffers int
	// SearchDeadline bounds the whole search, from request to accept.
	SearchDeadline time.Duration
	// RetryEvery is the pause before searching again when nobody is free.
	RetryEvery time.Duration
	// MaxActive bounds rides being matched at once; beyond it requests get
	// 503 (ride requests are never queued without bound).
	MaxActive int
	Now       func() time.Time
	// Clock runs the offer timeouts, search deadlines and retry pauses;
	// nil is the wall clock. Set it with Now to the same clock (the city
	// simulation's deterministic mode runs both on a virtual one).
	Clock clock.Clock
	// Parked, when set, reports how many Finder.Match calls wait on the
	// clock (Batcher.Parked: requests in open batch windows); Idle counts
	// a search inside Match as idle only while the numbers agree.
	Parked func() int
	Logger *slog.Logger

	// StallTimeout is how long an accepted or arrived ride waits for its
	// driver's next step (arrived, start) before the sweep expires it and
	// releases the driver: the driver app vanished. Zero means the
	// default, 30 min.
	StallTimeout time.Duration
	// MaxTrip is how long a ride may stay in_trip before the sweep expires
	// it and releases the driver. Zero means the default, 6 h.
	MaxTrip time.Duration
	// FanOut is how many drivers one round offers the ride to at once
	// (each reserved by its own lease); the first to accept wins and the
	// others get offer_cancelled. 0 or 1 offers to one driver at a time.
	// MaxOffers counts rounds.
	FanOut int
}

// Defaults of the expiry of abandoned trips.
const (
	DefaultStallTimeout = 30 * time.Minute
	DefaultMaxTrip      = 6 * time.Hour
)

// DefaultDispatcherConfig returns the defaults: 10 s offers, 5 offers, a
// 60 s search, 1 s between empty searches, 10,000 active rides; trips
// expire after 30 min without a step before the rider is in the car, or
// 6 h in it.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{OfferTimeout: 10 * time.Second, MaxOffers: 5, SearchDeadline: time.Minute,
		RetryEvery: time.Second, MaxActive: 10000, Now: time.Now, Logger: slog.Default(),
		StallTimeout: DefaultStallTimeout, MaxTrip: DefaultMaxTrip}
}

// Validate checks c.
func (c DispatcherConfig) Validate() error {
	if c.Store == nil || c.Finder == nil || c.Leases == nil || c.Notifier == nil || c.Now == nil || c.Logger == nil {
		return errors.New("dispatcher config: Store, Finder, Leases, Notifier, Now and Logger are required")
	}
	if c.FanOut < 0 || c.FanOut > 16 {
		return fmt.Errorf("dispatcher config: FanOut %d: want 0 to 16", c.FanOut)
	}
	if c.OfferTimeout <= 0 || c.MaxOffers < 1 || c.SearchDeadline <= 0 || c.RetryEvery <= 0 || c.MaxActive < 1 {
		return fmt.Errorf("dispatcher config: OfferTimeout, SearchDeadline, RetryEvery > 0 and MaxOffers, MaxActive >= 1 (got %+v)", c)
	}
	if c.StallTimeout < 0 || c.MaxTrip < 0 {
		return fmt.Errorf("dispatcher config: StallTimeout %v and MaxTrip %v must not be negative (zero is the default)", c.StallTimeout, c.MaxTrip)
	}
	return nil
}

// answer is a driver's reply to an offer.
type answer struct {
	driver positions.DriverID
	accept bool
}

// search is one ride being matched. Its goroutine parks on the search's
// mailbox between steps: a driver's answer, its timer (an offer's timeout
// or a retry's pause) or the end of its context wakes it. Because every
// wake-up is posted under mu before the goroutine can see it, a parked
// search with nothing posted has nothing to do until something outside
// posts: that is what Dispatcher.Idle reports.
type search struct {
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: "look at the mailbox"

	mu      sync.Mutex
	offered map[positions.DriverID]bool // the current round's drivers
	answers []answer                    // posted, not yet read
	timer   uint64                      // generation of the armed timer
	rang    uint64                      // generation of the last timer that fired
	parked  bool                        // the goroutine waits with nothing to read
	finding bool                        // the goroutine is in Finder.Match
	maxAns  int
}

func newSearch(ctx context.Context, cancel context.CancelFunc, fanOut int) *search {
	return &search{ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), maxAns: max(1, fanOut)}
}

// poke tells the goroutine to look at its mailbox.
func (s *search) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// end cancels the search and wakes it.
func (s *search) end() {
	s.cancel()
	s.poke()
}

// arm sets the search's timer to ring after d on c, replacing any
// earlier one (a late ring of the old timer is ignored); the returned
// stop disarms it.
func (s *search) arm(c clock.Clock, d time.Duration) (stop func() bool) {
	s.mu.Lock()
	s.timer++
	gen := s.timer
	s.mu.Unlock()
	t := c.AfterFunc(d, func() {
		s.mu.Lock()
		if s.timer == gen {
			s.rang = gen
		}
		s.mu.Unlock()
		s.poke()
	})
	return t.Stop
}

// woke is what ended a wait.
type woke int

const (
	wokeEnded woke = iota // the search's context ended
	wokeTimer
	wokeAnswer
)

// wait parks until the armed timer rings, an answer is posted or the
// search's context ends, and returns which (with the answer). An ended
// context comes first, then answers, then the timer.
func (s *search) wait() (woke, answer) {
	for {
		s.mu.Lock()
		switch {
		case s.ctx.Err() != nil:
			s.parked = false
			s.mu.Unlock()
			return wokeEnded, answer{}
		case len(s.answers) > 0:
			a := s.answers[0]
			s.answers = s.answers[1:]
			s.parked = false
			s.mu.Unlock()
			return wokeAnswer, a
		case s.rang == s.timer && s.timer != 0:
			s.rang = 0
			s.parked = false
			s.mu.Unlock()
			return wokeTimer, answer{}
		}
		s.parked = true
		s.mu.Unlock()
		<-s.wake
	}
}

// post queues a driver's answer; false when maxAns answers already wait.
func (s *search) post(a answer) bool {
	s.mu.Lock()
	if len(s.answers) >= s.maxAns {
		s.mu.Unlock()
		return false
	}
	s.answers = append(s.answers, a)
	s.mu.Unlock()
	s.poke()
	return true
}

// setFinding marks the goroutine as inside Finder.Match (or out of it).
func (s *search) setFinding(on bool) {
	s.mu.Lock()
	s.finding = on
	s.mu.Unlock()
}

// idle reports whether the search has nothing to do, parked with an empty
// mailbox, and whether it is inside Finder.Match.
func (s *search) idle() (idle, finding bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finding {
		return false, true
	}
	return s.parked && s.ctx.Err() == nil && len(s.answers) == 0 && (s.rang != s.timer || s.timer == 0), false
}

// setOffered records the drivers of the current round (nil: none). The
// answers waiting from drivers not in it are dropped: they would take the
// mailbox's room from the answers of the round's drivers.
func (s *search) setOffered(round []Offer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offered = make(map[positions.DriverID]bool, len(round))
	for _, o := range round {
		s.offered[o.Driver] = true
	}
	kept := s.answers[:0]
	for _, a := range s.answers {
		if s.offered[a.driver] {
			kept = append(kept, a)
		}
	}
	s.answers = kept
}

func (s *search) isOffered(d positions.DriverID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offered[d]
}

// DispatcherStats counts what a Dispatcher did.
type DispatcherStats struct {
	Searches, Offers, Accepted, Declined, TimedOut, NoDriver, Errors uint64
}

// Dispatcher runs the search for each requested ride: find and reserve the
// best driver, offer, wait for the answer or the timeout, and on decline or
// timeout release and move to the next driver, until an accept, MaxOffers
// offers, the deadline (no_driver) or a cancel.
//
// Concurrency: one goroutine per active ride, bounded by MaxActive and
// waited for by Wait; searchesMu guards the map that routes driver answers
// to them (a search stays in it until its goroutine is done). The searches live in this process: in a deployment of several
// api processes, a driver's answer must reach the process that made the
// offer (the driver's WebSocket is pinned to it today).
type Dispatcher struct {
	cfg DispatcherConfig
	clk clock.Clock

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// pool runs the searches on goroutines kept between them (see goPool).
	pool *goPool

	searchesMu sync.Mutex
	searches   map[RideID]*search

	searched, offers, accepted, declined, timedOut, noDriver, errs atomic.Uint64

	// matchLatency is from the start of a search to its first offer.
	matchLatency positions.LatencyHistogram
	// phases splits the way to each first offer (see Phase).
	phases [NumPhases]positions.LatencyHistogram
}

// MatchLatency returns the distribution of request-to-first-offer times.
func (d *Dispatcher) MatchLatency() positions.LatencySnapshot { return d.matchLatency.Snapshot() }

// Phase is a step of a search on its way to the ride's first offer. The
// phases follow one another, so a slow first offer shows in which step it
// lost its time; each is observed once per first offer (searches that
// never offer are not counted), after a pause for want of a driver find
// is the match that succeeded.
type Phase int

const (
	// PhaseStart is from the search being started (the ride stored) to
	// its goroutine running: time spent waiting for a CPU.
	PhaseStart Phase = iota
	// PhaseFind is the match that found the offered driver: gather, rank
	// and reserve, and the reservations of the round's other offers.
	PhaseFind
	// PhaseRecord is the offer's compare-and-set in the ride store.
	PhaseRecord
	// PhaseSend is handing the offer frames to the drivers' connections.
	PhaseSend
	// NumPhases counts the phases.
	NumPhases
)

var phaseNames = [NumPhases]string{"start", "find", "record", "send"}

// String names p as the metrics label it.
func (p Phase) String() string {
	if p < 0 || p >= NumPhases {
		return fmt.Sprintf("Phase(%d)", int(p))
	}
	return phaseNames[p]
}

// PhaseLatency returns the distribution of phase p over the first offers.
func (d *Dispatcher) PhaseLatency(p Phase) positions.LatencySnapshot { return d.phases[p].Snapshot() }

// NewDispatcher returns a dispatcher.
func NewDispatcher(cfg DispatcherConfig) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.MaxTrip == 0 {
		cfg.MaxTrip = DefaultMaxTrip
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dispatcher{cfg: cfg, clk: clock.Or(cfg.Clock), base: ctx, cancel: cancel, searches: make(map[RideID]*search),
		pool: newGoPool(searchGoroutineIdle, ctx.Done())}, nil
}

// ErrBusy is returned by Start when MaxActive rides are being matched.
var ErrBusy = errors.New("dispatcher is at capacity")

// Stats returns the counters.
func (d *Dispatcher) Stats() DispatcherStats {
	return DispatcherStats{Searches: d.searched.Load(), Offers: d.offers.Load(), Accepted: d.accepted.Load(),
		Declined: d.declined.Load(), TimedOut: d.timedOut.Load(), NoDriver: d.noDriver.Load(), Errors: d.errs.Load()}
}

// Active reports the searches running and their bound (MaxActive).
func (d *Dispatcher) Active() (active, limit int) {
	d.searchesMu.Lock()
	defer d.searchesMu.Unlock()
	return len(d.searches), d.cfg.MaxActive
}

// Close stops every search and waits for them. Rides left searching or
// offered stay so in the store; their leases expire on their own.
func (d *Dispatcher) Close() {
	d.searchesMu.Lock() // Start checks base and adds to wg under this lock
	d.cancel()
	d.searchesMu.Unlock()
	d.wg.Wait()
	d.pool.wait() // every run happened before its search's wg.Done
}

// SearchUntil is the deadline to track a search started at now with: its
// SearchDeadline plus an offer's grace. RideStore.CreateSearching takes it.
// The sweep of any process ends the ride after it if the process that
// searches dies first.
func (d *Dispatcher) SearchUntil(now time.Time) time.Time {
	return now.Add(d.cfg.SearchDeadline + d.cfg.OfferTimeout)
}

// StartTracked begins the search for ride r (state requested), created
// with its search tracked (RideStore.CreateSearching with SearchUntil).
// It returns ErrBusy at MaxActive, and nil when r's search runs here
// already (an idempotent retry).
func (d *Dispatcher) StartTracked(r Ride) error {
	ctx, cancel := clock.WithTimeout(d.base, d.clk, d.cfg.SearchDeadline)
	s := newSearch(ctx, cancel, d.cfg.FanOut)
	d.searchesMu.Lock()
	_, dup := d.searches[r.ID]
	switch {
	case d.base.Err() != nil || (!dup && len(d.searches) >= d.cfg.MaxActive):
		d.searchesMu.Unlock()
		cancel()
		return ErrBusy
	case dup:
		d.searchesMu.Unlock()
		cancel()
		return nil // already searching (an idempotent retry)
	}
	d.searches[r.ID] = s // holds the place: a concurrent Start of r returns nil
	d.wg.Add(1)
	d.searchesMu.Unlock()

	d.searched.Add(1)
	stopWake := context.AfterFunc(ctx, s.poke) // wakes a parked search at shutdown or deadline
	queued := time.Now()
	d.pool.run(func() {
		defer d.wg.Done()
		defer cancel()
		defer stopWake()
		last := d.run(ctx, r, s, queued)
		if d.base.Err() == nil { // at shutdown the sweep of a survivor ends it
			d.settle(last)
		}
		d.searchesMu.Lock()
		delete(d.searches, r.ID)
		d.searchesMu.Unlock()
	})
	return nil
}

// searchGoroutineIdle is how long a search's goroutine waits for the next
// search before it exits.
const searchGoroutineIdle = 10 * time.Second

// Idle reports whether no search has anything to do: each waits for a
// driver's answer, its timer, or (see DispatcherConfig.Parked) its batch
// window. With the dispatcher on a
// virtual clock, nothing changes until the clock moves or someone calls
// Start, Answer or Stop; the city simulation's deterministic mode waits
// for this between its steps.
func (d *Dispatcher) Idle() bool {
	finding := 0
	d.searchesMu.Lock()
	for _, s := range d.searches {
		idle, inMatch := s.idle()
		if inMatch {
			finding++
		} else if !idle {
			d.searchesMu.Unlock()
			return false
		}
	}
	d.searchesMu.Unlock()
	// A search that has not joined its window yet, or whose window was
	// planned but who has not taken the answer, makes the counts differ.
	return finding == 0 || (d.cfg.Parked != nil && d.cfg.Parked() == finding)
}

// Answer delivers a driver's accept or decline to the search of ride id.
// It reports false when no search of this process waits for that driver.
func (d *Dispatcher) Answer(id RideID, driver positions.DriverID, accept bool) bool {
	d.searchesMu.Lock()
	s, ok := d.searches[id]
	d.searchesMu.Unlock()
	if !ok || !s.isOffered(driver) {
		return false
	}
	return s.post(answer{driver: driver, accept: accept}) // false: answers already pending
}

// Offered reports whether driver holds a current offer of ride id in this
// process (with fan-out, a ride is offered to several drivers at once).
func (d *Dispatcher) Offered(id RideID, driver positions.DriverID) bool {
	d.searchesMu.Lock()
	s, ok := d.searches[id]
	d.searchesMu.Unlock()
	return ok && s.isOffered(driver)
}

// Notify sends msg to a driver connected to this process; it reports
// whether the message was queued.
func (d *Dispatcher) Notify(driver positions.DriverID, msg any) bool {
	return d.cfg.Notifier.Send(driver, msg)
}

// Stop ends the search of ride id (the rider cancelled).
func (d *Dispatcher) Stop(id RideID) {
	d.searchesMu.Lock()
	s, ok := d.searches[id]
	d.searchesMu.Unlock()
	if ok {
		s.end()
	}
}

// settle stops tracking the search of ride last (as the search last wrote
// or saw it) if the ride is past it (accepted or further, or ended); a ride
// a failed write left searching or offered stays tracked for the sweep to
// end. A search that wrote the ride past searching needs no read: those
// states never go back. On a single Redis there is nothing to do: the
// write that took the ride past its search took it out of the searches
// too (see RideStore.leaving), and a stale entry is the sweep's.
func (d *Dispatcher) settle(last Ride) {
	if d.cfg.Store.single != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if !pastSearch(last.State) {
		r, err := d.cfg.Store.Get(ctx, last.ID)
		if !(err == nil && pastSearch(r.State)) && !errors.Is(err, ErrRideNotFound) {
			return
		}
	}
	d.cfg.Store.UntrackSearch(ctx, last.ID)
}

// pastSearch reports whether a ride in st is done with its search.
func pastSearch(st State) bool { return st.Terminal() || st >= Accepted }

// SweepEvery is how often Run looks for searches that died with their
// process and for abandoned trips.
const SweepEvery = 5 * time.Second

// Run ends, every SweepEvery until ctx ends, the rides whose search is
// overdue and not running here: their process died mid-search. A ride still
// offered goes back to searching (the lease expires on its own) and then
// to no_driver; a ride that got further is only untracked. It also expires
// abandoned trips (see sweepTrips).
func (d *Dispatcher) Run(ctx context.Context) error {
	t := time.NewTicker(SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.Sweep(ctx)
		}
	}
}

// Sweep runs one pass of Run and returns how many rides it ended.
func (d *Dispatcher) Sweep(ctx context.Context) int {
	return d.sweepSearches(ctx) + d.sweepTrips(ctx)
}

// sweepSearches ends the overdue searches no goroutine of this process
// runs.
func (d *Dispatcher) sweepSearches(ctx context.Context) int {
	ids, err := d.cfg.Store.OverdueSearches(ctx, d.cfg.Now(), 1000)
	if err != nil {
		if ctx.Err() == nil {
			d.errs.Add(1)
			d.cfg.Logger.Warn("search sweep failed", "err", err)
		}
		return 0
	}
	ended := 0
	for _, id := range ids {
		d.searchesMu.Lock()
		_, running := d.searches[id]
		d.searchesMu.Unlock()
		if running {
			continue
		}
		r, err := d.cfg.Store.Get(ctx, id)
		if err != nil && !errors.Is(err, ErrRideNotFound) {
			continue // Redis trouble: try again next pass
		}
		if err == nil {
			var werr error
			switch r.State {
			case Offered:
				if werr = d.apply(ctx, &r, Event{Kind: EvOfferTimeout, Driver: r.Driver}); werr != nil {
					break
				}
				fallthrough
			case Searching:
				if werr = d.apply(ctx, &r, Event{Kind: EvNoDriver}); werr == nil {
					d.noDriver.Add(1)
					ended++
				}
			case Requested:
				if werr = d.apply(ctx, &r, Event{Kind: EvExpire}); werr == nil {
					ended++
				}
			}
			if werr != nil {
				continue // keep it tracked: the next pass tries again
			}
		}
		d.cfg.Store.UntrackSearch(ctx, id)
	}
	return ended
}

// apply records ev, and then more in the same write, on the ride cur, the
// ride as the caller last wrote or read it, and tells the relay. It keeps
// cur current: the ride after the write, or as stored when the event was
// illegal. After another error cur stays as it was (the write may have
// landed; the next write's compare-and-set finds out).
func (d *Dispatcher) apply(ctx context.Context, cur *Ride, ev Event, more ...Event) error {
	ev.At = d.cfg.Now()
	for i := range more {
		more[i].At = ev.At
	}
	r, err := d.cfg.Store.ApplyFrom(ctx, *cur, ev, more...)
	switch {
	case err == nil:
		*cur = r
		if d.cfg.Relay != nil {
			d.cfg.Relay.Notify(r.ID)
		}
	case errors.Is(err, ErrIllegalTransition) && r.ID == cur.ID:
		*cur = r
	}
	return err
}

// applySearched is apply for an event that follows the search's start: on
// a ride still requested it records "searching" first, in the same write.
func (d *Dispatcher) applySearched(ctx context.Context, cur *Ride, ev Event) error {
	if cur.State == Requested {
		return d.apply(ctx, cur, Event{Kind: EvSearch}, ev)
	}
	return d.apply(ctx, cur, ev)
}

// OfferMessage is what a driver receives when offered a ride.
type OfferMessage struct {
	Type      string     `json:"type"` // "offer"
	Ride      RideID     `json:"ride"`
	Pickup    geo.LatLng `json:"pickup"`
	Dropoff   geo.LatLng `json:"dropoff"`
	ETA       float64    `json:"eta_s"`
	DistanceM float64    `json:"distance_m"`
	ExpiresAt time.Time  `json:"expires_at"`
}

// run is the search of ride r and returns the ride as the search last
// wrote or saw it. Every write goes from that copy (see apply), so a
// search reads the ride only when someone else wrote it meanwhile.
//
// A ride still requested is recorded searching in the same write as its
// first offer (or, when no driver is found, on its own before the
// pause): the gather and the reservation need nothing from the ride's
// record, so the first offer takes one write after the reservation, not
// a write of "searching" beside it, and the ride's events keep their
// order.
//
// queued is when the search was started, for PhaseStart.
func (d *Dispatcher) run(ctx context.Context, r Ride, s *search, queued time.Time) Ride {
	log := d.cfg.Logger.With("ride", r.ID)
	// Writes that must land even when the search is cancelled or timed out
	// use final(ctx).
	started := time.Now()
	var tried []positions.DriverID
	// pause waits RetryEvery; false when the search ended meanwhile.
	pause := func() bool {
		stop := s.arm(d.clk, d.cfg.RetryEvery)
		defer stop()
		for {
			switch w, _ := s.wait(); w {
			case wokeEnded:
				return false
			case wokeTimer:
				return true
			} // an answer to no offer: ignore
		}
	}
	for offers := 0; offers < d.cfg.MaxOffers; {
		s.setFinding(true)
		found := time.Now()
		m, err := d.cfg.Finder.Match(ctx, matcher.MatchRequest{Ride: matcher.RideID(r.ID), Pickup: r.Pickup, Exclude: tried})
		o := Offer{Driver: m.Driver.ID, Token: m.Token, ETA: m.ETA, DistanceM: m.Driver.DistanceM}
		if err != nil && r.State == Requested && ctx.Err() == nil {
			// No driver yet: the ride shows searching while it waits. (A
			// search that ended records it with no_driver, in end.)
			if serr := d.apply(ctx, &r, Event{Kind: EvSearch}); serr != nil {
				s.setFinding(false)
				if errors.Is(serr, ErrIllegalTransition) { // cancelled before its search started
					log.Info("search: ride ended before its search started", "state", r.State)
					return r
				}
				d.errs.Add(1)
				log.Warn("search: cannot start", "err", serr)
				return r
			}
		}
		s.setFinding(false)
		switch {
		case ctx.Err() != nil:
			if err == nil { // reserved just as the search ended: let the driver go
				d.releaseAll(ctx, r.ID, []Offer{o})
			}
			d.end(&r, log)
			return r
		case err != nil:
			if !errors.Is(err, matcher.ErrNoDriver) {
				d.errs.Add(1)
				log.Warn("search: find failed", "err", err)
			}
			if !pause() {
				d.end(&r, log)
				return r
			}
			continue
		}
		offers++
		s.setFinding(true)
		round := d.fanOut(ctx, r, o, tried)
		s.setFinding(false)
		for _, x := range round {
			tried = append(tried, x.Driver)
		}
		recorded := time.Now()
		if err = d.applySearched(ctx, &r, Event{Kind: EvOffer, Driver: o.Driver, ETA: o.ETA}); err != nil {
			d.releaseAll(ctx, r.ID, round)
			if errors.Is(err, ErrIllegalTransition) { // cancelled meanwhile
				return r
			}
			d.errs.Add(1)
			log.Warn("search: recording offer failed", "err", err)
			continue
		}
		d.offers.Add(uint64(len(round)))
		sending := time.Now()
		first := offers == 1
		if first {
			d.matchLatency.Observe(sending.Sub(started))
			d.phases[PhaseStart].Observe(started.Sub(queued))
			d.phases[PhaseFind].Observe(recorded.Sub(found))
			d.phases[PhaseRecord].Observe(sending.Sub(recorded))
		}
		expires := d.cfg.Now().Add(d.cfg.OfferTimeout)
		// The round is open to answers before its offers leave: a driver
		// may answer before this goroutine reaches await (the answer
		// waits in the mailbox), and must not be told no offer waits.
		s.setOffered(round)
		var live []Offer
		for _, x := range round {
			if d.cfg.Notifier.Send(x.Driver, OfferMessage{Type: "offer", Ride: r.ID, Pickup: r.Pickup, Dropoff: r.Dropoff,
				ETA: x.ETA.Seconds(), DistanceM: x.DistanceM, ExpiresAt: expires}) {
				live = append(live, x)
				continue
			}
			// The driver cannot see the offer (no WebSocket here, or its
			// queue is full): do not make the rider wait the timeout.
			d.timedOut.Add(1)
			d.releaseAll(ctx, r.ID, []Offer{x})
		}
		if first {
			d.phases[PhaseSend].Observe(time.Since(sending))
		}
		if len(live) == 0 {
			s.setOffered(nil)
			fctx, cancel := final(ctx)
			d.apply(fctx, &r, Event{Kind: EvOfferTimeout, Driver: o.Driver})
			cancel()
			continue
		}
		accepted, done := d.await(ctx, &r, s, o.Driver, live, log)
		if accepted || done {
			return r
		}
	}
	fctx, cancel := final(ctx)
	defer cancel()
	if err := d.apply(fctx, &r, Event{Kind: EvNoDriver}); err == nil {
		d.noDriver.Add(1)
	}
	return r
}

// final returns a context for writes that must land even when the search
// was cancelled or timed out: ctx's values, its own short deadline.
func final(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// fanOut reserves up to FanOut-1 more drivers beside first, the next
// best ones, for one round of offers; first comes first.
func (d *Dispatcher) fanOut(ctx context.Context, r Ride, first Offer, tried []positions.DriverID) []Offer {
	round := []Offer{first}
	exclude := append(append([]positions.DriverID(nil), tried...), first.Driver)
	for len(round) < d.cfg.FanOut {
		m, err := d.cfg.Finder.Match(ctx, matcher.MatchRequest{Ride: matcher.RideID(r.ID), Pickup: r.Pickup, Exclude: exclude})
		if err != nil {
			break // nobody else free (or trouble): offer to those we have
		}
		round = append(round, Offer{Driver: m.Driver.ID, Token: m.Token, ETA: m.ETA, DistanceM: m.Driver.DistanceM})
		exclude = append(exclude, m.Driver.ID)
	}
	return round
}

// releaseAll lets the drivers of offers go, with a context that outlives
// a cancelled search.
func (d *Dispatcher) releaseAll(ctx context.Context, id RideID, offers []Offer) {
	fctx, cancel := final(ctx)
	defer cancel()
	for _, o := range offers {
		d.cfg.Leases.Release(fctx, o.Driver, matcher.RideID(id), o.Token)
	}
}

// await waits for the answers to one round of offers of ride r (kept
// current as in run; primary is the driver the ride records as offered). The first accept wins and the rest
// of the round gets offer_cancelled; the round ends in decline when every
// driver declined, and in timeout when the timer fires first. It reports
// accepted, and done when the search is over either way.
func (d *Dispatcher) await(ctx context.Context, r *Ride, s *search, primary positions.DriverID, round []Offer, log *slog.Logger) (accepted, done bool) {
	pending := make(map[positions.DriverID]Offer, len(round))
	for _, o := range round {
		pending[o.Driver] = o
	}
	s.setOffered(round)
	defer s.setOffered(nil)
	stopTimer := s.arm(d.clk, d.cfg.OfferTimeout)
	defer stopTimer()
	// step records the round's outcome on the ride, even when the search
	// was cancelled.
	step := func(kind EventKind) {
		fctx, cancel := final(ctx)
		defer cancel()
		d.apply(fctx, r, Event{Kind: kind, Driver: primary})
	}
	// dropAll closes the round to answers, releases every pending driver
	// and tells them msg.
	dropAll := func(msg string) {
		s.setOffered(nil)
		for id, o := range pending {
			d.releaseAll(ctx, r.ID, []Offer{o})
			d.cfg.Notifier.Send(id, map[string]any{"type": msg, "ride": r.ID})
		}
		clear(pending)
	}
	for {
		w, a := s.wait()
		switch w {
		case wokeEnded:
			// Back to searching first, so the deadline can end the ride as
			// no_driver; after a rider's cancel the write is refused.
			dropAll("offer_cancelled")
			if d.base.Err() == nil {
				step(EvOfferTimeout)
			}
			d.end(r, log)
			return false, true
		case wokeTimer:
			d.timedOut.Add(uint64(len(pending)))
			dropAll("offer_expired")
			step(EvOfferTimeout)
			return false, false
		case wokeAnswer:
			o, ok := pending[a.driver]
			if !ok {
				continue // not a driver of this round: ignore
			}
			delete(pending, a.driver)
			if !a.accept {
				d.declined.Add(1)
				d.releaseAll(ctx, r.ID, []Offer{o})
				if len(pending) > 0 {
					continue
				}
				step(EvDecline)
				return false, false
			}
			// The ride commits only while the token is current.
			if err := d.cfg.Leases.Commit(ctx, o.Driver, matcher.RideID(r.ID), o.Token); err != nil {
				d.timedOut.Add(1)
				log.Info("accept came after the lease was lost", "driver", o.Driver, "err", err)
				d.releaseAll(ctx, r.ID, []Offer{o})
				if len(pending) > 0 {
					continue
				}
				step(EvOfferTimeout)
				return false, false
			}
			actx, acancel := final(ctx)
			err := d.apply(actx, r, Event{Kind: EvAccept, Driver: o.Driver, Token: int64(o.Token), FanOut: o.Driver != primary})
			if err != nil {
				// An error can hide a write that landed (its reply lost):
				// keep the trip lock if the ride says it is this driver's.
				if cur, gerr := d.cfg.Store.Get(actx, r.ID); gerr == nil && cur.State >= Accepted && cur.State <= Completed && cur.Driver == o.Driver {
					*r, err = cur, nil
				}
			}
			acancel()
			if err != nil {
				d.errs.Add(1)
				d.releaseAll(ctx, r.ID, []Offer{o})
				dropAll("offer_cancelled")
				log.Warn("recording accept failed", "err", err)
				return false, true
			}
			dropAll("offer_cancelled") // the rest of the round lost the race
			d.accepted.Add(1)
			return true, true
		}
	}
}

// end records why the search of r stopped early: a deadline becomes
// no_driver; a cancel was recorded by whoever cancelled.
func (d *Dispatcher) end(r *Ride, log *slog.Logger) {
	if d.base.Err() != nil {
		return // shutting down: the ride stays as it is
	}
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.applySearched(fctx, r, Event{Kind: EvNoDriver}); err == nil {
		d.noDriver.Add(1)
	} else if !errors.Is(err, ErrIllegalTransition) {
		log.Warn("recording no_driver failed", "err", err)
	}
}

// Abandoned trips.
//
// A ride after acceptance has no search and no goroutine: only its driver
// moves it on. The store tracks when each ride entered accepted, arrived
// or in_trip (RideStore.trackTrip); the sweep expires the rides that stay
// longer than StallTimeout (accepted, arrived) or MaxTrip (in_trip) and
// releases their driver's trip lock, so a vanished driver app neither
// keeps the rider waiting nor holds the driver until the lock's own TTL.

// errMovedOn: the ride took a step between the sweep's read and its write.
var errMovedOn = errors.New("ride moved on")

// sweepTrips runs one pass over the tracked trips and returns how many it
// expired.
func (d *Dispatcher) sweepTrips(ctx context.Context) int {
	now := d.cfg.Now()
	ended := 0
	for _, st := range []State{Accepted, Arrived, InTrip} {
		limit := d.cfg.StallTimeout
		if st == InTrip {
			limit = d.cfg.MaxTrip
		}
		ids, err := d.cfg.Store.stalledTrips(ctx, st, now.Add(-limit), 1000)
		if err != nil {
			if ctx.Err() == nil {
				d.errs.Add(1)
				d.cfg.Logger.Warn("trip sweep failed", "state", st, "err", err)
			}
			return ended
		}
		for _, id := range ids {
			if d.expireTrip(ctx, id, st, now, limit) {
				ended++
			}
		}
	}
	return ended
}

// expireTrip expires ride id if it is still in st, limit or more after its
// last step, and reports whether it did. Stale entries (the ride moved on,
// or is gone) are dropped; Redis trouble leaves the entry for the next
// pass.
func (d *Dispatcher) expireTrip(ctx context.Context, id RideID, st State, now time.Time, limit time.Duration) bool {
	r, err := d.cfg.Store.Get(ctx, id)
	switch {
	case errors.Is(err, ErrRideNotFound):
		d.cfg.Store.untrackTrip(ctx, st, id)
		return false
	case err != nil:
		return false
	case r.State != st:
		d.cfg.Store.untrackTrip(ctx, st, id)
		return false
	case now.Sub(r.UpdatedAt) < limit:
		d.cfg.Store.trackTrip(ctx, st, id, r.UpdatedAt) // the entry predates the ride's last step
		return false
	}
	// The check runs on every compare-and-set attempt: a step the driver
	// takes meanwhile wins over the expiry.
	after, err := d.cfg.Store.apply(ctx, id, &r, []Event{{Kind: EvExpire, At: now}}, func(cur Ride) error {
		if cur.State != st || now.Sub(cur.UpdatedAt) < limit {
			return errMovedOn
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, errMovedOn) && ctx.Err() == nil {
			d.errs.Add(1)
			d.cfg.Logger.Warn("expiring an abandoned trip failed", "ride", id, "err", err)
		}
		return false
	}
	if d.cfg.Relay != nil {
		d.cfg.Relay.Notify(id)
	}
	d.cfg.Logger.Info("abandoned trip expired", "ride", id, "state", st, "driver", after.Driver, "last_step", r.UpdatedAt)
	if after.Driver != "" && after.LeaseToken != 0 {
		if err := d.cfg.Leases.Release(ctx, after.Driver, matcher.RideID(id), matcher.Token(after.LeaseToken)); err != nil && !errors.Is(err, matcher.ErrLeaseLost) {
			d.cfg.Logger.Warn("releasing trip lock failed; it expires on its own", "ride", id, "driver", after.Driver, "err", err)
		}
		d.cfg.Notifier.Send(after.Driver, map[string]any{"type": "ride_expired", "ride": id})
	}
	return true
}
