package positions

import "errors"

// Sentinel errors of the Kafka ingest path (event codec, publisher, worker).
// They live beside errors.go, which holds the index's, so that the two
// halves of the package can be read on their own.
var (
	// ErrBadEvent is wrapped by every event decoding or validation error;
	// the wrapping error gives the reason.
	ErrBadEvent = errors.New("bad position event")
	// ErrOverloaded is returned by Publisher.Publish when its buffer is at
	// its bound: the caller sheds the position (HTTP 429 + Retry-After).
	ErrOverloaded = errors.New("position publisher overloaded")
	// ErrUnavailable is returned by Publisher.Publish while its circuit
	// breaker is open: Kafka has acknowledged nothing for StallTimeout
	// with records waiting. The gateway answers 503 + Retry-After.
	ErrUnavailable = errors.New("position intake unavailable: Kafka is not acknowledging")
	// ErrClosed is returned after a Publisher or Worker has stopped.
	ErrClosed = errors.New("closed")
)
