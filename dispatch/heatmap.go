package dispatch

import (
	"cmp"
	"context"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

type opsServer struct {
	cfg     OpsConfig
	alerts  *alertWindow
	streams atomic.Int32
}

type heatmapQuery struct {
	layer string
	res   int
	bbox  *geo.BBox
}

func parseHeatmapQuery(q url.Values) (heatmapQuery, error) {
	hq := heatmapQuery{layer: cmp.Or(q.Get("layer"), "supply"), res: geo.IndexRes}
	if !slices.Contains(HeatmapLayers, hq.layer) {
		return hq, BadField("layer", "unknown layer %q: want one of %v", hq.layer, HeatmapLayers)
	}
	if s := q.Get("res"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 7 || v > 9 {
			return hq, BadField("res", "res %q: want 7, 8 or 9", s)
		}
		hq.res = v
	}
	if s := q.Get("bbox"); s != "" {
		b, err := geo.ParseBBox(s)
		if err != nil {
			return hq, BadField("bbox", "%v", err)
		}
		hq.bbox = &b
	}
	return hq, nil
}

// supply returns the driver counts at res through the filter; a source
// that fails is a 503.
func (o *opsServer) supply(ctx context.Context, res int, f positions.Filter) (map[geo.Cell]int, []positions.Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.Timeout)
	defer cancel()
	counts, missed, err := o.cfg.Supply.CellCounts(ctx, res, f)
	if err != nil {
		return nil, nil, &APIError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error(), RetryAfter: time.Second}
	}
	return counts, missed, nil
}

func (o *opsServer) outcomes(layer string) (*Outcomes, error) {
	if o.cfg.Outcomes == nil {
		return nil, &APIError{Status: http.StatusNotFound, Code: "not_found",
			Message: "layer " + layer + " comes from the ride-events stream, which this process does not read"}
	}
	return o.cfg.Outcomes, nil
}

// values returns a layer's value per cell at res and the partitions whose
// owners did not answer.
func (o *opsServer) values(ctx context.Context, layer string, res int) ([]cellValue, []positions.Partition, error) {
	if f, ok := supplyLayers[layer]; ok {
		counts, missed, err := o.supply(ctx, res, f)
		if err != nil {
			return nil, nil, err
		}
		out := make([]cellValue, 0, len(counts))
		for c, n := range counts {
			out = append(out, cellValue{c, float64(n)})
		}
		return out, missed, nil
	}
	oc, err := o.outcomes(layer)
	if err != nil {
		return nil, nil, err
	}
	var m map[geo.Cell]float64
	var missed []positions.Partition
	if layer == LayerSurge {
		counts, miss, err := o.supply(ctx, res, positions.Available)
		if err != nil {
			return nil, nil, err
		}
		m, missed = Surge(oc.DecayedDemand(res), counts), miss
	} else if m, err = oc.Layer(layer, res); err != nil {
		return nil, nil, err
	}
	out := make([]cellValue, 0, len(m))
	for c, v := range m {
		out = append(out, cellValue{c, v})
	}
	return out, missed, nil
}

// Surge returns the surge multiplier of every cell with demand: with D the
// decayed requests (Outcomes.DecayedDemand) and S the available drivers,
// both summed over the cell and its ring of neighbours (spatial
// smoothing; the decay is the temporal smoothing),
//
//	surge = clamp(1 + (D/(S+1) - 1) / 2, 1, 3), to one decimal.
//
// One recent request per available driver (plus one) is balance, 1.0;
// each further request per driver adds 0.5, up to 3.0.
func Surge(demand map[geo.Cell]float64, supply map[geo.Cell]int) map[geo.Cell]float64 {
	out := make(map[geo.Cell]float64, len(demand))
	for c := range demand {
		if v, ok := surgeAt(c, demand, supply); ok {
			out[c] = v
		}
	}
	return out
}

// surgeAt is cell c's surge multiplier (see Surge); false when c is not a
// cell.
func surgeAt(c geo.Cell, demand map[geo.Cell]float64, supply map[geo.Cell]int) (float64, bool) {
	disk, err := geo.Disk(c, 1)
	if err != nil {
		return 0, false
	}
	var d, s float64
	for _, n := range disk {
		d += demand[n]
		s += float64(supply[n])
	}
	v := 1 + (d/(s+1)-1)/2
	return math.Round(min(max(v, 1), 3)*10) / 10, true
}

type cellValue struct {
	c geo.Cell
	v float64
}

