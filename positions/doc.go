// Package positions owns the live supply: where every online driver is now.
//
// [Index] holds the drivers of one shard in memory and answers k-nearest and
// per-cell queries. It is not safe for concurrent use: exactly one goroutine
// (the cell worker that owns the shard's Kafka partition) calls it, and
// other goroutines send that owner their queries. This keeps the hot path
// free of locks and makes every state change happen in partition order.
package positions
