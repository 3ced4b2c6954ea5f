package positions

import "errors"

var (
	// ErrInvalidDriver is returned for an empty or oversized driver ID.
	ErrInvalidDriver = errors.New("invalid driver id")
	// ErrInvalidStatus is returned for a status outside the known enum.
	ErrInvalidStatus = errors.New("invalid driver status")
	// ErrInvalidQuery is returned for a bad k, radius or filter.
	ErrInvalidQuery = errors.New("invalid query")
	// ErrFull is returned when an Index already holds MaxDrivers drivers.
	ErrFull = errors.New("index full")
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("invalid config")
)
