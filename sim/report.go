package sim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/hexdispatch/hexdispatch/geo"
)

// Snapshots collects supply and demand positions around chosen simulated
// times, for the report's heat maps.
type Snapshots struct {
	mu    sync.Mutex
	bbox  geo.BBox
	shots []*snapshot
}

type snapshot struct {
	At      time.Duration
	supply  map[int]geo.LatLng // idle drivers by index, first report in the window
	demands []geo.LatLng       // pickups within demandWindow of At
}

// demandWindow is how far from a snapshot's time pickups count for it.
const demandWindow = 15 * time.Minute

func newSnapshots(at []time.Duration, d Demand) *Snapshots {
	s := &Snapshots{bbox: d.BBox}
	for _, t := range at {
		s.shots = append(s.shots, &snapshot{At: t, supply: map[int]geo.LatLng{}})
	}
	return s
}

// driver records an idle driver's report made at now.
func (s *Snapshots) driver(now time.Duration, idx int, p geo.LatLng, busy bool) {
	if busy {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shots {
		if now >= sh.At && now < sh.At+time.Minute {
			if _, ok := sh.supply[idx]; !ok {
				sh.supply[idx] = p
			}
		}
	}
}

func (s *Snapshots) demand(at time.Duration, p geo.LatLng) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shots {
		if at >= sh.At-demandWindow && at < sh.At+demandWindow {
			sh.demands = append(sh.demands, p)
		}
	}
}

// WriteOutputs writes summary.json and report.html into dir.
func WriteOutputs(dir string, s Summary, shots *Snapshots) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		return err
	}
	if err := WriteReport(f, s, shots); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteReport writes a self-contained HTML report: the KPIs and plots
// embedded as PNG data URLs.
func WriteReport(w io.Writer, s Summary, shots *Snapshots) error {
	var figs []figure
	add := func(title string, p *plot.Plot, err error) error {
		if err != nil {
			return fmt.Errorf("plot %s: %w", title, err)
		}
		uri, err := pngURI(p, 7*vg.Inch, 4*vg.Inch)
		if err != nil {
			return fmt.Errorf("plot %s: %w", title, err)
		}
		figs = append(figs, figure{Title: title, URI: template.URL(uri)})
		return nil
	}
	p, err := histogram("Rider wait from request to pickup", s.pickupSample)
	if err := add("Rider wait until pickup", p, err); err != nil {
		return err
	}
	p, err = histogram("Rider wait from request to the first offer", s.waitSample)
	if err := add("Rider wait until offer", p, err); err != nil {
		return err
	}
	p, err = matchRateOverTime(s)
	if err := add("Match rate over time", p, err); err != nil {
		return err
	}
	if shots != nil {
		for _, sh := range shots.shots {
			p, err := heatMap(fmt.Sprintf("Idle drivers at %s", clockString(sh.At)), shots.bbox, values(sh.supply))
			if err := add(p.Title.Text, p, err); err != nil {
				return err
			}
			p, err = heatMap(fmt.Sprintf("Requests %s ± 15 min", clockString(sh.At)), shots.bbox, sh.demands)
			if err := add(p.Title.Text, p, err); err != nil {
				return err
			}
		}
	}
	js, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return reportTmpl.Execute(w, struct {
		S       Summary
		Figures []figure
		JSON    string
	}{s, figs, string(js)})
}

type figure struct {
	Title string
	URI   template.URL
}

