package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// RidesConfig configures the ride endpoints.
type RidesConfig struct {
	Store      *RideStore
	Dispatcher *Dispatcher
	Leases     LeaseKeeper
	Signer     *Signer
	Relay      *Relay       // optional
	Limiter    *RateLimiter // optional: per-subject limit on ride requests
	Now        func() time.Time
	Logger     *slog.Logger
	// Locator, when set, feeds the rider WebSocket the assigned driver's
	// position.
	Locator DriverLocator
	// WatchEvery is how often a rider WebSocket rereads its ride (default
	// 500 ms).
	WatchEvery time.Duration
	// OriginPatterns are extra browser origins for the rider WebSocket.
	OriginPatterns []string
	// Closing, when it ends, closes every rider WebSocket (shutdown).
	Closing context.Context
}

// Rides serves the rider API (request, read, cancel) and the drivers'
// answers and trip steps.
type Rides struct {
	cfg RidesConfig

	// watchMu guards closed; a watch joins watchers only while not closed,
	// so Wait never races an Add.
	watchMu  sync.Mutex
	closed   bool
	watchers sync.WaitGroup // rider WebSocket handlers
}

// Wait refuses new rider WebSockets and waits for the open ones to end;
// cancel Closing first so they do.
func (h *Rides) Wait() {
	h.watchMu.Lock()
	h.closed = true
	h.watchMu.Unlock()
	h.watchers.Wait()
}

// NewRides returns the ride endpoints.
func NewRides(cfg RidesConfig) (*Rides, error) {
	if cfg.Store == nil || cfg.Dispatcher == nil || cfg.Leases == nil || cfg.Signer == nil || cfg.Now == nil || cfg.Logger == nil {
		return nil, errors.New("rides config: Store, Dispatcher, Leases, Signer, Now and Logger are required")
	}
	return &Rides{cfg: cfg}, nil
}

// Routes adds the ride endpoints to mux.
func (h *Rides) Routes(mux Mux) {
	rs := h.cfg.Signer
	auth := func(f http.HandlerFunc, roles ...Role) http.Handler {
		return rs.RequireRole(h.cfg.Now, h.limited(f), roles...)
	}
	mux.Handle("POST /v1/rides", auth(h.request, RoleRider))
	mux.Handle("GET /v1/rides/{id}", auth(h.get, RoleRider, RoleDriver, RoleOps))
	mux.Handle("DELETE /v1/rides/{id}", auth(h.cancel, RoleRider))
	mux.Handle("GET /v1/rides/{id}/ws", http.HandlerFunc(h.watch)) // authenticates itself: browsers pass the token as a query parameter
	for path, kind := range map[string]EventKind{
		"accept": EvAccept, "decline": EvDecline, "arrived": EvArrive, "start": EvStart,
		"complete": EvComplete, "cancel": EvDriverCancel,
	} {
		mux.Handle("POST /v1/rides/{id}/"+path, auth(h.driverStep(kind).ServeHTTP, RoleDriver))
	}
}

