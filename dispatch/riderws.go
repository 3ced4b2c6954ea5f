package dispatch

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// DriverLocator tells where a driver was last seen; *Drivers implements it.
type DriverLocator interface {
	LastPosition(id positions.DriverID) (geo.LatLng, time.Time, bool)
}

// watch serves GET /v1/rides/{id}/ws: the ride's rider (or ops) gets a
// {"type":"ride", ...} frame at once and on every change, and while a
// driver is assigned {"type":"driver_position","lat","lng","at"} when the
// driver moves. The socket closes after the ride ends.
//
// It reads the ride store every WatchEvery, so it works whichever api
// process applied the change.
func (h *Rides) watch(w http.ResponseWriter, r *http.Request) {
	c, err := h.cfg.Signer.Verify(wsToken(r), h.cfg.Now())
	if err != nil {
		WriteError(w, &APIError{Status: http.StatusUnauthorized, Code: "invalid_token", Message: err.Error()})
		return
	}
	if h.cfg.Limiter != nil {
		if ok, wait := h.cfg.Limiter.Allow(string(c.Role) + ":" + c.Subject); !ok {
			WriteError(w, &APIError{Status: http.StatusTooManyRequests, Code: "rate_limited", Message: "too many requests", RetryAfter: wait})
			return
		}
	}
	id := RideID(r.PathValue("id"))
	if id == "" || len(id) > 64 {
		WriteError(w, BadField("id", "ride id must be 1 to 64 bytes"))
		return
	}
	ride, err := h.cfg.Store.Get(r.Context(), id)
	if err != nil {
		WriteError(w, storeError(err))
		return
	}
	if !(c.Role == RoleOps || (c.Role == RoleRider && string(ride.Rider) == c.Subject)) {
		WriteError(w, storeError(ErrRideNotFound))
		return
	}
	h.watchMu.Lock()
	if h.closed || (h.cfg.Closing != nil && h.cfg.Closing.Err() != nil) {
		h.watchMu.Unlock()
		WriteError(w, &APIError{Status: http.StatusServiceUnavailable, Code: "shutting_down", Message: "server is shutting down", RetryAfter: time.Second})
		return
	}
	h.watchers.Add(1)
	h.watchMu.Unlock()
	defer h.watchers.Done()
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: h.cfg.OriginPatterns})
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(512)
	ctx := conn.CloseRead(r.Context()) // riders send nothing; a close or error ends ctx
	// The socket lives no longer than the token that opened it.
	ctx, stopAtExpiry := context.WithDeadline(ctx, c.Expires)
	defer stopAtExpiry()
	if h.cfg.Closing != nil {
		var stop context.CancelFunc
		ctx, stop = context.WithCancel(ctx)
		defer stop()
		defer context.AfterFunc(h.cfg.Closing, stop)()
	}
	every := h.cfg.WatchEvery
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	send := func(v any) bool {
		b, _ := json.Marshal(v)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return conn.Write(wctx, websocket.MessageText, b) == nil
	}
	type rideFrame struct {
		Type string `json:"type"`
		RideView
	}
	var lastVersion uint64
	var lastSeen time.Time
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if ride.Version != lastVersion {
			if !send(rideFrame{Type: "ride", RideView: view(ride)}) {
				return
			}
			lastVersion = ride.Version
		}
		if ride.State.Terminal() {
			conn.Close(websocket.StatusNormalClosure, "ride ended")
			return
		}
		if h.cfg.Locator != nil && ride.Driver != "" && ride.State >= Accepted {
			if p, at, ok := h.cfg.Locator.LastPosition(ride.Driver); ok && at.After(lastSeen) {
				if !send(map[string]any{"type": "driver_position", "driver": ride.Driver, "lat": p.Lat, "lng": p.Lng, "at": at}) {
					return
				}
				lastSeen = at
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next, err := h.cfg.Store.Get(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				send(map[string]any{"type": "error", "code": "unavailable", "message": "ride store unavailable"})
			}
			continue
		}
		ride = next
	}
}
