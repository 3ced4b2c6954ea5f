package matcher

import "github.com/hexdispatch/hexdispatch/positions"

// Cached exposes the resolver's cached partitions to tests.
func (r *Resolver) Cached() []positions.Partition { return r.cached() }
