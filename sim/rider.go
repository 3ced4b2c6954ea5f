package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

// riders sends every request at its time, each from its own rider
// goroutine (added to wg) that then watches the ride until it ends.
func (c *city) riders(ctx context.Context, reqs []simRequest, wg *sync.WaitGroup) {
	for i, q := range reqs {
		if err := c.clock.SleepUntil(ctx, q.At); err != nil {
			return
		}
		r := &rideRec{idx: i, req: q.Request, dropoff: q.dropoff}
		c.track.add(r)
		c.snaps.demand(q.At, q.Pickup)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.ride(ctx, r)
		}()
	}
}

// rideBody is the POST /v1/rides body.
type rideBody struct {
	Pickup  geo.LatLng `json:"pickup"`
	Dropoff geo.LatLng `json:"dropoff"`
}

// ride requests one ride and follows it on the rider WebSocket.
func (c *city) ride(ctx context.Context, r *rideRec) {
	tok, err := c.riderToken(r)
	if err != nil {
		return
	}
	body, key := c.rideRequest(r)
	var ride dispatch.RideView
	attempts := c.attempts()
	for attempt := 0; ; attempt++ {
		r.sentSim, r.sentWall = c.clock.Now(), time.Now()
		if attempt == 0 {
			c.track.locked(func(*tracker) { r.first = r.sentWall })
		}
		status, retryAfter, err := c.postRide(ctx, tok, key, body, &ride)
		r.status = status
		if status == http.StatusCreated || status == http.StatusOK {
			if err != nil {
				return // a 2xx without a ride in it: nothing to follow
			}
			break
		}
		if ctx.Err() != nil || attempt >= attempts-1 || (status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable && status != 0) {
			return
		}
		c.track.locked(func(t *tracker) { t.retries++ })
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryAfter):
		}
	}
	c.track.created(r, ride.ID)
	c.watch(ctx, tok, r)
}

// riderToken mints the token of request r's rider.
func (c *city) riderToken(r *rideRec) (string, error) {
	return c.target.Mint(fmt.Sprintf("sim-r%d", r.idx), dispatch.RoleRider)
}

// rideRequest is request r's POST /v1/rides body and Idempotency-Key,
// the same on every attempt.
func (c *city) rideRequest(r *rideRec) (body []byte, key string) {
	body, _ = json.Marshal(rideBody{Pickup: r.req.Pickup, Dropoff: r.dropoff})
	return body, fmt.Sprintf("citysim-%d-%d", c.cfg.Seed, r.idx)
}

// postRide sends the request; it returns the status (0 for a transport
// error) and the server's Retry-After.
func (c *city) postRide(ctx context.Context, tok, key string, body []byte, out *dispatch.RideView) (int, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.target.BaseURL+"/v1/rides", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, time.Second, err
	}
	defer resp.Body.Close()
	retry := time.Second
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retry = time.Duration(s) * time.Second
	}
	if resp.StatusCode/100 != 2 {
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, retry, fmt.Errorf("POST /v1/rides: %s", resp.Status)
	}
	return resp.StatusCode, 0, json.NewDecoder(resp.Body).Decode(out)
}

// watch follows the ride on its WebSocket until it ends or ctx ends; if
// the socket fails it polls GET /v1/rides/{id} instead.
func (c *city) watch(ctx context.Context, tok string, r *rideRec) {
	wsURL := "ws" + strings.TrimPrefix(c.target.BaseURL, "http") + "/v1/rides/" + string(r.id) + "/ws"
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, _, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{HTTPClient: c.http,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	cancel()
	if err == nil {
		defer conn.CloseNow()
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				break
			}
			var f struct {
				Type  string         `json:"type"`
				State dispatch.State `json:"state"`
			}
			if json.Unmarshal(b, &f) == nil && f.Type == "ride" {
				c.seen(r, f.State)
				if f.State.Terminal() {
					return
				}
			}
		}
	}
	for ctx.Err() == nil {
		if v, ok := c.getRide(ctx, tok, r.id); ok {
			c.seen(r, v.State)
			if v.State.Terminal() {
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *city) seen(r *rideRec, st dispatch.State) {
	c.track.locked(func(*tracker) { r.final = st })
}

// getRide reads a ride as the holder of tok sees it; false on any
// failure (transport, a status other than 200, an undecodable body).
func (c *city) getRide(ctx context.Context, tok string, id dispatch.RideID) (dispatch.RideView, bool) {
	var v dispatch.RideView
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.target.BaseURL+"/v1/rides/"+string(id), nil)
	if err != nil {
		return v, false
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.http.Do(req)
	if err != nil {
		return v, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
		return v, false
	}
	return v, true
}
