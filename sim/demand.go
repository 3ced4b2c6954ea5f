package sim

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

// ErrBadDemand is wrapped by errors that make a whole demand file unusable
// (no header, unknown columns, no valid row). Bad single rows are not
// errors: they are reported and skipped.
var ErrBadDemand = errors.New("bad demand file")

// Request is one rider asking for a ride.
type Request struct {
	// At is the offset from the start of the demand's day.
	At     time.Duration
	Pickup geo.LatLng
	// Dropoff and TripDuration are set when the source has them (trip
	// files); HasDropoff says so.
	Dropoff      geo.LatLng
	HasDropoff   bool
	TripDuration time.Duration
	DistanceKM   float64
	// Line is the source line, for reports.
	Line int
}

// Demand is a replayable list of requests, sorted by At.
type Demand struct {
	Name     string
	Requests []Request
	BBox     geo.BBox // of all pickups and dropoffs
}

// RowError is one skipped row.
type RowError struct {
	Line int
	Err  error
}

func (e RowError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// ReadReport says what a read kept and skipped.
type ReadReport struct {
	Rows    int        // data rows seen
	Kept    int        // requests kept
	Skipped []RowError // at most MaxReportedErrors, in line order
	// SkippedTotal counts every skipped row, reported or not.
	SkippedTotal int
}

// MaxReportedErrors bounds ReadReport.Skipped so a broken file cannot make
// the report huge.
const MaxReportedErrors = 100

func (r ReadReport) String() string {
	return fmt.Sprintf("%d rows, %d kept, %d skipped", r.Rows, r.Kept, r.SkippedTotal)
}

// maxLine bounds one CSV line; the shared files' lines are under 100 bytes.
const maxLine = 4096

// ReadDemandFile reads a demand CSV file, gzip-compressed or not.
func ReadDemandFile(path string) (Demand, ReadReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return Demand{}, ReadReport{}, err
	}
	defer f.Close()
	return ReadDemand(f, path)
}

// ReadDemand reads demand CSV from r: a header line, then one request per
// line. Two layouts are understood, by their column names:
//
//   - pickups: t_s, lat, lng (seconds since local midnight and a position);
//   - trips: t_s, day, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng,
//     duration_s, distance_km. Trips from several days are laid end to end
//     in day order.
//
// Extra columns are ignored; gzip input is detected. Rows that fail
// validation are skipped and reported with their line number; the read
// fails only when the header is unusable or no row is valid.
func ReadDemand(r io.Reader, name string) (Demand, ReadReport, error) {
	br := bufio.NewReader(r)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return Demand{}, ReadReport{}, fmt.Errorf("%w: %s: gzip: %w", ErrBadDemand, name, err)
		}
		defer zr.Close()
		br = bufio.NewReader(zr)
	}
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 256), maxLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return Demand{}, ReadReport{}, fmt.Errorf("%w: %s: %w", ErrBadDemand, name, err)
		}
		return Demand{}, ReadReport{}, fmt.Errorf("%w: %s: empty, no header line", ErrBadDemand, name)
	}
	cols, err := parseHeader(sc.Text())
	if err != nil {
		return Demand{}, ReadReport{}, fmt.Errorf("%w: %s: %w", ErrBadDemand, name, err)
	}
	d := Demand{Name: name, BBox: geo.EmptyBBox}
	var rep ReadReport
	days := map[string]int{} // trip day -> day number, assigned after sorting
	var dayOf []string       // per kept request, its day ("" for pickups)
	line := 1
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		rep.Rows++
		req, day, err := cols.parse(text)
		if err != nil {
			rep.SkippedTotal++
			if len(rep.Skipped) < MaxReportedErrors {
				rep.Skipped = append(rep.Skipped, RowError{Line: line, Err: err})
			}
			continue
		}
		req.Line = line
		d.Requests = append(d.Requests, req)
		dayOf = append(dayOf, day)
		if day != "" {
			days[day] = 0
		}
	}
	if err := sc.Err(); err != nil {
		return Demand{}, rep, fmt.Errorf("%w: %s: line %d: %w", ErrBadDemand, name, line+1, err)
	}
	if len(d.Requests) == 0 {
		return Demand{}, rep, fmt.Errorf("%w: %s: no valid row (%s)", ErrBadDemand, name, rep)
	}
	if len(days) > 0 {
		names := make([]string, 0, len(days))
		for k := range days {
			names = append(names, k)
		}
		slices.Sort(names) // YYYY-MM-DD sorts by date
		for i, k := range names {
			days[k] = i
		}
		for i := range d.Requests {
			d.Requests[i].At += time.Duration(days[dayOf[i]]) * 24 * time.Hour
		}
	}
	slices.SortStableFunc(d.Requests, func(a, b Request) int { return int(a.At - b.At) })
	for _, q := range d.Requests {
		d.BBox = d.BBox.Extend(q.Pickup)
		if q.HasDropoff {
			d.BBox = d.BBox.Extend(q.Dropoff)
		}
	}
	rep.Kept = len(d.Requests)
	return d, rep, nil
}

// columns maps the fields this reader uses to their CSV positions.
type columns struct {
	n                                   int // columns in the header
	ts, lat, lng                        int
	day, dlat, dlng, duration, distance int // -1 when absent
	trips                               bool
}