// ranked keeps the cells inside bbox, highest value first, at most
// MaxHeatmapCells of them, and reports whether some were cut. It reorders
// list in place.
func ranked(list []cellValue, bbox *geo.BBox) ([]cellValue, bool) {
	if bbox != nil {
		list = slices.DeleteFunc(list, func(e cellValue) bool {
			center, err := geo.CellCenter(e.c)
			return err != nil || !bbox.Contains(center)
		})
	}
	slices.SortFunc(list, func(a, b cellValue) int { return cmp.Or(cmp.Compare(b.v, a.v), cmp.Compare(a.c, b.c)) })
	if len(list) > MaxHeatmapCells {
		return list[:MaxHeatmapCells], true
	}
	return list, false
}

// heatmapBufs recycles the answer buffers (a city's heatmap is a few MB).
var heatmapBufs = sync.Pool{New: func() any { return new([]byte) }}

func (o *opsServer) heatmap(w http.ResponseWriter, r *http.Request) {
	hq, err := parseHeatmapQuery(r.URL.Query())
	if err != nil {
		WriteError(w, err)
		return
	}
	values, missed, err := o.values(r.Context(), hq.layer, hq.res)
	if err != nil {
		WriteError(w, err)
		return
	}
	list, truncated := ranked(values, hq.bbox)
	bp := heatmapBufs.Get().(*[]byte)
	defer heatmapBufs.Put(bp)
	buf := slices.Grow((*bp)[:0], 256+len(list)*240)
	buf = appendHeatmapHead(buf, hq, missed, truncated, o.cfg.Now())
	buf = append(buf, `,"cells":[`...)
	buf = appendCells(buf, list, nil)
	buf = append(buf, "]}\n"...)
	*bp = buf
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.Write(buf)
}

// appendHeatmapHead writes the opening fields of a Heatmap object.
func appendHeatmapHead(buf []byte, hq heatmapQuery, missed []positions.Partition, truncated bool, now time.Time) []byte {
	buf = append(buf, `{"layer":`...)
	buf = strconv.AppendQuote(buf, hq.layer)
	buf = append(buf, `,"res":`...)
	buf = strconv.AppendInt(buf, int64(hq.res), 10)
	buf = append(buf, `,"partial":`...)
	buf = strconv.AppendBool(buf, len(missed) > 0)
	if len(missed) > 0 {
		slices.Sort(missed)
		buf = append(buf, `,"missed":[`...)
		for i, p := range missed {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, int64(p), 10)
		}
		buf = append(buf, ']')
	}
	if truncated {
		buf = append(buf, `,"truncated":true`...)
	}
	buf = append(buf, `,"generated_at":"`...)
	buf = now.UTC().AppendFormat(buf, time.RFC3339Nano)
	return append(buf, '"')
}

