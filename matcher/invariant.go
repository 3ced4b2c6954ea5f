package matcher

import (
	"fmt"
	"sync"

	"github.com/hexdispatch/hexdispatch/positions"
)

// AssignmentKind is what happened to an assignment.
type AssignmentKind uint8

// Assignment kinds.
const (
	// AssignmentCommitted: the ride's token was committed (the driver accepted).
	AssignmentCommitted AssignmentKind = iota + 1
	// AssignmentReleased: the committed assignment ended (trip done, cancelled).
	AssignmentReleased
)

func (k AssignmentKind) String() string {
	switch k {
	case AssignmentCommitted:
		return "committed"
	case AssignmentReleased:
		return "released"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// AssignmentEvent is one step in the life of a driver-ride assignment, as
// observed by the code that took it.
type AssignmentEvent struct {
	Kind   AssignmentKind
	Driver positions.DriverID
	Ride   RideID
	Token  Token
}

// CheckNoDoubleAssignment replays events in order and returns an error
// naming the first violation of exactly-one assignment:
//
//   - a driver committed to a ride while committed to another;
//   - a ride committed to a driver while it holds another;
//   - a driver committed with a token not above its previous one (the
//     fence went backwards, so a stale holder could act);
//   - a release of an assignment that is not held.
//
// For the check to be sound, record Committed after Commit returned
// success and Released before calling Release: then the recorded order
// can only make assignments look longer than they were, never shorter,
// and any overlap it finds happened. AssignmentLog does this bookkeeping
// for concurrent callers; tests and the simulation share it.
func CheckNoDoubleAssignment(events []AssignmentEvent) error {
	type held struct {
		ride  RideID
		token Token
	}
	byDriver := make(map[positions.DriverID]held)
	byRide := make(map[RideID]positions.DriverID)
	lastToken := make(map[positions.DriverID]Token)
	for i, e := range events {
		switch e.Kind {
		case AssignmentCommitted:
			if h, ok := byDriver[e.Driver]; ok {
				return fmt.Errorf("event %d: driver %s committed to ride %s while committed to ride %s", i, e.Driver, e.Ride, h.ride)
			}
			if d, ok := byRide[e.Ride]; ok {
				return fmt.Errorf("event %d: ride %s committed to driver %s while it holds driver %s", i, e.Ride, e.Driver, d)
			}
			if last, ok := lastToken[e.Driver]; ok && e.Token <= last {
				return fmt.Errorf("event %d: driver %s committed with token %d, not above its previous %d", i, e.Driver, e.Token, last)
			}
			byDriver[e.Driver] = held{e.Ride, e.Token}
			byRide[e.Ride] = e.Driver
			lastToken[e.Driver] = e.Token
		case AssignmentReleased:
			h, ok := byDriver[e.Driver]
			if !ok || h.ride != e.Ride || h.token != e.Token {
				return fmt.Errorf("event %d: release of driver %s from ride %s (token %d), which is not held", i, e.Driver, e.Ride, e.Token)
			}
			delete(byDriver, e.Driver)
			delete(byRide, e.Ride)
		default:
			return fmt.Errorf("event %d: unknown kind %v", i, e.Kind)
		}
	}
	return nil
}

// AssignmentLog records assignment events from many goroutines in one
// order. Concurrency: mu guards events.
type AssignmentLog struct {
	mu     sync.Mutex
	events []AssignmentEvent
}

// Committed records a successful Commit. Call it after Commit returned.
func (l *AssignmentLog) Committed(driver positions.DriverID, ride RideID, token Token) {
	l.add(AssignmentEvent{Kind: AssignmentCommitted, Driver: driver, Ride: ride, Token: token})
}

// Released records the end of an assignment. Call it before Release.
func (l *AssignmentLog) Released(driver positions.DriverID, ride RideID, token Token) {
	l.add(AssignmentEvent{Kind: AssignmentReleased, Driver: driver, Ride: ride, Token: token})
}

func (l *AssignmentLog) add(e AssignmentEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// Events returns a copy of the events so far.
func (l *AssignmentLog) Events() []AssignmentEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]AssignmentEvent(nil), l.events...)
}

// Check runs CheckNoDoubleAssignment over the events so far.
func (l *AssignmentLog) Check() error { return CheckNoDoubleAssignment(l.Events()) }
