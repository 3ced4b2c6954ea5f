package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// browser starts headless Chromium (Debian's chromium; .ci/run installs
// it). Without it the test skips, except under CI=true where it fails.
func browser(tb testing.TB) context.Context {
	tb.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatal("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
		}
		tb.Skip("chromium is not installed: apt-get install -y chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(tb.TempDir()), chromedp.WindowSize(1280, 800))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	tb.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return ctx
}

// consoleEngine runs a whole engine (role all) for the console tests.
type consoleEngine struct {
	base   string
	signer *dispatch.Signer
	client *http.Client
}

func startConsoleEngine(tb testing.TB) *consoleEngine {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e, err := New(ctx, Config{Addr: "127.0.0.1:0", TokenSecret: "console-test-secret-0123456789", Partitions: 4,
		TTL: 10 * time.Minute, RiderRate: 1000, RiderBurst: 1000}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("engine: %v", err)
		}
	})
	return &consoleEngine{base: "http://" + e.Addr().String(), signer: e.Signer(),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
}

func (c *consoleEngine) token(tb testing.TB, sub string, role dispatch.Role) string {
	tb.Helper()
	t, err := c.signer.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// place puts one driver per position online through the HTTP location
// endpoint, 8 at a time.
func (c *consoleEngine) place(tb testing.TB, pos []geo.LatLng) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				id := fmt.Sprintf("d%d", i)
				tok, err := c.signer.Mint(dispatch.Claims{Subject: id, Role: dispatch.RoleDriver, Expires: time.Now().Add(time.Hour)})
				if err != nil {
					errs <- err
					return
				}
				body := fmt.Sprintf(`{"lat":%.7f,"lng":%.7f,"status":"available","seq":1}`, pos[i].Lat, pos[i].Lng)
				req, _ := http.NewRequest("POST", c.base+"/v1/drivers/"+id+"/location", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("Content-Type", "application/json")
				resp, err := c.client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					errs <- fmt.Errorf("driver %s: location answered %d", id, resp.StatusCode)
					return
				}
			}
		}()
	}
	for i := range pos {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			wg.Wait()
			tb.Fatal(err)
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		tb.Fatal(err)
	default:
	}
}

