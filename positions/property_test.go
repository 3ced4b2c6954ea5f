package positions_test

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// testSeed returns SEED from the environment or a fresh one, and logs it so
// a failure can be replayed with SEED=<n> go test -run <name>.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv("SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", s, err)
		}
		t.Logf("SEED=%d (from env)", v)
		return v
	}
	v := uint64(time.Now().UnixNano())
	t.Logf("SEED=%d", v)
	return v
}

// refDriver is the brute-force model's state for one driver.
type refDriver struct {
	pos    geo.LatLng
	status positions.Status
	seq    uint64
	at     time.Time
}

// reference is the obviously correct model the Index is checked against.
type reference struct {
	ttl     time.Duration
	drivers map[positions.DriverID]refDriver
}

func (r *reference) live(d refDriver, now time.Time) bool { return now.Sub(d.at) < r.ttl }

func (r *reference) upsert(id positions.DriverID, p geo.LatLng, st positions.Status, seq uint64, at, now time.Time) {
	if at.After(now) {
		at = now
	}
	if now.Sub(at) >= r.ttl {
		return
	}
	if old, ok := r.drivers[id]; ok && seq <= old.seq && r.live(old, now) {
		return
	}
	if p.Lng == 180 {
		p.Lng = -180
	}
	r.drivers[id] = refDriver{pos: p, status: st, seq: seq, at: at}
}

func (r *reference) remove(id positions.DriverID, seq uint64, now time.Time) {
	if old, ok := r.drivers[id]; ok && (seq == 0 || seq > old.seq || !r.live(old, now)) {
		delete(r.drivers, id)
	}
}

func (r *reference) nearest(c geo.LatLng, k int, radius float64, f positions.Filter, now time.Time) []positions.Candidate {
	var out []positions.Candidate
	for id, d := range r.drivers {
		if !r.live(d, now) || !f.Statuses.Has(d.status) {
			continue
		}
		dist := geo.DistanceM(c, d.pos)
		if dist > radius {
			continue
		}
		out = append(out, positions.Candidate{
			Driver:    positions.Driver{ID: id, Pos: d.pos, Status: d.status, Seq: d.seq, At: d.at},
			DistanceM: dist, Age: now.Sub(d.at),
		})
	}
	slices.SortFunc(out, func(a, b positions.Candidate) int {
		return cmp.Or(cmp.Compare(a.DistanceM, b.DistanceM), cmp.Compare(a.ID, b.ID))
	})
	return out[:min(k, len(out))]
}

// region is where a property run puts its drivers: the hard places of the
// sphere as well as a city.
type region struct {
	name                           string
	minLat, maxLat, minLng, maxLng float64
}

var regions = []region{
	{"city", 37.70, 37.81, -122.52, -122.36},
	{"antimeridian", -17.0, -16.9, 179.95, 180.05}, // lng wraps past 180
	{"north pole", 89.98, 90, -180, 180},
	{"south pole", -90, -89.99, -180, 180},
	{"equator", -0.05, 0.05, -0.05, 0.05},
	{"high latitude", 69.6, 69.7, 18.9, 19.1},
}

// randPos draws a point of the region on the 1e-7 degree grid the index
// stores, so the model and the index hold identical coordinates.
func (rg region) randPos(rng *rand.Rand) geo.LatLng {
	lat := rg.minLat + rng.Float64()*(rg.maxLat-rg.minLat)
	lng := rg.minLng + rng.Float64()*(rg.maxLng-rg.minLng)
	if lng > 180 {
		lng -= 360
	}
	if rng.IntN(50) == 0 { // exact duplicates of a spot make distance ties
		lat, lng = rg.minLat, rg.minLng
	}
	return geo.FromE7(geo.E7(math.Round(lat*1e7)), geo.E7(math.Round(lng*1e7)))
}

func TestNearestMatchesBruteForce(t *testing.T) {
	seed := testSeed(t)
	rounds := 40
	if testing.Short() {
		rounds = 8
	}
	modes := []struct{ name string }{{"auto"}, {"ring"}, {"scan"}}
	for round := range rounds {
		rg := regions[round%len(regions)]
		m := modes[round/len(regions)%len(modes)]
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		t.Run(fmt.Sprintf("%d-%s-%s", round, rg.name, m.name), func(t *testing.T) {
			runProperty(t, rng, rg, m.name)
		})
	}
}

