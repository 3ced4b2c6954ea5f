package matcher

import "errors"

var (
	// ErrInvalidConfig is wrapped by the Validate errors of every Config in
	// the package.
	ErrInvalidConfig = errors.New("invalid config")
	// ErrInvalidRide is returned for an empty or oversized ride ID.
	ErrInvalidRide = errors.New("invalid ride id")
	// ErrDriverTaken is returned by Reserve when another ride holds the
	// driver (an offer is out to them or they are on a trip).
	ErrDriverTaken = errors.New("driver is taken")
	// ErrLeaseLost is returned by Commit and Release when the caller's
	// token is no longer current: the lease expired, was released, or the
	// driver was reserved again since.
	ErrLeaseLost = errors.New("lease lost: token is not current")
	// ErrUnavailable wraps failures to reach Redis (down, timing out,
	// loading). The API answers it with 503 and Retry-After; it never means
	// that a reservation happened.
	ErrUnavailable = errors.New("reservation store unavailable")
	// ErrStaleOwner is returned by Registry.Publish when a newer fence
	// (consumer-group generation) already owns the partition.
	ErrStaleOwner = errors.New("stale owner: a newer generation owns the partition")
	// ErrNoOwner is returned when no live owner is published for a
	// partition.
	ErrNoOwner = errors.New("no owner for partition")
	// ErrNoDriver is returned by a match that found no free driver.
	ErrNoDriver = errors.New("no driver available")
	// ErrInvalidQuery is returned for an invalid pickup or N.
	ErrInvalidQuery = errors.New("invalid match query")
	// ErrRPC is wrapped by an RPCClient's errors: transport failures and
	// non-200 answers. A gather counts the owner's partitions as missed.
	ErrRPC = errors.New("worker rpc failed")
	// ErrRPCDecode is wrapped by errors decoding a worker RPC body.
	ErrRPCDecode = errors.New("malformed rpc body")
)
