package positions

import (
	"context"

	"github.com/hexdispatch/hexdispatch/geo"
)

// Partition is a Kafka partition of the driver-positions topic; each holds
// the drivers of the shard cells that hash to it, in one Index.
type Partition int32

// NearestRequest asks one owner for the k nearest drivers over some of the
// partitions it owns.
type NearestRequest struct {
	Partitions []Partition
	Center     geo.LatLng
	K          int
	RadiusM    float64
	Filter     Filter
}

// NearestResponse is the owner's answer: candidates merged over the
// partitions it could answer for, nearest first, and the partitions it could
// not (not owned, or still rebuilding). Missed partitions make the answer
// partial, not wrong.
type NearestResponse struct {
	Candidates []Candidate
	Missed     []Partition
}

// CellCountsRequest asks for per-cell driver counts at an H3 resolution.
type CellCountsRequest struct {
	Partitions []Partition
	Res        int
	Filter     Filter
}

// CellCountsResponse holds counts summed over the answered partitions.
type CellCountsResponse struct {
	// Counts is the caller's to keep and change (every answer is a new
	// map), so that sums over several answers can add into one of them.
	Counts map[geo.Cell]int
	Missed []Partition
}

// Querier answers queries for the partitions a process owns. The cell
// worker implements it in-process; the cross-process RPC client implements
// it over the network. Implementations are safe for concurrent use and
// honour ctx's deadline.
type Querier interface {
	Nearest(ctx context.Context, req NearestRequest) (NearestResponse, error)
	CellCounts(ctx context.Context, req CellCountsRequest) (CellCountsResponse, error)
}
