package positions

import "hash/maphash"

// idTable maps driver IDs to slab slots. It is an open-addressing hash table
// with linear probing that stores only a uint32 per bucket (the slot and
// eight bits of the hash) and compares keys against the slab's records; at
// 1M drivers it costs about 8 bytes per driver where a Go map of string
// keys costs about 40. Deletion shifts later entries back instead of leaving
// tombstones, so lookups never slow down with churn.
type idTable struct {
	seed    maphash.Seed
	buckets []uint32 // 0 = empty, else tag<<24 | (slot+1)
	n       int
}

const (
	idSlotBits = 24
	idSlotMask = 1<<idSlotBits - 1
)

func newIDTable() idTable {
	return idTable{seed: maphash.MakeSeed(), buckets: make([]uint32, 16)}
}

func (t *idTable) hash(id DriverID) uint64 { return maphash.String(t.seed, string(id)) }

func tagOf(h uint64) uint32 { return uint32(h>>56) << idSlotBits }

// find returns the bucket index holding id, or -1. Keys are compared
// against the records of slab.
func (t *idTable) find(id DriverID, h uint64, slab []record) int {
	mask := uint64(len(t.buckets) - 1)
	tag := tagOf(h)
	for i := h & mask; ; i = (i + 1) & mask {
		b := t.buckets[i]
		if b == 0 {
			return -1
		}
		if b&^idSlotMask == tag && slab[b&idSlotMask-1].id == id {
			return int(i)
		}
	}
}

// get returns id's slot.
func (t *idTable) get(id DriverID, slab []record) (uint32, bool) {
	i := t.find(id, t.hash(id), slab)
	if i < 0 {
		return 0, false
	}
	return t.buckets[i]&idSlotMask - 1, true
}

// insert adds id, which must be absent, at slot.
func (t *idTable) insert(id DriverID, slot uint32, slab []record) {
	if (t.n+1)*4 > len(t.buckets)*3 {
		t.grow(slab)
	}
	t.place(t.hash(id), slot)
	t.n++
}

func (t *idTable) place(h uint64, slot uint32) {
	mask := uint64(len(t.buckets) - 1)
	i := h & mask
	for t.buckets[i] != 0 {
		i = (i + 1) & mask
	}
	t.buckets[i] = tagOf(h) | (slot + 1)
}

func (t *idTable) grow(slab []record) {
	old := t.buckets
	t.buckets = make([]uint32, 2*len(old))
	for _, b := range old {
		if b != 0 {
			slot := b&idSlotMask - 1
			t.place(t.hash(slab[slot].id), slot)
		}
	}
}

// setSlot points the present id at a new slot.
func (t *idTable) setSlot(id DriverID, slot uint32, slab []record) {
	h := t.hash(id)
	i := t.find(id, h, slab)
	t.buckets[i] = tagOf(h) | (slot + 1)
}

// remove deletes the present id, then shifts back every later entry of the
// probe run that may now sit nearer its home bucket.
func (t *idTable) remove(id DriverID, slab []record) {
	i := t.find(id, t.hash(id), slab)
	if i < 0 {
		return
	}
	mask := len(t.buckets) - 1
	t.n--
	for {
		t.buckets[i] = 0
		j := i
		for {
			j = (j + 1) & mask
			b := t.buckets[j]
			if b == 0 {
				return
			}
			home := int(t.hash(slab[b&idSlotMask-1].id)) & mask
			// Move b back to i unless its home lies cyclically in (i, j].
			if (i <= j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
				t.buckets[i] = b
				i = j
				break
			}
		}
	}
}