func parseHeader(h string) (columns, error) {
	names := strings.Split(strings.TrimSpace(h), ",")
	idx := map[string]int{}
	for i, n := range names {
		idx[strings.ToLower(strings.TrimSpace(n))] = i
	}
	get := func(n string) int {
		if i, ok := idx[n]; ok {
			return i
		}
		return -1
	}
	c := columns{n: len(names), ts: get("t_s"), day: get("day"), dlat: get("dropoff_lat"), dlng: get("dropoff_lng"),
		duration: get("duration_s"), distance: get("distance_km")}
	if c.ts < 0 {
		return c, fmt.Errorf("header %q has no t_s column", h)
	}
	if get("pickup_lat") >= 0 {
		c.trips = true
		c.lat, c.lng = get("pickup_lat"), get("pickup_lng")
		for _, need := range []struct {
			name string
			i    int
		}{{"pickup_lng", c.lng}, {"day", c.day}, {"dropoff_lat", c.dlat}, {"dropoff_lng", c.dlng}, {"duration_s", c.duration}} {
			if need.i < 0 {
				return c, fmt.Errorf("trip header %q has no %s column", h, need.name)
			}
		}
		return c, nil
	}
	c.lat, c.lng = get("lat"), get("lng")
	if c.lat < 0 || c.lng < 0 {
		return c, fmt.Errorf("header %q has neither lat,lng nor pickup_lat,pickup_lng columns", h)
	}
	return c, nil
}

// maxDaySeconds bounds t_s: a day, plus a leap second.
const maxDaySeconds = 86400

func (c columns) parse(line string) (Request, string, error) {
	f := strings.Split(line, ",")
	if len(f) != c.n {
		return Request{}, "", fmt.Errorf("%d fields, header has %d", len(f), c.n)
	}
	var q Request
	ts, err := strconv.ParseInt(strings.TrimSpace(f[c.ts]), 10, 64)
	if err != nil || ts < 0 || ts > maxDaySeconds {
		return q, "", fmt.Errorf("t_s %q is not a second of the day in [0, %d]", f[c.ts], maxDaySeconds)
	}
	q.At = time.Duration(ts) * time.Second
	if q.Pickup, err = parsePoint(f[c.lat], f[c.lng], "pickup"); err != nil {
		return q, "", err
	}
	if !c.trips {
		return q, "", nil
	}
	day := strings.TrimSpace(f[c.day])
	if _, err := time.Parse("2006-01-02", day); err != nil {
		return q, "", fmt.Errorf("day %q is not YYYY-MM-DD", day)
	}
	if q.Dropoff, err = parsePoint(f[c.dlat], f[c.dlng], "dropoff"); err != nil {
		return q, "", err
	}
	q.HasDropoff = true
	dur, err := strconv.ParseInt(strings.TrimSpace(f[c.duration]), 10, 64)
	if err != nil || dur <= 0 || dur > 24*3600 {
		return q, "", fmt.Errorf("duration_s %q is not in (0, 86400]", f[c.duration])
	}
	q.TripDuration = time.Duration(dur) * time.Second
	if c.distance >= 0 {
		km, err := strconv.ParseFloat(strings.TrimSpace(f[c.distance]), 64)
		if err != nil || math.IsNaN(km) || km < 0 || km > 1000 {
			return q, "", fmt.Errorf("distance_km %q is not in [0, 1000]", f[c.distance])
		}
		q.DistanceKM = km
	}
	return q, day, nil
}

func parsePoint(latS, lngS, what string) (geo.LatLng, error) {
	p, err := geo.ParseLatLng(strings.TrimSpace(latS) + "," + strings.TrimSpace(lngS))
	if err != nil {
		return p, fmt.Errorf("%s: %w", what, err)
	}
	return p, nil
}

// SpreadMinutes returns a copy of d in which the requests of each whole
// minute (sources that record pickups to the minute put them all at :00)
// are spread uniformly at random over that minute, deterministically for a
// seed. Requests with seconds already are left alone.
func (d Demand) SpreadMinutes(seed uint64) Demand {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := d
	out.Requests = slices.Clone(d.Requests)
	for i := range out.Requests {
		if out.Requests[i].At%time.Minute == 0 {
			out.Requests[i].At += time.Duration(rng.Int64N(int64(time.Minute)))
		}
	}
	slices.SortStableFunc(out.Requests, func(a, b Request) int { return int(a.At - b.At) })
	return out
}

// Window returns the requests with from <= At < to, times kept.
func (d Demand) Window(from, to time.Duration) Demand {
	out := d
	lo, _ := slices.BinarySearchFunc(d.Requests, from, func(q Request, t time.Duration) int { return int(q.At - t) })
	hi, _ := slices.BinarySearchFunc(d.Requests, to, func(q Request, t time.Duration) int { return int(q.At - t) })
	out.Requests = d.Requests[lo:hi:hi]
	return out
}

// Synthetic returns Poisson demand: requests at ratePerHour on average over
// [0, span), pickups drawn from s, deterministic for a seed.
func Synthetic(s Scatter, ratePerHour float64, span time.Duration, seed uint64) (Demand, error) {
	if err := s.Validate(); err != nil {
		return Demand{}, err
	}
	if !(ratePerHour > 0) || math.IsInf(ratePerHour, 0) || span <= 0 {
		return Demand{}, fmt.Errorf("sim: synthetic demand needs a positive finite rate (%v/h) and span (%v)", ratePerHour, span)
	}
	rng := rand.New(rand.NewPCG(seed, 0xd0d0))
	d := Demand{Name: fmt.Sprintf("synthetic %.0f/h", ratePerHour), BBox: s.BBox}
	meanGap := float64(time.Hour) / ratePerHour
	for at := time.Duration(rng.ExpFloat64() * meanGap); at < span; at += time.Duration(rng.ExpFloat64() * meanGap) {
		d.Requests = append(d.Requests, Request{At: at, Pickup: s.Point(rng)})
	}
	return d, nil
}
