package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// spikeCity is a 4 km square of Manhattan.
var spikeCity = geo.BBox{MinLat: 40.74, MinLng: -74.00, MaxLat: 40.776, MaxLng: -73.953}

// spikeDriver is one simulated driver app on the driver WebSocket: it
// reports its position every period (available, or on_trip while it has a
// ride), accepts every offer, and finishes the trip after a moment.
type spikeDriver struct {
	id     string
	pos    geo.LatLng
	period *atomic.Int64 // ns, shared by all drivers
	offers func(ride string, at time.Time)
}

func (d *spikeDriver) run(ctx context.Context, base, token string) error {
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+token, nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	var mu sync.Mutex // one writer at a time
	write := func(v any) error {
		b, _ := json.Marshal(v)
		mu.Lock()
		defer mu.Unlock()
		return c.Write(ctx, websocket.MessageText, b)
	}
	var busy atomic.Bool
	var seq atomic.Uint64
	go func() { // reports
		for ctx.Err() == nil {
			st := "available"
			if busy.Load() {
				st = "on_trip"
			}
			write(map[string]any{"type": "position", "lat": d.pos.Lat, "lng": d.pos.Lng, "status": st, "seq": seq.Add(1)})
			time.Sleep(time.Duration(d.period.Load()) * time.Duration(90+rand.IntN(20)) / 100)
		}
	}()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return nil
		}
		var f struct{ Type, Ride string }
		if json.Unmarshal(b, &f) != nil || f.Type != "offer" {
			continue
		}
		d.offers(f.Ride, time.Now())
		busy.Store(true)
		write(map[string]any{"type": "accept", "ride": f.Ride})
		go func() {
			time.Sleep(300 * time.Millisecond)
			for _, step := range []string{"arrived", "start", "complete"} {
				write(map[string]any{"type": step, "ride": f.Ride})
			}
			busy.Store(false)
		}()
	}
}

// BenchmarkRideSpike runs a correlated spike through a whole engine: 1,000
// (3,000) drivers on WebSockets reporting every 4 s and 10 (30) ride
// requests a second, then for one second 10x the requests and 5x the GPS,
// then back. It
// reports request-to-offer p99 (measured by the clients) before and
// during the spike, the requests admitted, the GPS the gateway shed or
// let give way, and the peak heap. Run with -benchtime 1x.
func BenchmarkRideSpike(b *testing.B) {
	for _, sz := range []struct{ drivers, rate int }{{1000, 10}, {3000, 30}} {
		b.Run(fmt.Sprintf("drivers=%d,rides=%d/s", sz.drivers, sz.rate), func(b *testing.B) {
			for b.Loop() {
				runSpike(b, sz.drivers, sz.rate)
			}
		})
	}
}

