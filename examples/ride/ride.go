package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// rideView is the part of a ride, as the API shows it, that this client
// reads.
type rideView struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Driver string `json:"driver"`
}

// frame is any WebSocket frame either app receives; Type says which
// fields are set.
type frame struct {
	Type    string  `json:"type"` // driver: offer, ack, error, ...; rider: ride, driver_position, error
	Ride    string  `json:"ride"`
	Action  string  `json:"action"` // ack
	State   string  `json:"state"`  // ack, ride
	ETA     float64 `json:"eta_s"`  // offer
	Code    string  `json:"code"`   // error
	Message string  `json:"message"`
	ID      string  `json:"id"` // ride
	Driver  string  `json:"driver"`
	Lat     float64 `json:"lat"` // driver_position
	Lng     float64 `json:"lng"`
}

// car is the driver's simulated position and status, read by the
// position streamer and moved by the ride's steps.
type car struct {
	mu     sync.Mutex
	pos    latLng
	status string // available, en_route, on_trip
}

func (c *car) get() (latLng, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos, c.status
}

func (c *car) set(p latLng, status string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pos, c.status = p, status
}

// takeRide plays one ride through the engine at c.base and prints each
// step to out. Every goroutine it starts has stopped when it returns.
func takeRide(ctx context.Context, c config, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // runs after cancel: the goroutines stop on it
	defer cancel()
	say := func(who, format string, args ...any) {
		fmt.Fprintf(out, "%-8s%s\n", who+":", fmt.Sprintf(format, args...))
	}

	// The driver comes online 300 m north of the pickup and reports its
	// position every c.every, as a driver app does while working.
	drv, _, err := websocket.Dial(ctx, c.wsURL("/v1/drivers/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.driverToken}}})
	if err != nil {
		return fmt.Errorf("driver WebSocket: %w", err)
	}
	defer drv.CloseNow()
	start := latLng{Lat: c.pickup.Lat + 300/111195.0, Lng: c.pickup.Lng}
	vehicle := &car{pos: start, status: "available"}
	driverFrames := make(chan frame, 64)
	wg.Add(2)
	go func() {
		defer wg.Done()
		readFrames(ctx, drv, driverFrames)
	}()
	go func() {
		defer wg.Done()
		streamPositions(ctx, drv, vehicle, c.every)
	}()
	say("driver", "online at %s, streaming positions every %v", start, c.every)

	// The rider asks for a ride. A retry with the same Idempotency-Key
	// would return the same ride.
	body, _ := json.Marshal(map[string]latLng{"pickup": c.pickup, "dropoff": c.dropoff})
	var ride rideView
	status, err := c.call(ctx, "POST", "/v1/rides", c.riderToken, body, &ride, "Idempotency-Key", c.key)
	if err != nil {
		return fmt.Errorf("requesting the ride: %w", err)
	}
	say("rider", "requested ride %s from %s to %s (HTTP %d, state %s)", ride.ID, c.pickup, c.dropoff, status, ride.State)

	// The rider watches the ride: a frame at once and on every change, and
	// the assigned driver's position as it moves.
	watch, _, err := websocket.Dial(ctx, c.wsURL("/v1/rides/"+ride.ID+"/ws"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.riderToken}}})
	if err != nil {
		return fmt.Errorf("rider WebSocket: %w", err)
	}
	defer watch.CloseNow()
	riderFrames := make(chan frame, 64)
	wg.Add(1)
	go func() {
		defer wg.Done()
		readFrames(ctx, watch, riderFrames)
	}()
	// seen waits until the rider sees the ride in state want, printing
	// what the rider sees on the way.
	lastSeen := ""
	seen := func(want string) error {
		for {
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for the rider to see %s: %w", want, context.Cause(ctx))
			case f, ok := <-riderFrames:
				if !ok {
					return fmt.Errorf("the ride WebSocket closed before the ride was %s (last seen %s)", want, lastSeen)
				}
				switch f.Type {
				case "ride":
					if f.State != lastSeen {
						say("rider", "sees the ride %s%s", f.State, ifSet(" with driver ", f.Driver))
						lastSeen = f.State
					}
					if f.State == want {
						return nil
					}
					if isEnded(f.State) {
						return fmt.Errorf("the ride ended %s, not %s", f.State, want)
					}
				case "driver_position":
					say("rider", "sees driver %s at %s", f.Driver, latLng{f.Lat, f.Lng})
				case "error":
					say("rider", "watch error %s: %s", f.Code, f.Message)
				}
			}
		}
	}

	// The driver receives the offer and accepts it.
	offer, err := awaitDriver(ctx, driverFrames, func(f frame) bool { return f.Type == "offer" && f.Ride == ride.ID })
	if err != nil {
		return fmt.Errorf("waiting for the offer: %w", err)
	}
	say("driver", "offered ride %s, pickup %.0f s away", offer.Ride, offer.ETA)
	if err := act(ctx, drv, driverFrames, ride.ID, "accept"); err != nil {
		return err
	}
	say("driver", "accepts")
	if err := seen("accepted"); err != nil {
		return err
	}

	// To the pickup, then the trip steps, each sent on the driver's
	// WebSocket, acknowledged there and seen by the rider.
	step := func(action, state, status string) error {
		if err := act(ctx, drv, driverFrames, ride.ID, action); err != nil {
			return err
		}
		p, _ := vehicle.get()
		vehicle.set(p, status)
		say("driver", "sends %s", action)
		return seen(state)
	}
	say("driver", "drives to the pickup")
	drive(ctx, vehicle, c.pickup, "en_route", c.every)
	if err := step("arrived", "arrived", "en_route"); err != nil {
		return err
	}
	if err := step("start", "in_trip", "on_trip"); err != nil {
		return err
	}
	say("driver", "drives to the drop-off")
	drive(ctx, vehicle, c.dropoff, "on_trip", c.every)
	if err := step("complete", "completed", "available"); err != nil {
		return err
	}

	// The ride is over: the rider's WebSocket closes.
	for range riderFrames {
	}
	say("rider", "the ride's WebSocket closed: ride %s completed", ride.ID)
	return nil
}

