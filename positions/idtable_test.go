package positions

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestIDTableMatchesMap drives the table and a Go map with the same random
// inserts, moves and removals, small enough to force long probe runs and
// wrap-around.
func TestIDTableMatchesMap(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		var keys []record // slot -> id, like the slab
		tab := newIDTable()
		ref := map[DriverID]uint32{}
		for op := range 20000 {
			id := DriverID("k" + strconv.Itoa(rng.IntN(300)))
			_, inRef := ref[id]
			switch {
			case !inRef:
				slot := uint32(len(keys))
				keys = append(keys, record{id: id})
				tab.insert(id, slot, keys)
				ref[id] = slot
			case rng.IntN(2) == 0:
				// Remove like the index: move the last slot into the hole.
				slot := ref[id]
				tab.remove(id, keys)
				delete(ref, id)
				last := uint32(len(keys) - 1)
				if slot != last {
					moved := keys[last]
					keys[slot] = moved
					tab.setSlot(moved.id, slot, keys)
					ref[moved.id] = slot
				}
				keys = keys[:last]
			}
			if tab.n != len(ref) {
				t.Fatalf("seed %d op %d: n %d, want %d", seed, op, tab.n, len(ref))
			}
		}
		for i := range 300 {
			id := DriverID("k" + strconv.Itoa(i))
			got, ok := tab.get(id, keys)
			want, wantOK := ref[id]
			if ok != wantOK || got != want {
				t.Fatalf("seed %d: get(%s) = %d,%v want %d,%v", seed, id, got, ok, want, wantOK)
			}
		}
	}
}