// waitCells waits until the drivers heatmap at res 9 has want cells.
func (c *consoleEngine) waitCells(tb testing.TB, ops string, want int) dispatch.Heatmap {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest("GET", c.base+"/v1/ops/heatmap?layer=drivers&res=9", nil)
		req.Header.Set("Authorization", "Bearer "+ops)
		resp, err := c.client.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		var h dispatch.Heatmap
		json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if len(h.Cells) == want {
			return h
		}
		if time.Now().After(deadline) {
			tb.Fatalf("heatmap has %d cells, want %d", len(h.Cells), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// artifactDir is where browser tests leave screenshots: $HEXD_ARTIFACTS,
// or bin/test-artifacts at the repository root.
func artifactDir(tb testing.TB) string {
	dir := os.Getenv("HEXD_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// TestOpsConsoleInChromium loads /ops in headless Chromium against a
// running engine with a known set of drivers: the page draws one hexagon
// per occupied cell, the tooltip of the busiest cell shows its count and
// the cell's detail, and the four alert panels render. It saves a
// screenshot as a test artifact.
func TestOpsConsoleInChromium(t *testing.T) {
	bctx := browser(t)
	eng := startConsoleEngine(t)
	ops := eng.token(t, "ops1", dispatch.RoleOps)

	// A centre cell with 5 drivers and its six neighbours with 1, 2, 3, 1,
	// 2 and 3.
	centre, err := geo.CellAt(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 9)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := geo.Ring(centre, 1)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[geo.Cell]int{centre: 5}
	for i, c := range ring {
		counts[c] = 1 + i%3
	}
	var pos []geo.LatLng
	for c, n := range counts {
		p, err := geo.CellCenter(c)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			pos = append(pos, geo.LatLng{Lat: p.Lat + float64(i)*1e-5, Lng: p.Lng})
		}
	}
	eng.place(t, pos)
	eng.waitCells(t, ops, len(counts))

	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(eng.base+"/ops#token="+ops+"&layer=drivers&res=9")); err != nil {
		t.Fatal(err)
	}
	ready := `hexd.updates > 0 && hexd.streaming && hexd.cells.size === 7 && hexd.drawn === 7 && document.querySelectorAll("#alerts .alert").length === 4`
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](ready, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({cells: hexd.cells.size, drawn: hexd.drawn, error: hexd.error, updates: hexd.updates})`))
		t.Fatalf("page never drew the 7 cells: %v (%s)", err, state)
	}
	drawn, err := chromedp.Run(ctx, chromedp.Evaluate[int](`hexd.drawn`))
	if err != nil || drawn != 7 {
		t.Fatalf("drawn cells = %d (%v), want 7", drawn, err)
	}

	// Hover the centre cell: the tooltip shows its 5 drivers, then the
	// detail from /v1/ops/cells.
	xy, err := chromedp.Run(ctx, chromedp.Evaluate[[]float64](fmt.Sprintf(`hexd.screenOf(%q)`, centre.String())))
	if err != nil || len(xy) != 2 {
		t.Fatalf("screenOf: %v %v", xy, err)
	}
	if err := chromedp.Do(ctx, chromedp.MouseEvent(chromedp.MouseMoved, xy[0], xy[1])); err != nil {
		t.Fatal(err)
	}
	tipReady := `document.querySelector("#tooltip dl") !== null`
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](tipReady, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("tooltip detail never showed: %v", err)
	}
	tip, err := chromedp.Run(ctx, chromedp.TextContent("#tooltip"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{centre.String(), "online drivers per cell: 5", "online5", "available5"} {
		if !strings.Contains(tip, want) {
			t.Fatalf("tooltip %q does not contain %q", tip, want)
		}
	}
	alerts, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#alerts .alert")].map(e => e.dataset.name + ":" + e.dataset.state + ":" + getComputedStyle(e).borderLeftColor)`))
	if err != nil {
		t.Fatal(err)
	}
	// All four are green: nothing has failed and no ride was requested.
	const green = "rgb(76, 175, 80)"
	if want := "match_p99:ok:" + green + " consumer_lag:ok:" + green + " error_rate:ok:" + green + " memory:ok:" + green; strings.Join(alerts, " ") != want {
		t.Fatalf("alert panels = %v", alerts)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(artifactDir(t), "ops-console.png")
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
}

// BenchmarkOpsConsoleFrame measures the console's frame time with 10,000
// cells on screen in headless Chromium (software rendering), pixels read
// back: frame-ms is a full redraw (every cell drawn again, as when data
// arrives or the view comes to rest), pan-frame-ms a frame while dragging
// (the cell layer composited at the new view). ns/op adds the DevTools
// round trip.
func BenchmarkOpsConsoleFrame(b *testing.B) {
	bctx := browser(b)
	eng := startConsoleEngine(b)
	ops := eng.token(b, "ops1", dispatch.RoleOps)
	centre, err := geo.CellAt(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, 9)
	if err != nil {
		b.Fatal(err)
	}
	disk, err := geo.Disk(centre, 58) // 10,267 cells
	if err != nil {
		b.Fatal(err)
	}
	const cells = 10_000
	pos := make([]geo.LatLng, cells)
	for i := range pos {
		if pos[i], err = geo.CellCenter(disk[i]); err != nil {
			b.Fatal(err)
		}
	}
	eng.place(b, pos)
	eng.waitCells(b, ops, cells)
	ctx, cancel := context.WithTimeout(bctx, 5*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(eng.base+"/ops#token="+ops+"&layer=drivers&res=9")); err != nil {
		b.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`hexd.cells.size === %d && hexd.drawn > 0`, cells),
		chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		b.Fatal(err)
	}
	type frames struct {
		Mean  float64 `json:"mean"`
		Worst float64 `json:"worst"`
		// Script is the part spent in the page's drawing code, before
		// the canvas rasterizes.
		Script float64 `json:"script"`
		// Pan is a frame while dragging: the cell layer composited.
		Pan      float64 `json:"pan"`
		PanWorst float64 `json:"panWorst"`
		Cells    int     `json:"cells"`
		Drawn    int     `json:"drawn"`
	}
	var sum, worst, script, pan, panWorst float64
	n := 0
	for b.Loop() {
		f, err := chromedp.Run(ctx, chromedp.Evaluate[frames](`hexd.benchFrames(1)`))
		if err != nil {
			b.Fatal(err)
		}
		if f.Drawn != cells {
			b.Fatalf("drew %d of %d cells", f.Drawn, f.Cells)
		}
		sum += f.Mean
		script += f.Script
		pan += f.Pan
		panWorst = max(panWorst, f.PanWorst)
		worst = max(worst, f.Worst)
		n++
	}
	b.ReportMetric(sum/float64(n), "frame-ms")
	b.ReportMetric(worst, "worst-frame-ms")
	b.ReportMetric(script/float64(n), "script-ms")
	b.ReportMetric(pan/float64(n), "pan-frame-ms")
	b.ReportMetric(panWorst, "worst-pan-frame-ms")
}
