package positions

import (
	"math"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

// searchMode lets tests pin one of the two search paths.
type searchMode uint8

const (
	searchAuto searchMode = iota
	ringOnly
	scanOnly
)

// MaxK bounds the k of one Nearest call.
const MaxK = 1000

// Slack terms that keep every pruning bound conservative under floating-point
// rounding, so that Nearest returns exactly what a brute-force scan with
// geo.DistanceM returns.
const (
	relSlack   = 1e-9  // relative, on haversine bounds
	absSlackH  = 1e-24 // absolute, on haversine bounds (about 10 µm)
	slackRad   = 1e-12 // on latitude gaps, radians (about 6 µm)
	slackDeg   = 1e-9  // on longitude windows, degrees
	slackCover = 1e-6  // on the covered distance, metres
)

type hit struct {
	h float64 // haversine to the centre (a lower bound of it while scanning)
	e entry
}

// bandRow is one grid row the search has reached, with the columns of it
// already visited (lo..hi, unwrapped; empty while lo > hi).
type bandRow struct {
	r       int32
	n       int32
	lo, hi  int64
	full    bool
	havDPhi float64 // lower bound of hav(latitude gap) from the centre to the row
	cosMin  float64 // smallest cos(latitude) in the row, rounded down
	cosMax  float64 // largest cos(latitude) in the row, rounded up
}

// query is Nearest's scratch state, kept in the Index so a query does not
// allocate.
//
// A query runs in two phases. The scan computes, for every driver it
// reaches, a cheap lower and upper bound of its haversine to the centre; it
// keeps the k smallest upper bounds, whose largest bounds the answer, and
// collects every driver whose lower bound is within it. Then the few
// collected drivers get the exact haversine and the exact top k is chosen.
// The bounds differ by about 1e-5 relative, so the exact trigonometry runs
// for little more than k drivers however many the scan touches.
type query struct {
	center  geo.LatLng
	origin  geo.Origin
	phiQ    float64
	cosQ    float64
	k       int
	radius  float64
	radiusH float64 // radius in haversine space, rounded up
	radLoH  float64 // radius in haversine space, rounded down
	boundH  float64 // a driver whose lower bound exceeds this is not in the answer
	filter  Filter
	now     int64
	// Whole-second bounds on now-sec that decide liveness without reading
	// the record: at most liveDiff is surely live, at least deadDiff surely
	// expired; in between the record's exact time decides.
	nowSec, liveDiff, deadDiff int64

	ubs   []float64 // the k smallest upper bounds so far, ascending
	cands []hit     // drivers whose lower bound was within boundH when seen
	hits  []hit     // the exact answer, by (haversine, ID)
	rows  []bandRow

	work   int // rows extended plus buckets probed
	budget int // work allowed before the search falls back to a full scan
}

// bound returns the distance in metres a driver must beat to be in the
// answer.
func (q *query) bound() float64 {
	if len(q.ubs) == q.k {
		return min(q.radius, geo.DistanceFromHaversine(q.ubs[q.k-1]))
	}
	return q.radius
}

// offerUpper records the upper bound of a live driver surely inside the
// radius.
func (q *query) offerUpper(ub float64) {
	n := len(q.ubs)
	if n == q.k {
		if ub >= q.ubs[n-1] {
			return
		}
		n--
	} else {
		q.ubs = append(q.ubs, 0)
	}
	i := n
	for i > 0 && q.ubs[i-1] > ub {
		q.ubs[i] = q.ubs[i-1]
		i--
	}
	q.ubs[i] = ub
	if len(q.ubs) == q.k {
		q.boundH = min(q.radiusH, q.ubs[q.k-1])
	}
}

// less orders hits by haversine, then driver ID. IDs are read only on exact
// ties, which keeps records (and their cache misses) out of the selection.
func (x *Index) less(a, b hit) bool {
	if a.h != b.h {
		return a.h < b.h
	}
	return x.slab[a.e.slot()].id < x.slab[b.e.slot()].id
}

// push offers a driver at exact haversine h; hits stay sorted and at most k.
func (x *Index) push(h hit) {
	q := &x.q
	n := len(q.hits)
	if n == q.k {
		if !x.less(h, q.hits[n-1]) {
			return
		}
		n--
	} else {
		q.hits = append(q.hits, hit{})
	}
	i := n
	for i > 0 && x.less(h, q.hits[i-1]) {
		q.hits[i] = q.hits[i-1]
		i--
	}
	q.hits[i] = h
}

// resolve computes exact haversines for the collected drivers that can
// still be in the answer and selects the answer.
func (x *Index) resolve() {
	q := &x.q
	for _, c := range q.cands {
		if c.h > q.boundH {
			continue
		}
		h := q.origin.Haversine(geo.FromE7(c.e.lat, c.e.lng))
		if h > q.radiusH {
			continue
		}
		if h > q.radLoH && geo.DistanceFromHaversine(h) > q.radius {
			continue // on the rim: decide in metres, as a brute-force scan does
		}
		x.push(hit{h: h, e: c.e})
	}
}

// Nearest returns up to k drivers within maxRadiusM metres of center that
// match f and are not past TTL, nearest first (ties broken by driver ID).
// Distances are great-circle (geo.DistanceM).
func (x *Index) Nearest(center geo.LatLng, k int, maxRadiusM float64, f Filter) ([]Candidate, error) {
	return x.AppendNearest(nil, center, k, maxRadiusM, f)
}

// AppendNearest is Nearest appending to dst, for callers that reuse a
// buffer.
func (x *Index) AppendNearest(dst []Candidate, center geo.LatLng, k int, maxRadiusM float64, f Filter) ([]Candidate, error) {
	if err := validateQuery(center, k, maxRadiusM); err != nil {
		return dst, err
	}
	q := &x.q
	*q = query{
		center: center, origin: geo.NewOrigin(center),
		phiQ: center.Lat * degToRad, cosQ: math.Cos(center.Lat * degToRad),
		k: k, radius: maxRadiusM, filter: f, now: x.cfg.Now().UnixNano(),
		ubs: q.ubs[:0], cands: q.cands[:0], hits: q.hits[:0], rows: q.rows[:0],
	}
	q.nowSec = q.now / 1e9
	q.liveDiff = int64(x.cfg.TTL/time.Second) - 1
	q.deadDiff = int64((x.cfg.TTL+time.Second-1)/time.Second) + 1
	q.radiusH = havOfDistance(maxRadiusM)*(1+relSlack) + absSlackH
	q.radLoH = havOfDistance(maxRadiusM) * (1 - relSlack)
	q.boundH = q.radiusH
	if len(x.slab) > 0 {
		// The ring search probes buckets by key, empty ones too. When the
		// data is sparse relative to the radius (a wide query, a quiet
		// shard) walking every held bucket is cheaper, so the ring search
		// gets a budget of that size and hands over when it runs out.
		q.budget = 2*len(x.cells) + 64
		switch x.searchMode {
		case ringOnly:
			q.budget = math.MaxInt
		case scanOnly:
			q.budget = -1
		}
		if !x.search() {
			q.ubs, q.cands = q.ubs[:0], q.cands[:0]
			q.boundH = q.radiusH
			x.scanAll()
		}
		x.resolve()
	}
	// Hits are in haversine order; distances come from it by a monotone
	// function, but one that can round two haversines to one distance, so
	// re-sort by (distance, ID) as a brute-force scan would.
	start := len(dst)
	for _, h := range q.hits {
		r := &x.slab[h.e.slot()]
		dst = append(dst, Candidate{
			Driver:    x.driverAt(r, h.e),
			DistanceM: geo.DistanceFromHaversine(h.h),
			Age:       time.Duration(q.now - r.at),
		})
	}
	res := dst[start:]
	for i := 1; i < len(res); i++ {
		for j := i; j > 0 && res[j].DistanceM == res[j-1].DistanceM && res[j].ID < res[j-1].ID; j-- {
			res[j], res[j-1] = res[j-1], res[j]
		}
	}
	return dst, nil
}

// search visits grid rows outward from the centre's row. After step s the
// visited band of rows and, in each, the window of columns within the
// spherical cap of radius D (the distance to the band's nearer edge) cover
// every point within D of the centre; the search stops once D reaches the
// k-th best distance or the radius. It returns false, with partial hits, if
// it ran out of budget.
func (x *Index) search() bool {
	q := &x.q
	g := x.grid
	rowQ := g.row(q.center.Lat)
	for s := int32(0); ; s++ {
		if s == 0 {
			x.addRow(rowQ)
		} else {
			if rowQ+s < g.nrows {
				x.addRow(rowQ + s)
			}
			if rowQ-s >= 0 {
				x.addRow(rowQ - s)
			}
		}
		cover := math.Inf(1)
		if rowQ+s < g.nrows-1 {
			_, hi := g.rowLat(rowQ + s)
			cover = (hi - q.phiQ) * geo.EarthRadiusM
		}
		if rowQ-s > 0 {
			lo, _ := g.rowLat(rowQ - s)
			cover = min(cover, (q.phiQ-lo)*geo.EarthRadiusM)
		}
		cover -= slackCover
		dLam := 180.0
		if !math.IsInf(cover, 1) {
			dLam = capHalfWidth(max(cover, 0)/geo.EarthRadiusM, q.phiQ) + slackDeg
		}
		for i := range q.rows {
			x.extendRow(&q.rows[i], dLam)
		}
		q.work += len(q.rows)
		if q.work > q.budget {
			return false // some visits may have been cut short
		}
		if cover >= q.bound() {
			return true
		}
	}
}

func (x *Index) addRow(r int32) {
	x.q.rows = append(x.q.rows, x.bandRow(r))
}

// bandRow returns row r with nothing visited and its bounds towards the
// centre.
func (x *Index) bandRow(r int32) bandRow {
	q := &x.q
	lo, hi := x.grid.rowLat(r)
	gap := 0.0
	if q.phiQ < lo {
		gap = lo - q.phiQ
	} else if q.phiQ > hi {
		gap = q.phiQ - hi
	}
	cosMax := 1.0
	if lo > 0 || hi < 0 { // the row does not span the equator
		cosMax = max(math.Cos(lo), math.Cos(hi))
	}
	return bandRow{
		r: r, n: x.grid.ncols(r), lo: 1, hi: 0,
		havDPhi: hav(max(0, gap-slackRad)),
		cosMin:  max(0, min(math.Cos(lo), math.Cos(hi))-relSlack),
		cosMax:  cosMax + relSlack,
	}
}

// extendRow visits the columns of br within dLam degrees of the centre that
// it has not visited yet.
func (x *Index) extendRow(br *bandRow, dLam float64) {
	if br.full {
		return
	}
	q := &x.q
	n := int64(br.n)
	lo, hi := int64(0), n-1
	full := dLam >= 180
	if !full {
		lo, hi = colOf(q.center.Lng-dLam, br.n), colOf(q.center.Lng+dLam, br.n)
		full = hi-lo+1 >= n
	}
	// A row farther than the current bound never needs a visit: the bound
	// only shrinks.
	skip := br.havDPhi > q.boundH
	switch {
	case full && br.lo > br.hi:
		if !skip {
			x.visit(br, 0, n-1)
		}
		br.full = true
	case full:
		if !skip {
			x.visit(br, br.hi+1, br.lo-1+n)
		}
		br.full = true
	case br.lo > br.hi:
		if !skip {
			x.visit(br, lo, hi)
		}
		br.lo, br.hi = lo, hi
	default:
		if !skip {
			x.visit(br, lo, br.lo-1)
			x.visit(br, br.hi+1, hi)
		}
		br.lo, br.hi = min(lo, br.lo), max(hi, br.hi)
	}
}

// visit scans the buckets of row br in columns c0..c1 (unwrapped).
func (x *Index) visit(br *bandRow, c0, c1 int64) {
	q := &x.q
	colDeg := 360 / float64(br.n)
	q.work += int(max(0, c1-c0+1))
	for c := c0; c <= c1 && q.work <= q.budget; c++ {
		wc := wrapCol(c, br.n)
		cl := x.cells[cellKey(br.r, wc)]
		if cl == nil || len(cl.entries) == 0 {
			continue
		}
		// Lower bound of the distance from the centre to any point of the
		// bucket, in haversine space.
		west := -180 + float64(wc)*colDeg
		gap := lngGap(q.center.Lng, west, west+colDeg)
		if br.havDPhi+q.cosQ*br.cosMin*hav(gap*degToRad) > q.boundH {
			continue
		}
		x.scan(br, cl)
	}
}

// scanAll visits every held bucket once, nearest-first pruning aside.
func (x *Index) scanAll() {
	q := &x.q
	for key, cl := range x.cells {
		if len(cl.entries) == 0 {
			continue
		}
		br := x.bandRow(int32(key >> 32))
		colDeg := 360 / float64(br.n)
		west := -180 + float64(uint32(key))*colDeg
		g := lngGap(q.center.Lng, west, west+colDeg)
		if br.havDPhi+q.cosQ*br.cosMin*hav(g*degToRad) > q.boundH {
			continue
		}
		x.scan(&br, cl)
	}
}

// lngGap returns the angular distance in degrees from lng to the interval
// [west, east], going either way round the globe, minus a rounding slack.
func lngGap(lng, west, east float64) float64 {
	if lng >= west && lng <= east {
		return 0
	}
	d := min(wrapDeg(west-lng), wrapDeg(lng-east))
	return max(0, d-slackDeg)
}

// wrapDeg returns |a| folded onto [0, 180].
func wrapDeg(a float64) float64 {
	a = math.Mod(math.Abs(a), 360)
	if a > 180 {
		a = 360 - a
	}
	return a
}

// scan bounds every matching driver of the bucket (see query) without
// trigonometry: on [0, π/2], y - y³/6 <= sin y <= y.
func (x *Index) scan(br *bandRow, cl *cell) {
	q := &x.q
	loLam := q.cosQ * br.cosMin
	hiLam := q.cosQ * br.cosMax
	const e7ToRad = degToRad / 1e7
	lngQ := q.center.Lng * 1e7
	for _, e := range cl.entries {
		if !q.filter.Statuses.Has(e.status()) {
			continue
		}
		y1 := math.Abs(float64(e.lat)*e7ToRad-q.phiQ) / 2
		dLam := math.Abs(float64(e.lng) - lngQ) // in 1e-7 degrees
		if dLam > 180e7 {
			dLam = 360e7 - dLam
		}
		y2 := dLam * e7ToRad / 2
		lb := sinLowerSq(y1) + loLam*sinLowerSq(y2)
		if lb > q.boundH {
			continue
		}
		if diff := q.nowSec - int64(e.sec); diff >= q.deadDiff ||
			(diff > q.liveDiff && x.expired(x.slab[e.slot()].at, q.now)) {
			continue
		}
		q.cands = append(q.cands, hit{h: lb, e: e})
		if ub := (y1*y1+hiLam*y2*y2)*(1+relSlack) + absSlackH; ub <= q.radLoH {
			q.offerUpper(ub)
		}
	}
}