// RideView is a ride as the API shows it.
type RideView struct {
	ID      RideID             `json:"id"`
	Rider   RiderID            `json:"rider"`
	Pickup  geo.LatLng         `json:"pickup"`
	Dropoff geo.LatLng         `json:"dropoff"`
	State   State              `json:"state"`
	Driver  positions.DriverID `json:"driver,omitempty"`
	Offers  int                `json:"offers"`
	// PickupETA is the latest offer's estimated seconds from the driver
	// to the pickup.
	PickupETA float64   `json:"pickup_eta_s,omitempty"`
	Version   uint64    `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func view(r Ride) RideView {
	return RideView{ID: r.ID, Rider: r.Rider, Pickup: r.Pickup, Dropoff: r.Dropoff, State: r.State, Driver: r.Driver,
		Offers: r.Offers, PickupETA: r.PickupETA, Version: r.Version, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
}

// RideRequest is the body of POST /v1/rides.
type RideRequest struct {
	Pickup  *geo.LatLng `json:"pickup"`
	Dropoff *geo.LatLng `json:"dropoff"`
}

const maxRideBody = 4096

// StartRetryGrace is how long a ride whose search could not start (503)
// waits, requested, for the rider's retry with the same Idempotency-Key.
const StartRetryGrace = 30 * time.Second

// storeError maps store and lease failures to API errors.
func storeError(err error) error {
	switch {
	case errors.Is(err, ErrRideNotFound):
		return &APIError{Status: http.StatusNotFound, Code: "not_found", Message: "no such ride"}
	case errors.Is(err, ErrIllegalTransition):
		return &APIError{Status: http.StatusConflict, Code: "illegal_transition", Message: err.Error()}
	case errors.Is(err, ErrIdempotencyMismatch):
		return &APIError{Status: http.StatusUnprocessableEntity, Code: "idempotency_mismatch", Message: err.Error()}
	case errors.Is(err, ErrConflict):
		return &APIError{Status: http.StatusConflict, Code: "conflict", Message: err.Error(), RetryAfter: time.Second}
	case errors.Is(err, ErrStoreUnavailable), errors.Is(err, matcher.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "ride store unavailable; retry shortly", RetryAfter: 2 * time.Second}
	}
	return err
}

// limited applies the per-subject rate limit (after authentication, so a
// client cannot spend another's budget).
func (h *Rides) limited(f http.HandlerFunc) http.HandlerFunc {
	if h.cfg.Limiter == nil {
		return f
	}
	return func(w http.ResponseWriter, r *http.Request) {
		c, _ := ClaimsFrom(r.Context())
		if ok, wait := h.cfg.Limiter.Allow(string(c.Role) + ":" + c.Subject); !ok {
			WriteError(w, &APIError{Status: http.StatusTooManyRequests, Code: "rate_limited", Message: "too many requests", RetryAfter: wait})
			return
		}
		f(w, r)
	}
}

func (h *Rides) request(w http.ResponseWriter, r *http.Request) {
	c, _ := ClaimsFrom(r.Context())
	req, err := decodeRideRequest(w, r)
	if err != nil {
		WriteError(w, err)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 128 {
		WriteError(w, BadField("Idempotency-Key", "at most 128 bytes"))
		return
	}
	id := newRideID()
	if key != "" {
		id = IdempotentID(RiderID(c.Subject), key)
	}
	ride, err := NewRide(id, RiderID(c.Subject), *req.Pickup, *req.Dropoff, h.cfg.Now())
	if err != nil {
		WriteError(w, BadField("rider", "%v", err))
		return
	}
	stored, created, err := h.cfg.Store.CreateSearching(r.Context(), ride, h.cfg.Dispatcher.SearchUntil(h.cfg.Now()))
	if err != nil {
		WriteError(w, storeError(err))
		return
	}
	if h.cfg.Relay != nil {
		h.cfg.Relay.Notify(id)
	}
	if stored.State == Requested {
		if err := h.cfg.Dispatcher.StartTracked(stored); err != nil {
			// At capacity or Redis trouble: no search runs for the ride.
			// The 503 asks the rider to retry, and a retry with the same
			// Idempotency-Key must start the search, not find the ride
			// dead: it stays requested for StartRetryGrace, after which
			// the search sweep expires it. If even that cannot be
			// recorded, it ends now rather than wait for nobody.
			if terr := h.cfg.Store.TrackSearch(r.Context(), id, h.cfg.Now().Add(StartRetryGrace)); terr != nil {
				if ended, aerr := h.cfg.Store.ApplyFrom(r.Context(), stored, Event{Kind: EvExpire, At: h.cfg.Now()}); aerr == nil {
					stored = ended
				}
			}
			WriteError(w, &APIError{Status: http.StatusServiceUnavailable, Code: "busy", Message: "matching is at capacity; retry shortly", RetryAfter: 2 * time.Second})
			return
		}
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	w.Header().Set("Location", "/v1/rides/"+string(id))
	writeJSON(w, status, view(stored))
}

// decodeRideRequest reads and checks the body of POST /v1/rides: both
// points present and valid, or an APIError naming the field.
func decodeRideRequest(w http.ResponseWriter, r *http.Request) (RideRequest, error) {
	var req RideRequest
	if err := DecodeJSON(w, r, maxRideBody, &req); err != nil {
		return req, err
	}
	if req.Pickup == nil {
		return req, BadField("pickup", "pickup is required")
	}
	if req.Dropoff == nil {
		return req, BadField("dropoff", "dropoff is required")
	}
	for _, f := range []struct {
		name string
		p    geo.LatLng
	}{{"pickup", *req.Pickup}, {"dropoff", *req.Dropoff}} {
		if err := f.p.Validate(); err != nil {
			return req, BadField(f.name, "%v", err)
		}
	}
	return req, nil
}

func newRideID() RideID {
	var b [12]byte
	rand.Read(b[:])
	return RideID("r" + hex.EncodeToString(b[:]))
}

// load returns the ride if the caller may see it: its rider, its driver,
// or ops. Anyone else gets 404, which does not reveal that it exists.
func (h *Rides) load(r *http.Request) (Ride, error) {
	c, _ := ClaimsFrom(r.Context())
	id := RideID(r.PathValue("id"))
	if id == "" || len(id) > 64 {
		return Ride{}, BadField("id", "ride id must be 1 to 64 bytes")
	}
	ride, err := h.cfg.Store.Get(r.Context(), id)
	if err != nil {
		return Ride{}, storeError(err)
	}
	switch {
	case c.Role == RoleOps,
		c.Role == RoleRider && string(ride.Rider) == c.Subject,
		c.Role == RoleDriver && string(ride.Driver) == c.Subject:
		return ride, nil
	}
	return Ride{}, storeError(ErrRideNotFound)
}

func (h *Rides) get(w http.ResponseWriter, r *http.Request) {
	ride, err := h.load(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view(ride))
}

func (h *Rides) cancel(w http.ResponseWriter, r *http.Request) {
	ride, err := h.load(r)
	if err != nil {
		WriteError(w, err)
		return
	}
	ended, err := h.cfg.Store.ApplyFrom(r.Context(), ride, Event{Kind: EvRiderCancel, At: h.cfg.Now()})
	if err != nil {
		WriteError(w, storeError(err))
		return
	}
	h.cfg.Dispatcher.Stop(ride.ID)
	if ended.LeaseToken != 0 && ended.Driver != "" {
		// The driver had accepted: tell its app the trip is off. (A ride
		// still on offer is withdrawn by its search, as offer_cancelled.)
		h.cfg.Dispatcher.Notify(ended.Driver, map[string]any{"type": "ride_cancelled", "ride": ended.ID})
	}
	h.ended(r.Context(), ended)
	writeJSON(w, http.StatusOK, view(ended))
}

// ended lets the driver go when a ride that had one assigned ends. It
// reads the lock from the ride as written (an accept may have landed
// between a handler's read and its write).
func (h *Rides) ended(ctx context.Context, after Ride) {
	if h.cfg.Relay != nil {
		h.cfg.Relay.Notify(after.ID)
	}
	if !after.State.Terminal() || after.LeaseToken == 0 || after.Driver == "" {
		return
	}
	if err := h.cfg.Leases.Release(ctx, after.Driver, matcher.RideID(after.ID), matcher.Token(after.LeaseToken)); err != nil && !errors.Is(err, matcher.ErrLeaseLost) {
		h.cfg.Logger.Warn("releasing trip lock failed; it expires on its own", "ride", after.ID, "driver", after.Driver, "err", err)
	}
}

// DriverAction applies a driver's answer to an offer (accept, decline) or
// a trip step (arrived, start, complete, cancel) to ride id, over HTTP or
// the driver's WebSocket. Answers return the ride as it was (the
// dispatcher records them); steps return the ride after.
func (h *Rides) DriverAction(ctx context.Context, driver positions.DriverID, id RideID, kind EventKind) (Ride, error) {
	if id == "" || len(id) > 64 {
		return Ride{}, BadField("ride", "ride id must be 1 to 64 bytes")
	}
	switch kind {
	case EvArrive, EvStart, EvComplete, EvDriverCancel:
		// From the store's latest copy of the ride when it has one (no
		// read): the compare-and-set judges the copy, and the driver is
		// checked on the ride the write lands on, never on a stale copy.
		next, err := h.cfg.Store.applyChecked(ctx, id, Event{Kind: kind, Driver: driver, At: h.cfg.Now()}, func(cur Ride) error {
			if cur.Driver != driver {
				return fmt.Errorf("%w: %s", ErrRideNotFound, id) // not yours: as if absent
			}
			return nil
		})
		if err != nil {
			return Ride{}, storeError(err)
		}
		h.ended(ctx, next)
		return next, nil
	case EvAccept, EvDecline:
	default:
		return Ride{}, BadField("type", "%s is not a driver action", kind)
	}
	if h.cfg.Dispatcher.Offered(id, driver) {
		// The offer is this process's: its search recorded it before it
		// left and judges the answer (the lease and the ride's
		// compare-and-set), so no read is needed. The reply shows the ride
		// as the offer did.
		if !h.cfg.Dispatcher.Answer(id, driver, kind == EvAccept) {
			return Ride{}, errNoPendingOffer
		}
		return Ride{ID: id, State: Offered}, nil
	}
	ride, err := h.cfg.Store.Get(ctx, id)
	if err != nil {
		return Ride{}, storeError(err)
	}
	if ride.Driver != driver && !(ride.State == Offered && h.cfg.Dispatcher.Offered(ride.ID, driver)) { // a fan-out round's other drivers may answer too
		return Ride{}, storeError(ErrRideNotFound) // not yours: as if absent
	}
	if ride.State != Offered {
		return Ride{}, storeError(fmt.Errorf("%w: %s in state %s", ErrIllegalTransition, kind, ride.State))
	}
	if !h.cfg.Dispatcher.Answer(ride.ID, driver, kind == EvAccept) {
		return Ride{}, errNoPendingOffer
	}
	return ride, nil
}

// errNoPendingOffer answers a driver's accept or decline that no search
// of this process waits for.
var errNoPendingOffer = &APIError{Status: http.StatusConflict, Code: "no_pending_offer", Message: "no offer of this ride is waiting for your answer here"}

// driverStep serves DriverAction over HTTP.
func (h *Rides) driverStep(kind EventKind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := ClaimsFrom(r.Context())
		ride, err := h.DriverAction(r.Context(), positions.DriverID(c.Subject), RideID(r.PathValue("id")), kind)
		if err != nil {
			WriteError(w, err)
			return
		}
		if kind == EvAccept || kind == EvDecline {
			writeJSON(w, http.StatusAccepted, map[string]any{"ride": ride.ID, "answer": kind.String()})
			return
		}
		writeJSON(w, http.StatusOK, view(ride))
	})
}
