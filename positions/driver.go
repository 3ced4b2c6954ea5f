package positions

import (
	"fmt"
	"strings"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

// DriverID identifies a driver. IDs are opaque, non-empty and at most
// MaxDriverIDLen bytes.
type DriverID string

// MaxDriverIDLen bounds a DriverID so that one bad client cannot make the
// index hold arbitrarily large keys.
const MaxDriverIDLen = 64

// Validate checks id at the boundary.
func (id DriverID) Validate() error {
	switch {
	case id == "":
		return fmt.Errorf("%w: driver id is empty", ErrInvalidDriver)
	case len(id) > MaxDriverIDLen:
		return fmt.Errorf("%w: driver id is %d bytes, more than %d", ErrInvalidDriver, len(id), MaxDriverIDLen)
	}
	return nil
}

// Status is what a driver is doing. Offline drivers are not in the index at
// all: going offline is a removal.
type Status uint8

// Statuses. The zero value is invalid so that a missing field is caught.
const (
	StatusAvailable Status = iota + 1 // free for a new ride
	StatusEnRoute                     // driving to a pickup
	StatusOnTrip                      // carrying a rider
	numStatuses
)

var statusNames = [...]string{"", "available", "en_route", "on_trip"}

// Valid reports whether s is a known status.
func (s Status) Valid() bool { return s >= StatusAvailable && s < numStatuses }

func (s Status) String() string {
	if s.Valid() {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// ParseStatus reads the lower-case name of a status.
func ParseStatus(name string) (Status, error) {
	for s := StatusAvailable; s < numStatuses; s++ {
		if statusNames[s] == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: %q (want one of %s)", ErrInvalidStatus, name, strings.Join(statusNames[1:], ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (s Status) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrInvalidStatus, uint8(s))
	}
	return []byte(statusNames[s]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Status) UnmarshalText(b []byte) error {
	v, err := ParseStatus(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// StatusMask is a set of statuses; the zero mask matches every status.
type StatusMask uint8

// Mask returns the set holding only s.
func (s Status) Mask() StatusMask { return 1 << s }

// Has reports whether m admits s. The zero mask admits everything.
func (m StatusMask) Has(s Status) bool { return m == 0 || m&(1<<s) != 0 }

// Filter narrows Nearest to some drivers.
type Filter struct {
	// Statuses admits only these statuses; zero admits all.
	Statuses StatusMask
}

// Available is the filter a matcher uses: free drivers only.
var Available = Filter{Statuses: StatusAvailable.Mask()}

// Driver is one driver's last known position.
type Driver struct {
	ID     DriverID
	Pos    geo.LatLng // stored at 1e-7 degree (about 1 cm)
	Status Status
	Seq    uint64
	// At is when the position was observed, as given to Upsert. TTL counts
	// from it.
	At time.Time
}

// Candidate is a Nearest result.
type Candidate struct {
	Driver
	DistanceM float64       // great-circle distance to the query centre
	Age       time.Duration // how old the position is at query time
}

// Outcome says what an Upsert or Remove did.
type Outcome uint8

// Outcomes.
const (
	Inserted Outcome = iota + 1 // a driver not held before
	Updated                     // a held driver moved or changed status
	Stale                       // seq not newer than the held one: dropped
	TooOld                      // already past TTL when it arrived: dropped
	Removed                     // a held driver was removed
	NotFound                    // removal of a driver not held
)

var outcomeNames = [...]string{"", "inserted", "updated", "stale", "too_old", "removed", "not_found"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) && o != 0 {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Applied reports whether the call changed the index.
func (o Outcome) Applied() bool { return o == Inserted || o == Updated || o == Removed }