func runProperty(t *testing.T, rng *rand.Rand, rg region, mode string) {
	const ttl = 20 * time.Second
	cfg := positions.DefaultConfig()
	cfg.TTL = ttl
	cfg.CellSizeM = []float64{25, 120, 500}[rng.IntN(3)]
	radii := []float64{30, 300, 2000, 20000, 3e6}
	if mode == "ring" {
		// The ring search alone walks every bucket within the radius, so
		// keep it to city-sized radii and buckets.
		cfg.CellSizeM = []float64{120, 500}[rng.IntN(2)]
		radii = []float64{30, 300, 2000}
	}
	clk := &fakeClock{t: time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)}
	cfg.Now = clk.Now
	x, err := positions.NewIndex(cfg)
	if err != nil {
		t.Fatal(err)
	}
	switch mode {
	case "ring":
		positions.SetSearchMode(x, positions.RingOnly)
	case "scan":
		positions.SetSearchMode(x, positions.ScanOnly)
	}
	ref := &reference{ttl: ttl, drivers: map[positions.DriverID]refDriver{}}
	nDrivers := 1 + rng.IntN(400)
	seqs := make([]uint64, nDrivers)
	statuses := []positions.Status{positions.StatusAvailable, positions.StatusEnRoute, positions.StatusOnTrip}

	for op := range 3000 {
		id := positions.DriverID("d" + strconv.Itoa(rng.IntN(nDrivers)))
		i, _ := strconv.Atoi(string(id[1:]))
		switch r := rng.IntN(100); {
		case r < 60: // upsert, sometimes stale or late
			seq := seqs[i] + 1
			if rng.IntN(10) == 0 && seq > 2 {
				seq -= uint64(1 + rng.IntN(2)) // duplicate or reordered
			} else {
				seqs[i] = seq
			}
			at := clk.Now().Add(-time.Duration(rng.IntN(25)) * time.Second)
			p := rg.randPos(rng)
			st := statuses[rng.IntN(len(statuses))]
			if _, err := x.Upsert(id, p, st, seq, at); err != nil {
				t.Fatalf("op %d: Upsert: %v", op, err)
			}
			ref.upsert(id, p, st, seq, at, clk.Now())
		case r < 65:
			seq := uint64(0)
			if rng.IntN(2) == 0 {
				seq = seqs[i] + uint64(rng.IntN(3)) - 1
			}
			x.Remove(id, seq)
			ref.remove(id, seq, clk.Now())
		case r < 72:
			clk.Advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
		case r < 74:
			x.Expire()
		default:
			c := rg.randPos(rng)
			k := 1 + rng.IntN(15)
			radius := radii[rng.IntN(len(radii))]
			var f positions.Filter
			if rng.IntN(2) == 0 {
				f = positions.Available
			}
			got, err := x.Nearest(c, k, radius, f)
			if err != nil {
				t.Fatalf("op %d: Nearest: %v", op, err)
			}
			want := ref.nearest(c, k, radius, f, clk.Now())
			if !slices.EqualFunc(got, want, sameCandidate) {
				t.Fatalf("op %d: Nearest(%v, k=%d, r=%v, %+v)\n got  %s\n want %s", op, c, k, radius, f, fmtCands(got), fmtCands(want))
			}
		}
	}
	x.Expire()
	live := 0
	for _, d := range ref.drivers {
		if ref.live(d, clk.Now()) {
			live++
		}
	}
	if x.Len() != live {
		t.Fatalf("after Expire: Len %d, model has %d live drivers", x.Len(), live)
	}
}

func sameCandidate(a, b positions.Candidate) bool {
	return a.ID == b.ID && a.Pos == b.Pos && a.Status == b.Status && a.Seq == b.Seq &&
		a.At.Equal(b.At) && a.DistanceM == b.DistanceM && a.Age == b.Age
}

func fmtCands(cs []positions.Candidate) string {
	s := fmt.Sprintf("(%d)", len(cs))
	for _, c := range cs {
		s += fmt.Sprintf(" %s@%.3f", c.ID, c.DistanceM)
	}
	return s
}
