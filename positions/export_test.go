package positions

// Test hooks: pin Nearest to the ring search or to the full bucket scan so
// the property test checks each path on its own.
const (
	RingOnly = ringOnly
	ScanOnly = scanOnly
)

func SetSearchMode(x *Index, m searchMode) { x.searchMode = m }
