package positions

import (
	"fmt"
	"iter"
	"math"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

// Config configures an Index.
type Config struct {
	// TTL is how long a driver stays after its last position. A driver whose
	// last position is TTL or more old is gone: queries skip it and Expire
	// drops it.
	TTL time.Duration
	// CellSizeM is the height of a grid bucket in metres. Smaller buckets
	// scan fewer drivers in dense areas and more empty buckets in sparse
	// ones; the default suits city densities from 10 to 10,000 drivers/km².
	CellSizeM float64
	// Now is the clock; tests and accelerated simulations inject their own.
	Now func() time.Time
}

// DefaultConfig returns the defaults: 30 s TTL, 120 m buckets, wall clock.
func DefaultConfig() Config {
	return Config{TTL: 30 * time.Second, CellSizeM: 120, Now: time.Now}
}

// Validate checks c.
func (c Config) Validate() error {
	switch {
	case c.TTL <= 0:
		return fmt.Errorf("%w: TTL %v must be positive", ErrInvalidConfig, c.TTL)
	case !(c.CellSizeM >= 10 && c.CellSizeM <= 100_000):
		return fmt.Errorf("%w: CellSizeM %v must be in [10, 100000]", ErrInvalidConfig, c.CellSizeM)
	case c.Now == nil:
		return fmt.Errorf("%w: Now is nil", ErrInvalidConfig)
	}
	return nil
}

// MaxDrivers is the most drivers one Index holds (one shard, not a city).
const MaxDrivers = 1<<24 - 1

// entry is a driver in a bucket. Buckets hold positions inline so that a
// scan touches one contiguous array, not one record per driver.
type entry struct {
	lat, lng geo.E7
	ref      uint32 // slot<<8 | status
	sec      uint32 // unix seconds of the observation; exact time is in the record
}

func (e entry) slot() uint32   { return e.ref >> 8 }
func (e entry) status() Status { return Status(e.ref) }

type cell struct {
	key     uint64
	entries []entry
}

// record is the per-driver state that a scan does not need.
type record struct {
	id  DriverID
	seq uint64
	at  int64 // unix nanoseconds of the observation
	c   *cell
	pos int32 // index into c.entries
	// h3 caches the position's H3 cell at geo.IndexRes for CellCounts;
	// zero until first needed, reset when the driver moves.
	h3 geo.Cell
}

// Stats counts what an Index did. The owner reads it with Index.Stats.
type Stats struct {
	Inserted, Updated, Stale, TooOld, Removed, Expired uint64
}

// Index is the set of live drivers of one shard, with k-nearest search.
//
// Concurrency: an Index is owned by one goroutine; no method may be called
// concurrently with another. Results never alias internal memory.
type Index struct {
	cfg  Config
	ttl  int64
	grid grid

	ids   idTable  // driver -> slot
	slab  []record // dense: removal moves the last record into the hole
	cells map[uint64]*cell
	stats Stats

	q          query // scratch for Nearest, reused so queries do not allocate
	searchMode searchMode
	cellsHint  [16]int // CellCounts' last answer size per resolution
}

// NewIndex returns an empty Index.
func NewIndex(cfg Config) (*Index, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Index{
		cfg:   cfg,
		ttl:   int64(cfg.TTL),
		grid:  newGrid(cfg.CellSizeM),
		ids:   newIDTable(),
		cells: make(map[uint64]*cell),
	}, nil
}

// Len returns the number of drivers held, including any past TTL that
// Expire has not dropped yet.
func (x *Index) Len() int { return len(x.slab) }

// Stats returns the counters.
func (x *Index) Stats() Stats { return x.stats }

// TTL returns the configured TTL.
func (x *Index) TTL() time.Duration { return x.cfg.TTL }

func (x *Index) expired(at, now int64) bool { return now-at >= x.ttl }

// Upsert records that driver id was at p with status st, as its seq-th
// position, observed at time at (the gateway's receive stamp; a zero at
// means now, and a time in the future is taken as now).
//
// Positions whose seq is not newer than the held one are dropped (Stale), so
// replays and duplicates are harmless; a held driver already past TTL
// accepts any seq, so an app that restarted its counter comes back. A
// position already past TTL when it arrives is dropped (TooOld).
func (x *Index) Upsert(id DriverID, p geo.LatLng, st Status, seq uint64, at time.Time) (Outcome, error) {
	if err := id.Validate(); err != nil {
		return 0, err
	}
	if err := p.Validate(); err != nil {
		return 0, err
	}
	if !st.Valid() {
		return 0, fmt.Errorf("%w: %d", ErrInvalidStatus, uint8(st))
	}
	now := x.cfg.Now().UnixNano()
	atN := now
	if !at.IsZero() {
		atN = min(at.UnixNano(), now)
	}
	if x.expired(atN, now) {
		x.stats.TooOld++
		return TooOld, nil
	}
	lat, lng := p.ToE7()
	if lng == 180e7 {
		lng = -180e7 // one meridian, one representation
	}
	e := entry{lat: lat, lng: lng, sec: uint32(atN / 1e9)}
	key := x.grid.key(geo.FromE7(lat, lng))

	slot, ok := x.ids.get(id, x.slab)
	if !ok {
		if len(x.slab) >= MaxDrivers {
			return 0, fmt.Errorf("%w: %d drivers", ErrFull, len(x.slab))
		}
		slot = uint32(len(x.slab))
		x.slab = append(x.slab, record{id: id, seq: seq, at: atN})
		x.ids.insert(id, slot, x.slab)
		e.ref = slot<<8 | uint32(st)
		x.place(slot, key, e)
		x.stats.Inserted++
		return Inserted, nil
	}
	r := &x.slab[slot]
	if seq <= r.seq && !x.expired(r.at, now) {
		x.stats.Stale++
		return Stale, nil
	}
	r.seq, r.at = seq, atN
	e.ref = slot<<8 | uint32(st)
	if old := r.c.entries[r.pos]; old.lat != e.lat || old.lng != e.lng {
		r.h3 = 0
	}
	if r.c.key == key {
		r.c.entries[r.pos] = e
	} else {
		x.unplace(r)
		x.place(slot, key, e)
	}
	x.stats.Updated++
	return Updated, nil
}

// place appends e to the bucket key and points the record at it.
func (x *Index) place(slot uint32, key uint64, e entry) {
	c := x.cells[key]
	if c == nil {
		c = &cell{key: key}
		x.cells[key] = c
	}
	r := &x.slab[slot]
	r.c, r.pos = c, int32(len(c.entries))
	c.entries = append(c.entries, e)
}

// unplace removes r's entry from its bucket by moving the bucket's last
// entry into the hole. Empty buckets stay until Expire sweeps them, so a
// driver hovering on a bucket edge does not churn the map.
func (x *Index) unplace(r *record) {
	c := r.c
	last := len(c.entries) - 1
	if int(r.pos) != last {
		moved := c.entries[last]
		c.entries[r.pos] = moved
		x.slab[moved.slot()].pos = r.pos
	}
	c.entries = c.entries[:last]
	r.c = nil
}

// Remove drops driver id (it went offline or moved to another shard) unless
// the held position has a newer seq than the removal. A zero seq removes
// unconditionally.
func (x *Index) Remove(id DriverID, seq uint64) Outcome {
	slot, ok := x.ids.get(id, x.slab)
	if !ok {
		return NotFound
	}
	r := &x.slab[slot]
	if seq != 0 && seq <= r.seq && !x.expired(r.at, x.cfg.Now().UnixNano()) {
		x.stats.Stale++
		return Stale
	}
	x.drop(slot)
	x.stats.Removed++
	return Removed
}

// drop deletes the driver in slot, keeping the slab dense.
func (x *Index) drop(slot uint32) {
	r := &x.slab[slot]
	x.unplace(r)
	x.ids.remove(r.id, x.slab)
	last := uint32(len(x.slab) - 1)
	if slot != last {
		moved := x.slab[last]
		x.slab[slot] = moved
		x.ids.setSlot(moved.id, slot, x.slab)
		e := &moved.c.entries[moved.pos]
		e.ref = slot<<8 | uint32(e.status())
	}
	x.slab[last] = record{}
	x.slab = x.slab[:last]
}

// Expire drops every driver past TTL and frees empty buckets. It returns how
// many drivers it dropped. Queries already skip expired drivers, so Expire
// only bounds memory; the owner calls it every second or so. It is O(n).
func (x *Index) Expire() int {
	now := x.cfg.Now().UnixNano()
	n := 0
	for i := len(x.slab) - 1; i >= 0; i-- {
		if x.expired(x.slab[i].at, now) {
			x.drop(uint32(i))
			n++
		}
	}
	for k, c := range x.cells {
		if len(c.entries) == 0 {
			delete(x.cells, k)
		}
	}
	x.stats.Expired += uint64(n)
	return n
}

func (x *Index) driver(slot uint32) Driver {
	r := &x.slab[slot]
	return x.driverAt(r, r.c.entries[r.pos])
}

func (x *Index) driverAt(r *record, e entry) Driver {
	return Driver{ID: r.id, Pos: geo.FromE7(e.lat, e.lng), Status: e.status(), Seq: r.seq, At: time.Unix(0, r.at)}
}

// Get returns driver id if it is held and not past TTL.
func (x *Index) Get(id DriverID) (Driver, bool) {
	slot, ok := x.ids.get(id, x.slab)
	if !ok || x.expired(x.slab[slot].at, x.cfg.Now().UnixNano()) {
		return Driver{}, false
	}
	return x.driver(slot), true
}

// All yields every driver not past TTL, in no particular order. The index
// must not be changed during the iteration.
func (x *Index) All() iter.Seq[Driver] {
	return func(yield func(Driver) bool) {
		now := x.cfg.Now().UnixNano()
		for i := range x.slab {
			if !x.expired(x.slab[i].at, now) && !yield(x.driver(uint32(i))) {
				return
			}
		}
	}
}

// CellCounts returns how many live drivers matching f are in each H3 cell at
// res. Cells at res up to geo.IndexRes cost one cgo call per position the
// first time and pure arithmetic after, until the driver moves.
func (x *Index) CellCounts(res int, f Filter) (map[geo.Cell]int, error) {
	if res < 0 || res > 15 {
		return nil, fmt.Errorf("%w: resolution %d", geo.ErrInvalidResolution, res)
	}
	now := x.cfg.Now().UnixNano()
	// Sized like the last answer at this resolution: growing a map of
	// thousands of cells costs more than the counting.
	out := make(map[geo.Cell]int, x.cellsHint[res])
	defer func() { x.cellsHint[res] = len(out) }()
	for i := range x.slab {
		r := &x.slab[i]
		e := r.c.entries[r.pos]
		if x.expired(r.at, now) || !f.Statuses.Has(e.status()) {
			continue
		}
		if res > geo.IndexRes {
			c, err := geo.CellAt(geo.FromE7(e.lat, e.lng), res)
			if err != nil {
				return nil, err
			}
			out[c]++
			continue
		}
		// The index-resolution cell is computed once per position (a cgo
		// call); coarser ones are its ancestors, found by bit arithmetic.
		if r.h3 == 0 {
			c, err := geo.CellAt(geo.FromE7(e.lat, e.lng), geo.IndexRes)
			if err != nil {
				return nil, err
			}
			r.h3 = c
		}
		out[geo.ParentOf(r.h3, res)]++
	}
	return out, nil
}

// validateQuery checks the arguments of Nearest.
func validateQuery(center geo.LatLng, k int, maxRadiusM float64) error {
	if err := center.Validate(); err != nil {
		return fmt.Errorf("%w: center: %w", ErrInvalidQuery, err)
	}
	if k < 1 || k > MaxK {
		return fmt.Errorf("%w: k %d is outside [1, %d]", ErrInvalidQuery, k, MaxK)
	}
	if !(maxRadiusM > 0) || math.IsInf(maxRadiusM, 0) {
		return fmt.Errorf("%w: radius %v m must be a positive finite number", ErrInvalidQuery, maxRadiusM)
	}
	return nil
}