// appendCells writes cells as HeatmapCell objects; with known set, cells in
// it go without their boundary (the stream sent it before).
func appendCells(buf []byte, list []cellValue, known map[geo.Cell]float64) []byte {
	first := true
	for _, e := range list {
		b, ok := boundaryJSON(e.c)
		if !ok {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = append(buf, `{"cell":"`...)
		buf = append(buf, e.c.String()...)
		buf = append(buf, `","value":`...)
		buf = strconv.AppendFloat(buf, e.v, 'f', -1, 64)
		if _, sent := known[e.c]; !sent {
			buf = append(buf, `,"boundary":`...)
			buf = append(buf, b...)
		}
		buf = append(buf, '}')
	}
	return buf
}

// boundaries caches each cell's boundary as JSON ([[lat,lng],...], 1e-7
// degrees): cells never move, and a heatmap of 10,000 cells would
// otherwise spend most of its time there.
var boundaries = struct {
	sync.Mutex
	m map[geo.Cell][]byte
}{m: make(map[geo.Cell][]byte)}

const maxCachedBoundaries = 1 << 18

func boundaryJSON(c geo.Cell) ([]byte, bool) {
	boundaries.Lock()
	b, ok := boundaries.m[c]
	boundaries.Unlock()
	if ok {
		return b, true
	}
	corners, err := geo.Boundary(c)
	if err != nil {
		return nil, false
	}
	b = make([]byte, 0, 24*len(corners))
	b = append(b, '[')
	for i, p := range corners {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		b = strconv.AppendFloat(b, round7(p.Lat), 'f', -1, 64)
		b = append(b, ',')
		b = strconv.AppendFloat(b, round7(p.Lng), 'f', -1, 64)
		b = append(b, ']')
	}
	b = append(b, ']')
	boundaries.Lock()
	if len(boundaries.m) >= maxCachedBoundaries {
		clear(boundaries.m)
	}
	boundaries.m[c] = b
	boundaries.Unlock()
	return b, true
}

// round7 keeps 1e-7 degree (about 1 cm): the JSON stays compact.
func round7(v float64) float64 { return math.Round(v*1e7) / 1e7 }

// stream sends the heatmap as server-sent events: a full "heatmap" event,
// then every StreamEvery the cells that appeared or changed ("set", with
// boundaries only for new cells) and those that went ("del").
func (o *opsServer) stream(w http.ResponseWriter, r *http.Request) {
	hq, err := parseHeatmapQuery(r.URL.Query())
	if err != nil {
		WriteError(w, err)
		return
	}
	// The first map is computed before the header, so that a layer this
	// process cannot serve is a plain error answer.
	values, missed, err := o.values(r.Context(), hq.layer, hq.res)
	if err != nil {
		WriteError(w, err)
		return
	}
	if n := o.streams.Add(1); int(n) > o.cfg.MaxStreams {
		o.streams.Add(-1)
		WriteError(w, &APIError{Status: http.StatusServiceUnavailable, Code: "too_many_streams",
			Message: "too many heatmap streams open; poll GET /v1/ops/heatmap instead", RetryAfter: 10 * time.Second})
		return
	}
	defer o.streams.Add(-1)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(o.cfg.Closing, cancel)
	defer stop()

	sent := map[geo.Cell]float64{}
	tick := time.NewTicker(o.cfg.StreamEvery)
	defer tick.Stop()
	for full := true; ; full = false {
		var buf []byte
		if err != nil {
			buf = append(buf, "event: error\ndata: "...)
			buf = strconv.AppendQuote(buf, err.Error())
		} else {
			list, truncated := ranked(values, hq.bbox)
			buf = append(buf, "event: heatmap\ndata: "...)
			buf = appendHeatmapHead(buf, hq, missed, truncated, o.cfg.Now())
			buf = append(buf, `,"full":`...)
			buf = strconv.AppendBool(buf, full)
			buf = append(buf, `,"set":[`...)
			var changed []cellValue
			now := make(map[geo.Cell]float64, len(list))
			for _, e := range list {
				now[e.c] = e.v
				if v, ok := sent[e.c]; !ok || v != e.v {
					changed = append(changed, e)
				}
			}
			buf = appendCells(buf, changed, sent)
			buf = append(buf, `],"del":[`...)
			first := true
			for c := range sent {
				if _, ok := now[c]; !ok {
					if !first {
						buf = append(buf, ',')
					}
					first = false
					buf = append(buf, '"')
					buf = append(buf, c.String()...)
					buf = append(buf, '"')
				}
			}
			buf = append(buf, "]}"...)
			sent = now
		}
		buf = append(buf, "\n\n"...)
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second)) // a stuck reader ends its stream
		if _, err := w.Write(buf); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		values, missed, err = o.values(ctx, hq.layer, hq.res)
	}
}

// CellDetail is the body of GET /v1/ops/cells/{cell}: every layer's value
// for one cell (the console's tooltip).
type CellDetail struct {
	Cell      string   `json:"cell"`
	Res       int      `json:"res"`
	Supply    int      `json:"supply"`
	Drivers   int      `json:"drivers"`
	Demand    *float64 `json:"demand,omitempty"`
	Matched   *float64 `json:"matched,omitempty"`
	Unmatched *float64 `json:"unmatched,omitempty"`
	ETA       *float64 `json:"eta_s,omitempty"`
	Surge     *float64 `json:"surge,omitempty"`
	Partial   bool     `json:"partial"`
}

func (o *opsServer) cellDetail(w http.ResponseWriter, r *http.Request) {
	var c geo.Cell
	if err := c.UnmarshalText([]byte(r.PathValue("cell"))); err != nil {
		WriteError(w, BadField("cell", "%q is not an H3 cell", r.PathValue("cell")))
		return
	}
	res := c.Resolution()
	if res < 7 || res > 9 {
		WriteError(w, BadField("cell", "cell %s has resolution %d: want 7, 8 or 9", c, res))
		return
	}
	d := CellDetail{Cell: c.String(), Res: res}
	avail, missed, err := o.supply(r.Context(), res, positions.Available)
	if err != nil {
		WriteError(w, err)
		return
	}
	all, missed2, err := o.supply(r.Context(), res, positions.Filter{})
	if err != nil {
		WriteError(w, err)
		return
	}
	d.Supply, d.Drivers, d.Partial = avail[c], all[c], len(missed)+len(missed2) > 0
	if oc := o.cfg.Outcomes; oc != nil {
		s := oc.counts(res, func(p geo.Cell) bool { return p == c })[c]
		d.Demand, d.Matched, d.Unmatched = &s.demand, &s.matched, &s.unmatched
		if eta, ok := s.value(LayerETA); ok {
			d.ETA = &eta
		}
		surge := 1.0 // no recent demand
		if demand := oc.DecayedDemand(res); demand[c] > 0 {
			surge, _ = surgeAt(c, demand, avail)
		}
		d.Surge = &surge
	}
	writeJSON(w, http.StatusOK, d)
}
