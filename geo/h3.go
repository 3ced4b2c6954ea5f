package geo

import (
	"fmt"

	"github.com/uber/h3-go/v4"
)

// Resolutions the design uses. See DESIGN.md, Partitioning.
const (
	// IndexRes cells (about 0.1 km²) carry heatmaps and fine counts.
	IndexRes = 9
	// SearchRes cells (edge about 1.2 km) are what a match gathers.
	SearchRes = 7
	// DefaultShardRes is the parent resolution that decides the Kafka
	// partition of a search cell.
	DefaultShardRes = 6
)

// Cell is an H3 cell index.
type Cell = h3.Cell

func checkRes(res int) error {
	if res < 0 || res > h3.MaxResolution {
		return fmt.Errorf("%w: %d is outside 0..%d", ErrInvalidResolution, res, h3.MaxResolution)
	}
	return nil
}

// CellAt returns the H3 cell of p at res. p is validated first because h3-go
// wraps out-of-range input silently.
func CellAt(p LatLng, res int) (Cell, error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	if err := checkRes(res); err != nil {
		return 0, err
	}
	return h3.LatLngToCell(h3.LatLng{Lat: p.Lat, Lng: p.Lng}, res)
}

// CheckCell validates an H3 index that came from outside.
func CheckCell(c Cell) error {
	if !c.IsValid() {
		return fmt.Errorf("%w: %#x", ErrInvalidCell, uint64(c))
	}
	return nil
}

// Parent returns c's ancestor at res (res <= c's resolution).
func Parent(c Cell, res int) (Cell, error) {
	if err := CheckCell(c); err != nil {
		return 0, err
	}
	if err := checkRes(res); err != nil {
		return 0, err
	}
	if res > c.Resolution() {
		return 0, fmt.Errorf("%w: parent resolution %d is finer than the cell's %d", ErrInvalidResolution, res, c.Resolution())
	}
	return c.Parent(res)
}

// ShardCell is the cell that decides which shard owns p: the parent at
// shardRes of p's search cell (not p's own cell at shardRes, which can
// differ because H3 children do not nest exactly).
func ShardCell(p LatLng, shardRes int) (Cell, error) {
	c, err := CellAt(p, SearchRes)
	if err != nil {
		return 0, err
	}
	if shardRes >= SearchRes {
		return c, nil
	}
	return Parent(c, shardRes)
}

// Disk returns the cells within grid distance k of c, c included.
func Disk(c Cell, k int) ([]Cell, error) {
	if err := CheckCell(c); err != nil {
		return nil, err
	}
	if k < 0 {
		return nil, fmt.Errorf("geo: negative ring size %d", k)
	}
	return h3.GridDisk(c, k)
}

// Ring returns the cells at exactly grid distance k from c.
func Ring(c Cell, k int) ([]Cell, error) {
	if err := CheckCell(c); err != nil {
		return nil, err
	}
	if k < 0 {
		return nil, fmt.Errorf("geo: negative ring size %d", k)
	}
	return h3.GridRing(c, k)
}

// Boundary returns the corners of c, counter-clockwise.
func Boundary(c Cell) ([]LatLng, error) {
	if err := CheckCell(c); err != nil {
		return nil, err
	}
	b, err := h3.CellToBoundary(c)
	if err != nil {
		return nil, err
	}
	out := make([]LatLng, len(b))
	for i, v := range b {
		out[i] = LatLng{Lat: v.Lat, Lng: v.Lng}
	}
	return out, nil
}

// CellCenter returns the centre of c.
func CellCenter(c Cell) (LatLng, error) {
	if err := CheckCell(c); err != nil {
		return LatLng{}, err
	}
	ll, err := h3.CellToLatLng(c)
	return LatLng{Lat: ll.Lat, Lng: ll.Lng}, err
}

// ParentOf returns c's ancestor at res like Parent, in pure Go: an H3 index
// holds its resolution in bits 52-55 and one 3-bit digit per resolution
// below, and an ancestor is the same index with a coarser resolution and
// the finer digits set to 7 (unused). It skips the cgo call, for loops over
// many cells. c must be a valid cell (CheckCell) and res in [0, c's
// resolution].
func ParentOf(c Cell, res int) Cell {
	v := uint64(c)
	v = v&^(uint64(0xF)<<52) | uint64(res)<<52
	v |= uint64(1)<<(uint(15-res)*3) - 1
	return Cell(v)
}
