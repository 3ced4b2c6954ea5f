package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// The probes measure "matching works" directly: a few probe drivers stay
// online at probeAt, far from the simulated city so no simulated rider is
// ever offered one, and probe riders request rides there all the time. A
// probe succeeds when its offer reaches a probe driver's WebSocket; the
// driver declines and the rider cancels, so a probe never holds a driver.
// Every probe ride is also checked by the invariant checker.
var probeAt = geo.LatLng{Lat: 40.7580, Lng: -73.9855} // Manhattan; the simulated city is San Francisco

// probeResult is one probe.
type probeResult struct {
	sent    time.Time
	offered time.Time // zero when no offer came within probeWait
	ride    dispatch.RideID
}

const (
	probeDrivers  = 4                      // online at probeAt, so concurrent probes do not queue for one driver
	probeEvery    = 250 * time.Millisecond // a new probe this often, whatever the others do
	probeWait     = 3 * time.Second        // how long a probe waits for its offer
	probeInFlight = 16                     // probes at once at most; beyond it a tick is skipped
)

// prober runs the probes: a new one every probeEvery, each in its own
// goroutine, so a probe stuck on an outage does not delay the one that
// sees the recovery.
type prober struct {
	base string
	mint func(sub string, role dispatch.Role) (string, error)
	http *http.Client

	mu      sync.Mutex
	results []probeResult
	offers  map[dispatch.RideID]time.Time // first offer of each ride, as a probe driver got it
}

func newProber(base string, mint func(string, dispatch.Role) (string, error)) *prober {
	return &prober{base: base, mint: mint, http: &http.Client{Timeout: 2 * time.Second}, offers: map[dispatch.RideID]time.Time{}}
}

// firstSuccessAfter returns the earliest offer time among the probes sent
// at or after t that got their offer; false if none has yet.
func (p *prober) firstSuccessAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best time.Time
	for _, r := range p.results {
		if !r.sent.Before(t) && !r.offered.IsZero() && (best.IsZero() || r.offered.Before(best)) {
			best = r.offered
		}
	}
	return best, !best.IsZero()
}

// counts returns the probes made and those that got their offer.
func (p *prober) counts() (made, offered int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.results {
		if !r.offered.IsZero() {
			offered++
		}
	}
	return len(p.results), offered
}

// rides returns the IDs of the probe rides the engine created.
func (p *prober) rides() []dispatch.RideID {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []dispatch.RideID
	for _, r := range p.results {
		if r.ride != "" {
			out = append(out, r.ride)
		}
	}
	return out
}

// run drives the probe drivers and the probes until ctx ends, and waits
// for all of them.
func (p *prober) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range probeDrivers {
		tok, err := p.mint(fmt.Sprintf("chaos-probe-d%d", i), dispatch.RoleDriver)
		if err != nil {
			return
		}
		at := geo.LatLng{Lat: probeAt.Lat + 0.001*float64(i), Lng: probeAt.Lng}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.driver(ctx, tok, at)
		}()
	}
	sem := make(chan struct{}, probeInFlight)
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // too many in flight: an outage; the next tick tries again
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := p.once(ctx, n)
			if ctx.Err() != nil {
				return
			}
			p.mu.Lock()
			p.results = append(p.results, r)
			p.mu.Unlock()
		}()
	}
}

// once makes one probe ride, waits for its offer and cancels it.
func (p *prober) once(ctx context.Context, n int) probeResult {
	r := probeResult{sent: time.Now()}
	sub := fmt.Sprintf("chaos-probe-r%d", n)
	tok, err := p.mint(sub, dispatch.RoleRider)
	if err != nil {
		return r
	}
	dropoff := geo.LatLng{Lat: probeAt.Lat - 0.01, Lng: probeAt.Lng}
	body, _ := json.Marshal(map[string]any{"pickup": probeAt, "dropoff": dropoff})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/v1/rides", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", sub)
	resp, err := p.http.Do(req)
	if err != nil {
		return r
	}
	var view dispatch.RideView
	decErr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&view)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || decErr != nil || view.ID == "" {
		return r
	}
	r.ride = view.ID
	// The offer may reach the driver before the POST returns: the drivers
	// record every offer, and the probe polls that record.
	deadline := time.Now().Add(probeWait)
	for {
		p.mu.Lock()
		at, ok := p.offers[view.ID]
		p.mu.Unlock()
		if ok {
			r.offered = at
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return r
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Cancel, so the search ends and the ride reaches a terminal state. A
	// failed cancel (Redis down) leaves the search to run out.
	creq, _ := http.NewRequestWithContext(ctx, http.MethodDelete, p.base+"/v1/rides/"+string(view.ID), nil)
	creq.Header.Set("Authorization", "Bearer "+tok)
	if cresp, err := p.http.Do(creq); err == nil {
		io.Copy(io.Discard, cresp.Body)
		cresp.Body.Close()
	}
	return r
}

// driver keeps one probe driver online at at: a WebSocket to the api
// (redialled when it fails), a position every 2 s, every offer recorded
// and declined at once.
func (p *prober) driver(ctx context.Context, tok string, at geo.LatLng) {
	url := "ws" + strings.TrimPrefix(p.base, "http") + "/v1/drivers/ws"
	var seq uint64
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		cancel()
		if err == nil {
			p.session(ctx, conn, &seq, at)
			conn.CloseNow()
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// session runs one driver connection until it fails or ctx ends.
func (p *prober) session(ctx context.Context, conn *websocket.Conn, seq *uint64, at geo.LatLng) {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var writeMu sync.Mutex // the reader's declines and the pinger's positions share the socket
	write := func(b []byte) error {
		writeMu.Lock()
		defer writeMu.Unlock()
		wctx, cancel := context.WithTimeout(sctx, 2*time.Second)
		defer cancel()
		return conn.Write(wctx, websocket.MessageText, b)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop()
		for {
			_, b, err := conn.Read(sctx)
			if err != nil {
				return
			}
			var m struct {
				Type string          `json:"type"`
				Ride dispatch.RideID `json:"ride"`
			}
			if json.Unmarshal(b, &m) != nil || m.Type != "offer" {
				continue
			}
			now := time.Now()
			p.mu.Lock()
			if _, ok := p.offers[m.Ride]; !ok {
				p.offers[m.Ride] = now
			}
			p.mu.Unlock()
			write(fmt.Appendf(nil, `{"type":"decline","ride":%q}`, m.Ride))
		}
	}()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		*seq++
		b := fmt.Appendf(nil, `{"type":"position","lat":%.6f,"lng":%.6f,"status":"available","seq":%d}`, at.Lat, at.Lng, *seq)
		if write(b) != nil {
			return
		}
		select {
		case <-sctx.Done():
			return
		case <-t.C:
		}
	}
}