func values(m map[int]geo.LatLng) []geo.LatLng {
	out := make([]geo.LatLng, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

func pngURI(p *plot.Plot, w, h vg.Length) (string, error) {
	wt, err := p.WriterTo(w, h, "png")
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return "", err
	}
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

// histogram plots a sample of seconds (nothing when it is empty).
func histogram(title string, sample []float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "simulated seconds"
	p.Y.Label.Text = "rides"
	if len(sample) == 0 {
		return p, nil
	}
	h, err := plotter.NewHist(plotter.Values(sample), 40)
	if err != nil {
		return nil, err
	}
	h.FillColor = color.RGBA{R: 70, G: 130, B: 180, A: 255}
	p.Add(h)
	return p, nil
}

// matchRateOverTime plots matched / requests per 5 simulated minutes.
func matchRateOverTime(s Summary) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Match rate and demand per 5 minutes"
	p.X.Label.Text = "simulated minutes since " + s.From
	p.Y.Label.Text = "match rate (%)"
	var pts plotter.XYs
	for i := 0; i < len(s.Timeline); i += 5 {
		var req, m int
		for _, x := range s.Timeline[i:min(i+5, len(s.Timeline))] {
			req += x.Requests
			m += x.Matched
		}
		if req > 0 {
			pts = append(pts, plotter.XY{X: float64(i), Y: 100 * float64(m) / float64(req)})
		}
	}
	if len(pts) == 0 {
		return p, nil
	}
	l, err := plotter.NewLine(pts)
	if err != nil {
		return nil, err
	}
	l.Color = color.RGBA{R: 200, G: 60, B: 40, A: 255}
	p.Add(l)
	p.Y.Min, p.Y.Max = 0, 105
	return p, nil
}

// grid is a count grid over a bbox, for plotter.HeatMap.
type grid struct {
	bbox   geo.BBox
	nx, ny int
	counts []float64
}

func (g grid) Dims() (c, r int)   { return g.nx, g.ny }
func (g grid) Z(c, r int) float64 { return g.counts[r*g.nx+c] }
func (g grid) X(c int) float64 {
	return g.bbox.MinLng + (float64(c)+0.5)*(g.bbox.MaxLng-g.bbox.MinLng)/float64(g.nx)
}
func (g grid) Y(r int) float64 {
	return g.bbox.MinLat + (float64(r)+0.5)*(g.bbox.MaxLat-g.bbox.MinLat)/float64(g.ny)
}

func heatMap(title string, b geo.BBox, pts []geo.LatLng) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s (%d)", title, len(pts))
	p.X.Label.Text, p.Y.Label.Text = "lng", "lat"
	if len(pts) == 0 || !(b.MaxLat > b.MinLat) || !(b.MaxLng > b.MinLng) {
		return p, nil
	}
	g := grid{bbox: b, nx: 48, ny: 40}
	g.counts = make([]float64, g.nx*g.ny)
	for _, q := range pts {
		c := int((q.Lng - b.MinLng) / (b.MaxLng - b.MinLng) * float64(g.nx))
		r := int((q.Lat - b.MinLat) / (b.MaxLat - b.MinLat) * float64(g.ny))
		c, r = min(max(c, 0), g.nx-1), min(max(r, 0), g.ny-1)
		g.counts[r*g.nx+c]++
	}
	for i, v := range g.counts {
		g.counts[i] = math.Log1p(v) // a log scale keeps quiet cells visible
	}
	h := plotter.NewHeatMap(g, moreland.SmoothBlueRed().Palette(64))
	p.Add(h)
	return p, nil
}

var reportTmpl = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hexdispatch city simulation: {{.S.Demand}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{text-align:left;background:#f4f4f4}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}pre{background:#f8f8f8;padding:1em;overflow:auto}
</style></head><body>
<h1>City simulation: {{.S.Demand}}</h1>
<p>{{.S.From}} to {{.S.To}}, {{.S.Drivers}} drivers, speed {{.S.Speed}}x, seed {{.S.Seed}}, target {{.S.Target}}, {{.S.WallSeconds}} s of wall time.</p>
<table>
<tr><th>requests</th><td>{{.S.Requests}}</td><th>created</th><td>{{.S.Created}}</td><th>matched</th><td>{{.S.Matched}}</td></tr>
<tr><th>match rate</th><td>{{.S.MatchRate}}</td><th>no_driver rate</th><td>{{.S.NoDriverRate}}</td><th>completed</th><td>{{.S.Completed}}</td></tr>
<tr><th>wait until offer p50/p90/p99 (s)</th><td>{{.S.WaitUntilOfferS.P50}} / {{.S.WaitUntilOfferS.P90}} / {{.S.WaitUntilOfferS.P99}}</td>
<th>wait until pickup p50/p90/p99 (s)</th><td>{{.S.WaitUntilPickupS.P50}} / {{.S.WaitUntilPickupS.P90}} / {{.S.WaitUntilPickupS.P99}}</td>
<th>request to offer p50/p99 (ms, wall)</th><td>{{.S.RequestToOfferMS.P50}} / {{.S.RequestToOfferMS.P99}}</td></tr>
<tr><th>pickup distance mean (m)</th><td>{{.S.PickupDistanceM.Mean}}</td><th>pickup ETA mean (s)</th><td>{{.S.PickupETAS.Mean}}</td><th>driver utilisation</th><td>{{.S.DriverUtilisation}}</td></tr>
<tr><th>offers declined / timed out</th><td>{{.S.OffersDeclined}} / {{.S.OffersTimedOut}}</td><th>double assignments</th>
<td class="{{if .S.Invariants.DoubleAssignment}}bad{{else}}ok{{end}}">{{.S.Invariants.DoubleAssignment}}</td><th>rides lost</th>
<td class="{{if .S.Invariants.Lost}}bad{{else}}ok{{end}}">{{.S.Invariants.Lost}}</td></tr>
</table>
{{if not .S.Invariants.Checked}}<p class="bad">Invariants not checked: no access to the ride-events topic.</p>{{end}}
{{range .Figures}}<h2>{{.Title}}</h2><img alt="{{.Title}}" src="{{.URI}}">{{end}}
<h2>summary.json</h2><pre>{{.JSON}}</pre>
</body></html>
`))
