package dispatch

import (
	"fmt"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// RideID identifies a ride.
type RideID string

// RiderID identifies a rider.
type RiderID string

// State is where a ride is in its lifecycle:
//
//	requested -> searching -> offered -> accepted -> arrived -> in_trip -> completed
//	                 ^            |
//	                 +------------+ (declined / offer timed out)
//
// plus the terminal cancelled_by_rider, cancelled_by_driver, no_driver and
// expired. Every non-terminal state can expire: before acceptance when the
// search outlives its process, after it when the driver stops progressing
// (DispatcherConfig.StallTimeout, MaxTrip).
type State uint8

// States. The zero value is invalid.
const (
	Requested State = iota + 1
	Searching
	Offered
	Accepted
	Arrived
	InTrip
	Completed
	CancelledByRider
	CancelledByDriver
	NoDriver
	Expired
	numStates
)

var stateNames = [...]string{"", "requested", "searching", "offered", "accepted", "arrived", "in_trip",
	"completed", "cancelled_by_rider", "cancelled_by_driver", "no_driver", "expired"}

// Valid reports whether s is a known state.
func (s State) Valid() bool { return s >= Requested && s < numStates }

// Terminal reports whether no event leaves s.
func (s State) Terminal() bool { return s >= Completed && s < numStates }

func (s State) String() string {
	if s.Valid() {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: state %d", ErrInvalidRide, uint8(s))
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	for v := Requested; v < numStates; v++ {
		if stateNames[v] == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("%w: unknown state %q", ErrInvalidRide, b)
}

// EventKind is something that happens to a ride.
type EventKind uint8

// Event kinds.
const (
	EvSearch       EventKind = iota + 1 // matching started
	EvOffer                             // an offer went to a driver (Driver set)
	EvDecline                           // the offered driver declined
	EvOfferTimeout                      // the offered driver did not answer in time
	EvAccept                            // the offered driver accepted
	EvArrive                            // the driver is at the pickup
	EvStart                             // the rider is in the car
	EvComplete                          // dropped off
	EvRiderCancel
	EvDriverCancel
	EvNoDriver // search gave up: no candidate, too many declines, or deadline
	EvExpire   // the ride outlived its deadline in a non-terminal state
	numEventKinds
)

var eventNames = [...]string{"", "search", "offer", "decline", "offer_timeout", "accept", "arrive",
	"start", "complete", "rider_cancel", "driver_cancel", "no_driver", "expire"}

func (k EventKind) String() string {
	if k >= EvSearch && k < numEventKinds {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// transitions is the whole state machine: from state, on event, to state.
// Anything absent is illegal.
var transitions = map[State]map[EventKind]State{
	Requested: {EvSearch: Searching, EvRiderCancel: CancelledByRider, EvExpire: Expired},
	Searching: {EvOffer: Offered, EvNoDriver: NoDriver, EvRiderCancel: CancelledByRider, EvExpire: Expired},
	Offered: {EvAccept: Accepted, EvDecline: Searching, EvOfferTimeout: Searching,
		EvRiderCancel: CancelledByRider, EvExpire: Expired},
	Accepted: {EvArrive: Arrived, EvRiderCancel: CancelledByRider, EvDriverCancel: CancelledByDriver, EvExpire: Expired},
	Arrived:  {EvStart: InTrip, EvRiderCancel: CancelledByRider, EvDriverCancel: CancelledByDriver, EvExpire: Expired},
	InTrip:   {EvComplete: Completed, EvExpire: Expired},
}

// Next returns the state after applying k in s, or ErrIllegalTransition.
func Next(s State, k EventKind) (State, error) {
	if to, ok := transitions[s][k]; ok {
		return to, nil
	}
	return s, fmt.Errorf("%w: %s in state %s", ErrIllegalTransition, k, s)
}

// Event is one transition as it is recorded (the ride-events stream).
type Event struct {
	Kind   EventKind
	Driver positions.DriverID // the driver concerned, for offer and after
	// Token is the driver's lease token, recorded on accept so the trip
	// lock can be released when the ride ends.
	Token int64
	// FanOut marks an accept by a driver who got the offer as one of a
	// fan-out round beside the driver the ride records: that driver takes
	// the ride.
	FanOut bool
	// ETA is the offered driver's estimated time to the pickup (offer only).
	ETA time.Duration
	At  time.Time
}

// Ride is a ride's read model.
type Ride struct {
	ID      RideID     `json:"id"`
	Rider   RiderID    `json:"rider"`
	Pickup  geo.LatLng `json:"pickup"`
	Dropoff geo.LatLng `json:"dropoff"`
	State   State      `json:"state"`
	// Driver is the driver currently offered or assigned; empty while
	// searching.
	Driver positions.DriverID `json:"driver,omitempty"`
	// Offers counts offers made; Declines counts declines and timeouts.
	Offers   int `json:"offers"`
	Declines int `json:"declines"`
	// PickupETA is the latest offer's estimated seconds from the offered
	// driver to the pickup.
	PickupETA float64 `json:"pickup_eta_s,omitempty"`
	// LeaseToken is the accepted driver's fencing token (internal: the
	// API does not show it).
	LeaseToken int64 `json:"lease_token,omitempty"`
	// Version increases with every applied event, so writers can
	// compare-and-set and readers can order snapshots.
	Version   uint64    `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// NewRide returns a ride in state requested after validating its fields.
func NewRide(id RideID, rider RiderID, pickup, dropoff geo.LatLng, at time.Time) (Ride, error) {
	switch {
	case id == "" || len(id) > 64:
		return Ride{}, fmt.Errorf("%w: ride id must be 1 to 64 bytes", ErrInvalidRide)
	case rider == "" || len(rider) > 64:
		return Ride{}, fmt.Errorf("%w: rider id must be 1 to 64 bytes", ErrInvalidRide)
	}
	if err := pickup.Validate(); err != nil {
		return Ride{}, fmt.Errorf("%w: pickup: %w", ErrInvalidRide, err)
	}
	if err := dropoff.Validate(); err != nil {
		return Ride{}, fmt.Errorf("%w: dropoff: %w", ErrInvalidRide, err)
	}
	return Ride{ID: id, Rider: rider, Pickup: pickup, Dropoff: dropoff, State: Requested, Version: 1, CreatedAt: at, UpdatedAt: at}, nil
}

// Apply moves r by ev. On error r is unchanged. An offer must name a
// driver; events from the driver side (accept, decline, arrive, start,
// complete, driver_cancel) must come from the ride's current driver.
func (r *Ride) Apply(ev Event) error {
	to, err := Next(r.State, ev.Kind)
	if err != nil {
		return err
	}
	switch ev.Kind {
	case EvOffer:
		if ev.Driver == "" {
			return fmt.Errorf("%w: offer names no driver", ErrInvalidRide)
		}
	case EvAccept, EvDecline, EvOfferTimeout, EvArrive, EvStart, EvComplete, EvDriverCancel:
		if ev.Kind == EvAccept && ev.FanOut && ev.Driver != "" {
			break
		}
		if ev.Driver != r.Driver {
			return fmt.Errorf("%w: %s by driver %q, but the ride's driver is %q", ErrIllegalTransition, ev.Kind, ev.Driver, r.Driver)
		}
	}
	switch ev.Kind {
	case EvOffer:
		r.Driver = ev.Driver
		r.Offers++
		r.PickupETA = ev.ETA.Seconds()
	case EvDecline, EvOfferTimeout:
		r.Driver = ""
		r.Declines++
	case EvAccept:
		r.Driver = ev.Driver
		r.LeaseToken = ev.Token
	}
	r.State = to
	r.Version++
	r.UpdatedAt = ev.At
	return nil
}