func runSpike(b *testing.B, drivers, baseRate int) {
	spikeRate := 10 * baseRate
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := New(ctx, Config{Addr: "127.0.0.1:0", TokenSecret: "spike-bench-secret-0123456789", Partitions: 4,
		RiderRate: 1000, RiderBurst: 1000}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	base := "http://" + e.Addr().String()
	mint := func(sub string, role dispatch.Role) string {
		t, err := e.Signer().Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		return t
	}

	var mu sync.Mutex
	sent := map[string]time.Time{}    // ride -> request sent
	offered := map[string]time.Time{} // ride -> first offer received
	period := &atomic.Int64{}
	period.Store(int64(4 * time.Second))
	rng := rand.New(rand.NewPCG(1, 2))
	at := func() geo.LatLng {
		return geo.LatLng{Lat: spikeCity.MinLat + rng.Float64()*(spikeCity.MaxLat-spikeCity.MinLat),
			Lng: spikeCity.MinLng + rng.Float64()*(spikeCity.MaxLng-spikeCity.MinLng)}
	}
	dctx, dcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range drivers {
		d := &spikeDriver{id: fmt.Sprintf("d%d", i), pos: at(), period: period, offers: func(ride string, t time.Time) {
			mu.Lock()
			if _, ok := offered[ride]; !ok {
				offered[ride] = t
			}
			mu.Unlock()
		}}
		tok := mint(d.id, dispatch.RoleDriver)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.run(dctx, base, tok); err != nil && dctx.Err() == nil {
				b.Error(err)
			}
		}()
	}
	time.Sleep(6 * time.Second) // every driver online and indexed
	var pressurePeak atomic.Uint64
	go func() {
		for ctx.Err() == nil {
			if p := e.front.load.Pressure(); p > math.Float64frombits(pressurePeak.Load()) {
				pressurePeak.Store(math.Float64bits(p))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	var rejected, admitted atomic.Int64
	var rwg sync.WaitGroup
	request := func(n int) {
		pickup, drop := at(), at()
		body, _ := json.Marshal(map[string]any{"pickup": pickup, "dropoff": drop})
		tok := mint(fmt.Sprintf("u%d", n), dispatch.RoleRider)
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			req, _ := http.NewRequest("POST", base+"/v1/rides", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				rejected.Add(1)
				return
			}
			var v struct{ ID string }
			json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				rejected.Add(1)
				return
			}
			admitted.Add(1)
			mu.Lock()
			sent[v.ID] = t0
			mu.Unlock()
		}()
	}
	var heapPeak atomic.Uint64
	sctx, scancel := context.WithCancel(ctx)
	go func() {
		var ms runtime.MemStats
		for sctx.Err() == nil {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > heapPeak.Load() {
				heapPeak.Store(ms.HeapAlloc)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	n := 0
	phase := func(rate int, d time.Duration) {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for end := time.Now().Add(d); time.Now().Before(end); {
			<-tick.C
			request(n)
			n++
		}
	}
	before := e.front.drivers.Stats()
	phase(baseRate, 5*time.Second)
	spikeFrom := n
	spikeStart := time.Now()
	period.Store(int64(800 * time.Millisecond))
	phase(spikeRate, time.Second)
	period.Store(int64(4 * time.Second))
	spikeEnd := time.Now()
	spikeTo := n
	phase(baseRate, 5*time.Second)
	rwg.Wait()
	time.Sleep(3 * time.Second) // the last offers arrive
	after := e.front.drivers.Stats()
	scancel()

	// Latencies of admitted requests, by when they were sent.
	var baseLat, spikeLat []time.Duration
	missing := 0
	mu.Lock()
	for ride, t0 := range sent {
		t1, ok := offered[ride]
		if !ok {
			missing++
			continue
		}
		if !t0.Before(spikeStart) && t0.Before(spikeEnd) {
			spikeLat = append(spikeLat, t1.Sub(t0))
		} else {
			baseLat = append(baseLat, t1.Sub(t0))
		}
	}
	mu.Unlock()
	p99 := func(l []time.Duration) float64 {
		if len(l) == 0 {
			return 0
		}
		slices.Sort(l)
		return float64(l[min(len(l)-1, len(l)*99/100)].Microseconds()) / 1000
	}
	b.ReportMetric(p99(baseLat), "base-p99-ms")
	b.ReportMetric(p99(spikeLat), "spike-p99-ms")
	b.ReportMetric(float64(spikeTo-spikeFrom), "spike-requests")
	b.ReportMetric(float64(admitted.Load())/float64(n)*100, "admitted-%")
	b.ReportMetric(float64(rejected.Load()), "rejected")
	b.ReportMetric(float64(missing), "admitted-without-offer")
	b.ReportMetric(float64(after.Positions-before.Positions), "gps-accepted")
	b.ReportMetric(float64(after.Throttled-before.Throttled), "gps-gave-way")
	b.ReportMetric(float64(after.Shed-before.Shed), "gps-shed")
	b.ReportMetric(float64(heapPeak.Load())/(1<<20), "heap-peak-MB")
	b.ReportMetric(math.Float64frombits(pressurePeak.Load()), "pressure-peak")

	dcancel()
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		b.Error(err)
	}
}
