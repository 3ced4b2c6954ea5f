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
	d    float64
	id   DriverID
	slot uint32
}

// bandRow is one grid row the search has reached, with the columns of it
// already visited (lo..hi, unwrapped; empty while lo > hi).
type bandRow struct {
	r       int32
	n       int32
	lo, hi  int64
	full    bool
	havDPhi float64 // lower bound of hav(latitude gap) from the centre to the row
	cosMin  float64 // smallest cos(latitude) in the row
}

// query is Nearest's scratch state, kept in the Index so a query does not
// allocate.
type query struct {
	center  geo.LatLng
	phiQ    float64
	cosQ    float64
	k       int
	radius  float64
	radiusH float64
	boundH  float64 // hav bound a driver must beat to enter the result
	filter  Filter
	now     int64
	hits    []hit
	rows    []bandRow
	work    int // rows extended plus buckets probed
	budget  int // work allowed before the search falls back to a full scan
}

func (q *query) bound() float64 {
	if len(q.hits) == q.k {
		return min(q.radius, q.hits[q.k-1].d)
	}
	return q.radius
}

// push offers a driver at exact distance d; hits stay sorted by (d, id).
func (q *query) push(d float64, id DriverID, slot uint32) {
	n := len(q.hits)
	if n == q.k {
		last := q.hits[n-1]
		if d > last.d || (d == last.d && id >= last.id) {
			return
		}
		n--
	} else {
		q.hits = append(q.hits, hit{})
	}
	i := n
	for i > 0 && (q.hits[i-1].d > d || (q.hits[i-1].d == d && q.hits[i-1].id > id)) {
		q.hits[i] = q.hits[i-1]
		i--
	}
	q.hits[i] = hit{d: d, id: id, slot: slot}
	if len(q.hits) == q.k {
		q.boundH = min(q.radiusH, havOfDistance(q.hits[q.k-1].d)*(1+relSlack)+absSlackH)
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
		center: center, phiQ: center.Lat * degToRad, cosQ: math.Cos(center.Lat * degToRad),
		k: k, radius: maxRadiusM, filter: f, now: x.cfg.Now().UnixNano(),
		hits: q.hits[:0], rows: q.rows[:0],
	}
	q.radiusH = havOfDistance(maxRadiusM)*(1+relSlack) + absSlackH
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
			q.hits = q.hits[:0]
			q.boundH = q.radiusH
			x.scanAll()
		}
	}
	for _, h := range q.hits {
		d := x.driver(h.slot)
		dst = append(dst, Candidate{Driver: d, DistanceM: h.d, Age: time.Duration(q.now - x.slab[h.slot].at)})
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
	return bandRow{
		r: r, n: x.grid.ncols(r), lo: 1, hi: 0,
		havDPhi: hav(max(0, gap-slackRad)),
		cosMin:  max(0, min(math.Cos(lo), math.Cos(hi))-relSlack),
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

// scan offers every matching driver of the bucket to the result. A cheap
// lower bound rejects most drivers before the exact distance is computed.
func (x *Index) scan(br *bandRow, cl *cell) {
	q := &x.q
	cosBound := q.cosQ * br.cosMin
	const e7ToRad = degToRad / 1e7
	for _, e := range cl.entries {
		if !q.filter.Statuses.Has(e.status()) {
			continue
		}
		dPhi := math.Abs(float64(e.lat)*e7ToRad - q.phiQ)
		dLam := math.Abs(float64(e.lng)/1e7 - q.center.Lng)
		if dLam > 180 {
			dLam = 360 - dLam
		}
		lb := sinLowerSq(dPhi/2) + cosBound*sinLowerSq(dLam*degToRad/2)
		if lb > q.boundH {
			continue
		}
		slot := e.slot()
		r := &x.slab[slot]
		if x.expired(r.at, q.now) {
			continue
		}
		d := geo.DistanceM(q.center, geo.FromE7(e.lat, e.lng))
		if d > q.radius {
			continue
		}
		q.push(d, r.id, slot)
	}
}