// drive moves the car to dst in a few steps, one every every.
func drive(ctx context.Context, c *car, dst latLng, status string, every time.Duration) {
	const steps = 3
	from, _ := c.get()
	for i := 1; i <= steps; i++ {
		f := float64(i) / steps
		c.set(latLng{Lat: from.Lat + (dst.Lat-from.Lat)*f, Lng: from.Lng + (dst.Lng-from.Lng)*f}, status)
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// act sends a ride action on the driver's WebSocket and waits for its ack.
func act(ctx context.Context, conn *websocket.Conn, frames <-chan frame, ride, action string) error {
	b, _ := json.Marshal(map[string]string{"type": action, "ride": ride})
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("driver %s: %w", action, err)
	}
	if _, err := awaitDriver(ctx, frames, func(f frame) bool { return f.Type == "ack" && f.Action == action && f.Ride == ride }); err != nil {
		return fmt.Errorf("driver %s: %w", action, err)
	}
	return nil
}

// awaitDriver returns the first driver frame that satisfies ok; an error
// frame ends the wait.
func awaitDriver(ctx context.Context, frames <-chan frame, ok func(frame) bool) (frame, error) {
	for {
		select {
		case <-ctx.Done():
			return frame{}, context.Cause(ctx)
		case f, open := <-frames:
			switch {
			case !open:
				return frame{}, errors.New("the driver WebSocket closed")
			case f.Type == "error":
				return frame{}, fmt.Errorf("the engine answered %s: %s", f.Code, f.Message)
			case ok(f):
				return f, nil
			}
		}
	}
}

// readFrames decodes conn's frames into frames until the connection or
// ctx ends, then closes frames.
func readFrames(ctx context.Context, conn *websocket.Conn, frames chan<- frame) {
	defer close(frames)
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return
		}
		var f frame
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		select {
		case frames <- f:
		case <-ctx.Done():
			return
		}
	}
}

// streamPositions reports the car's position every every until ctx ends.
// seq grows with every report, as the API requires.
func streamPositions(ctx context.Context, conn *websocket.Conn, c *car, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		p, status := c.get()
		b, _ := json.Marshal(map[string]any{"type": "position", "lat": p.Lat, "lng": p.Lng, "status": status, "seq": seq})
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// call sends an authenticated JSON request and decodes a 2xx answer into
// v; other answers become an error carrying the engine's error body.
func (c config) call(ctx context.Context, method, path, token string, body []byte, v any, hdr ...string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp.StatusCode, json.Unmarshal(b, v)
}

// wsURL is the WebSocket URL of path on the engine.
func (c config) wsURL(path string) string {
	u := *c.base
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	return u.String() + path
}

func isEnded(state string) bool {
	switch state {
	case "completed", "cancelled_by_rider", "cancelled_by_driver", "no_driver", "expired":
		return true
	}
	return false
}

func ifSet(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}
