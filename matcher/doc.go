// Package matcher owns the pairing of riders with drivers: finding the
// candidates near a pickup across shards, and reserving exactly one
// driver per ride.
//
// The pieces, in the order a ride request meets them:
//
//   - [Gatherer] maps the pickup to its H3 search cell and ring, the ring
//     to shard cells and Kafka partitions (with the publisher's
//     [positions.Partitioner]), the partitions to their owners ([Owners]),
//     and fans out one request per owner in parallel under a deadline. It
//     grows the ring until it has N candidates or reaches MaxRadiusM, and
//     reports missed partitions instead of failing.
//   - [Owners] is [LocalOwners] in `-role all` (no network hop), a
//     [Resolver] over the Redis [Registry] across processes (workers
//     publish partition -> address with a fenced TTL heartbeat), or
//     [StaticOwners]. Across processes the Querier is an [RPCClient]
//     talking to [NewRPCHandler] on the worker.
//   - [Greedy] ranks the candidates by ETA and reserves the first free one
//     with [Leases]: a Redis lease per driver with a fencing token, which
//     only the current token can commit (the trip lock) or release. The
//     batched policy ([BatchPlanner]) plans a window of requests at once.
//   - [CheckNoDoubleAssignment] and [AssignmentLog] state the invariant
//     that tests and the simulation check: no driver committed to two
//     rides, no ride to two drivers, tokens only grow.
//
// Goroutines: a gather starts one goroutine per owner beyond the first
// and waits for all of them before returning (Queriers honour ctx, so
// the deadline bounds the wait); [Registry.Heartbeat] runs in the
// worker's goroutine until its ctx ends; the RPC handler runs in
// net/http's per-request goroutines. Everything else runs in the
// caller's goroutine, and all shared state is in Redis or under a
// documented mutex.
package matcher
