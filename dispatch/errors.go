package dispatch

import "errors"

var (
	// ErrIllegalTransition is returned when an event does not apply to the
	// ride's current state; the API answers 409 Conflict.
	ErrIllegalTransition = errors.New("illegal ride transition")
	// ErrInvalidRide is wrapped by validation errors of ride fields.
	ErrInvalidRide = errors.New("invalid ride")
)
