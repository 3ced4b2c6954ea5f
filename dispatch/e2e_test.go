package dispatch_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

type engine struct {
	srv     *httptest.Server
	drivers *dispatch.Drivers
	signer  *dispatch.Signer
	store   *dispatch.RideStore
	disp    *dispatch.Dispatcher
	worker  *positions.Worker
	redis   *redistest.Server
}

// newEngine wires the whole ride path in one process: the driver gateway
// publishes to kfake, a worker indexes the partitions, the dispatcher
// gathers from the worker and reserves in a real Redis.
func newEngine(t *testing.T, offerTimeout time.Duration, tune ...func(*dispatch.DispatcherConfig)) *engine {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	const parts = 4
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(parts, positions.DefaultTopic),
		kfake.SeedTopics(1, positions.DefaultDLQTopic), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	pt := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: parts}

	pc := positions.DefaultPublisherConfig()
	pc.Brokers, pc.Partitioner, pc.Logger = kc.ListenAddrs(), pt, quiet
	pub, err := positions.NewPublisher(pc)
	if err != nil {
		t.Fatal(err)
	}
	wc := positions.DefaultWorkerConfig()
	wc.Brokers, wc.Logger = kc.ListenAddrs(), quiet
	wc.SessionTimeout, wc.HeartbeatInterval = time.Second, 100*time.Millisecond
	worker, err := positions.NewWorker(wc)
	if err != nil {
		t.Fatal(err)
	}

	rs := redistest.StartWith(t, redistest.Options{AppendOnly: true}) // survives the fault tests' restarts
	rdb := rs.Client(t)
	leases, err := matcher.NewLeases(rdb, matcher.DefaultLeaseConfig())
	if err != nil {
		t.Fatal(err)
	}
	gc := matcher.DefaultGatherConfig()
	gc.Partitioner = pt
	gc.Deadline = time.Second
	g, err := matcher.NewGatherer(matcher.LocalOwners{Querier: worker}, gc)
	if err != nil {
		t.Fatal(err)
	}
	store, err := dispatch.NewRideStore(rdb, dispatch.DefaultStoreConfig())
	if err != nil {
		t.Fatal(err)
	}
	signer := newSigner(t)
	dcfg := dispatch.DefaultDriversConfig()
	dcfg.Sink, dcfg.Signer, dcfg.Logger = pub, signer, quiet
	drivers, err := dispatch.NewDrivers(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	xc := dispatch.DefaultDispatcherConfig()
	gr := matcher.DefaultGreedyConfig()
	gr.OfferTTL = offerTimeout + time.Second
	greedy, err := matcher.NewGreedy(g, leases, gr)
	if err != nil {
		t.Fatal(err)
	}
	xc.Store, xc.Finder, xc.Leases, xc.Notifier, xc.Logger = store, greedy, leases, drivers, quiet
	xc.OfferTimeout, xc.RetryEvery, xc.SearchDeadline = offerTimeout, 50*time.Millisecond, 20*time.Second
	for _, f := range tune {
		f(&xc)
	}
	disp, err := dispatch.NewDispatcher(xc)
	if err != nil {
		t.Fatal(err)
	}
	rides, err := dispatch.NewRides(dispatch.RidesConfig{Store: store, Dispatcher: disp, Leases: leases, Signer: signer,
		Now: time.Now, Logger: quiet, Locator: drivers, WatchEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	drivers.Routes(mux)
	rides.Routes(mux)
	srv := httptest.NewServer(mux)

	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	go func() { errs <- pub.Run(ctx) }()
	go func() { errs <- worker.Run(ctx) }()
	t.Cleanup(func() {
		disp.Close()
		drivers.Close()
		srv.Close()
		cancel()
		for range 2 {
			if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("component stopped with %v", err)
			}
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !worker.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("worker not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &engine{srv: srv, drivers: drivers, signer: signer, store: store, disp: disp, worker: worker, redis: rs}
}

func (e *engine) tok(t *testing.T, sub string, role dispatch.Role) string {
	t.Helper()
	s, err := e.signer.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *engine) do(t *testing.T, method, path, token, body string, hdr ...string) (int, dispatch.RideView, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v dispatch.RideView
	json.Unmarshal(b, &v)
	return resp.StatusCode, v, string(b)
}

// waitState polls the ride until it reaches want.
func (e *engine) waitState(t *testing.T, id dispatch.RideID, want dispatch.State) dispatch.Ride {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := e.store.Get(context.Background(), id)
		if err == nil && r.State == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("ride %s is %v (%v), want %s", id, r.State, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRideLifecycleEndToEnd(t *testing.T) {
	e := newEngine(t, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Two drivers online over WebSocket; near is 300 m from the pickup,
	// far 1.5 km.
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	near, far := e.dialDriver(t, ctx, "near"), e.dialDriver(t, ctx, "far")
	ping := func(c *websocket.Conn, lat float64) {
		sendFrame(t, ctx, c, map[string]any{"type": "position", "lat": lat, "lng": pickup.Lng, "status": "available", "seq": time.Now().UnixNano()})
	}
	ping(near, pickup.Lat+300/111195.0)
	ping(far, pickup.Lat-1500/111195.0)

	rider := e.tok(t, "u1", dispatch.RoleRider)
	body := `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.6413,"lng":-73.7781}}`
	// Positions flow through Kafka to the worker asynchronously: retry the
	// request until the search has someone to offer to.
	code, ride, raw := e.do(t, "POST", "/v1/rides", rider, body, "Idempotency-Key", "k1", "Content-Type", "application/json")
	if code != http.StatusCreated || ride.State != dispatch.Requested {
		t.Fatalf("request: %d %s", code, raw)
	}
	// A retry with the same key is the same ride.
	if code, again, _ := e.do(t, "POST", "/v1/rides", rider, body, "Idempotency-Key", "k1"); code != http.StatusOK || again.ID != ride.ID {
		t.Fatalf("retry: %d %+v", code, again)
	}

	// The rider watches the ride live.
	watch, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/v1/rides/"+string(ride.ID)+"/ws?access_token="+rider, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.CloseNow()
	frames := make(chan map[string]any, 64)
	go func() {
		defer close(frames)
		for {
			_, b, err := watch.Read(ctx)
			if err != nil {
				return
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			frames <- m
		}
	}()
	// waitFrame reads the watch until a frame satisfies ok.
	waitFrame := func(what string, ok func(map[string]any) bool) {
		t.Helper()
		for f := range frames {
			if ok(f) {
				return
			}
		}
		t.Fatalf("rider watch closed before %s", what)
	}

	// The nearest driver gets the offer and declines; the next one gets it.
	readOffer := func(c *websocket.Conn) map[string]any {
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("waiting for an offer: %v", err)
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			if m["type"] == "offer" {
				return m
			}
		}
	}
	if m := readOffer(near); m["ride"] != string(ride.ID) {
		t.Fatalf("offer to near: %v", m)
	}
	// Another driver cannot answer it, or read the ride.
	if code, _, _ := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/accept", e.tok(t, "far", dispatch.RoleDriver), ""); code != http.StatusNotFound {
		t.Fatalf("accept by a driver not offered: %d", code)
	}
	if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/decline", e.tok(t, "near", dispatch.RoleDriver), ""); code != http.StatusAccepted {
		t.Fatalf("decline: %d %s", code, raw)
	}
	if m := readOffer(far); m["ride"] != string(ride.ID) {
		t.Fatalf("offer to far: %v", m)
	}
	farTok := e.tok(t, "far", dispatch.RoleDriver)
	if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/accept", farTok, ""); code != http.StatusAccepted {
		t.Fatalf("accept: %d %s", code, raw)
	}
	got := e.waitState(t, ride.ID, dispatch.Accepted)
	if got.Driver != "far" || got.Offers != 2 || got.Declines != 1 {
		t.Fatalf("accepted ride %+v", got)
	}
	// Skipping a step is refused; the steps in order are not.
	if code, _, _ := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/complete", farTok, ""); code != http.StatusConflict {
		t.Fatalf("complete before arriving: %d", code)
	}
	// The rider sees the acceptance, then the driver moving to the pickup.
	waitFrame("accepted", func(f map[string]any) bool { return f["type"] == "ride" && f["state"] == "accepted" })
	ping(far, pickup.Lat-500/111195.0)
	waitFrame("the driver's position", func(f map[string]any) bool {
		lat, _ := f["lat"].(float64)
		return f["type"] == "driver_position" && f["driver"] == "far" && lat > pickup.Lat-600/111195.0
	})
	for _, step := range []string{"arrived", "start", "complete"} {
		if code, _, raw := e.do(t, "POST", "/v1/rides/"+string(ride.ID)+"/"+step, farTok, ""); code != http.StatusOK {
			t.Fatalf("%s: %d %s", step, code, raw)
		}
	}
	// The watch sees the end, then closes.
	waitFrame("completed", func(f map[string]any) bool { return f["type"] == "ride" && f["state"] == "completed" })
	for range frames {
	}
	// The rider sees the end; another rider sees nothing; cancelling now is
	// illegal.
	if code, v, _ := e.do(t, "GET", "/v1/rides/"+string(ride.ID), rider, ""); code != 200 || v.State != dispatch.Completed || v.Driver != "far" {
		t.Fatalf("rider view: %d %+v", code, v)
	}
	if code, _, _ := e.do(t, "GET", "/v1/rides/"+string(ride.ID), e.tok(t, "u2", dispatch.RoleRider), ""); code != http.StatusNotFound {
		t.Fatalf("another rider: %d", code)
	}
	if code, _, _ := e.do(t, "DELETE", "/v1/rides/"+string(ride.ID), rider, ""); code != http.StatusConflict {
		t.Fatalf("cancel after completion: %d", code)
	}
}

func TestRideNoDriverAndCancel(t *testing.T) {
	e := newEngine(t, time.Second)
	rider := e.tok(t, "u9", dispatch.RoleRider)
	body := `{"pickup":{"lat":-33.8688,"lng":151.2093},"dropoff":{"lat":-33.8,"lng":151.2}}`
	code, ride, raw := e.do(t, "POST", "/v1/rides", rider, body)
	if code != http.StatusCreated {
		t.Fatalf("%d %s", code, raw)
	}
	// Nobody drives in Sydney here: the rider cancels while it searches.
	e.waitState(t, ride.ID, dispatch.Searching)
	if code, v, raw := e.do(t, "DELETE", "/v1/rides/"+string(ride.ID), rider, ""); code != 200 || v.State != dispatch.CancelledByRider {
		t.Fatalf("cancel: %d %s", code, raw)
	}
	for _, bad := range []struct{ body, field string }{
		{`{"dropoff":{"lat":1,"lng":1}}`, "pickup"},
		{`{"pickup":{"lat":1,"lng":1}}`, "dropoff"},
		{`{"pickup":{"lat":91,"lng":1},"dropoff":{"lat":1,"lng":1}}`, "pickup"},
		{`{"pickup":{"lat":"x","lng":1},"dropoff":{"lat":1,"lng":1}}`, "pickup.lat"},
	} {
		code, _, raw := e.do(t, "POST", "/v1/rides", rider, bad.body)
		if code != 400 || !strings.Contains(raw, `"field":"`+bad.field+`"`) {
			t.Errorf("%s: %d %s", bad.body, code, raw)
		}
	}
	if code, _, _ := e.do(t, "POST", "/v1/rides", e.tok(t, "d1", dispatch.RoleDriver), body); code != http.StatusForbidden {
		t.Errorf("driver requesting a ride: %d", code)
	}
}

// TestSweepEndsOrphanedSearches: rides whose search died with another
// process end as no_driver (or expired) instead of waiting forever.
func TestSweepEndsOrphanedSearches(t *testing.T) {
	e := newEngine(t, time.Second)
	ctx := context.Background()
	mk := func(id dispatch.RideID, evs ...dispatch.Event) {
		r, _ := dispatch.NewRide(id, "u1", pickup, dropoff, t0)
		if _, _, err := e.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if _, err := e.store.Apply(ctx, id, ev); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.store.TrackSearch(ctx, id, time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	mk("orphan-offered", dispatch.Event{Kind: dispatch.EvSearch}, dispatch.Event{Kind: dispatch.EvOffer, Driver: "d1"})
	mk("orphan-searching", dispatch.Event{Kind: dispatch.EvSearch})
	mk("orphan-requested")
	mk("done", dispatch.Event{Kind: dispatch.EvRiderCancel})
	// Not overdue yet: left alone.
	r, _ := dispatch.NewRide("young", "u1", pickup, dropoff, t0)
	e.store.Create(ctx, r)
	e.store.Apply(ctx, "young", dispatch.Event{Kind: dispatch.EvSearch})
	e.store.TrackSearch(ctx, "young", time.Now().Add(time.Hour))

	if n := e.disp.Sweep(ctx); n != 3 {
		t.Fatalf("swept %d rides, want 3", n)
	}
	for id, want := range map[dispatch.RideID]dispatch.State{
		"orphan-offered": dispatch.NoDriver, "orphan-searching": dispatch.NoDriver,
		"orphan-requested": dispatch.Expired, "done": dispatch.CancelledByRider, "young": dispatch.Searching,
	} {
		if got, _ := e.store.Get(ctx, id); got.State != want {
			t.Errorf("%s: %s, want %s", id, got.State, want)
		}
	}
	if left, _ := e.store.OverdueSearches(ctx, time.Now(), 100); len(left) != 0 {
		t.Fatalf("still tracked: %v", left)
	}
	if n := e.disp.Sweep(ctx); n != 0 {
		t.Fatalf("second sweep ended %d", n)
	}
}

// TestOfferTimeoutMovesOnAndCancelFreesTheDriver: an unanswered offer
// expires and the next driver gets it; a rider's cancel while offered tells
// the driver and frees them for the next ride.
func TestOfferTimeoutMovesOnAndCancelFreesTheDriver(t *testing.T) {
	e := newEngine(t, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pickup := geo.LatLng{Lat: 40.7580, Lng: -73.9855}
	frames := map[string]chan map[string]any{}
	dial := func(id string, lat float64) {
		c := e.dialDriver(t, ctx, id)
		ch := make(chan map[string]any, 16)
		frames[id] = ch
		go func() {
			defer close(ch)
			for {
				_, b, err := c.Read(ctx)
				if err != nil {
					return
				}
				var m map[string]any
				json.Unmarshal(b, &m)
				ch <- m
			}
		}()
		b, _ := json.Marshal(map[string]any{"type": "position", "lat": lat, "lng": pickup.Lng, "status": "available", "seq": 1})
		if err := c.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
	}
	dial("silent", pickup.Lat+200/111195.0)
	dial("second", pickup.Lat-900/111195.0)
	next := func(id, typ string) map[string]any {
		t.Helper()
		for m := range frames[id] {
			if m["type"] == typ {
				return m
			}
		}
		t.Fatalf("%s: no %s frame", id, typ)
		return nil
	}
	rider := e.tok(t, "u1", dispatch.RoleRider)
	body := `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7,"lng":-74.0}}`
	// Positions reach the worker through Kafka; the search retries until
	// it sees them.
	code, ride, raw := e.do(t, "POST", "/v1/rides", rider, body)
	if code != http.StatusCreated {
		t.Fatalf("%d %s", code, raw)
	}
	if m := next("silent", "offer"); m["ride"] != string(ride.ID) {
		t.Fatalf("first offer %v", m)
	}
	// silent never answers: after the 1 s offer timeout, second is offered.
	if m := next("silent", "offer_expired"); m["ride"] != string(ride.ID) {
		t.Fatalf("expiry %v", m)
	}
	if m := next("second", "offer"); m["ride"] != string(ride.ID) {
		t.Fatalf("second offer %v", m)
	}
	// The rider cancels while second's offer is out.
	if code, v, raw := e.do(t, "DELETE", "/v1/rides/"+string(ride.ID), rider, ""); code != 200 || v.State != dispatch.CancelledByRider {
		t.Fatalf("cancel: %d %s", code, raw)
	}
	if m := next("second", "offer_cancelled"); m["ride"] != string(ride.ID) {
		t.Fatalf("cancel notice %v", m)
	}
	got := e.waitState(t, ride.ID, dispatch.CancelledByRider)
	if got.Offers != 2 || got.Declines != 1 {
		t.Fatalf("ride %+v", got)
	}
	// second is free again: a new ride nearer to second is offered to it.
	code, r2, raw := e.do(t, "POST", "/v1/rides", e.tok(t, "u2", dispatch.RoleRider),
		`{"pickup":{"lat":`+strconv.FormatFloat(pickup.Lat-900/111195.0, 'f', 6, 64)+`,"lng":-73.9855},"dropoff":{"lat":40.7,"lng":-74.0}}`)
	if code != http.StatusCreated {
		t.Fatalf("%d %s", code, raw)
	}
	if m := next("second", "offer"); m["ride"] != string(r2.ID) {
		t.Fatalf("second's next offer %v", m)
	}
}

// TestRetryAfterBusyStartsTheSearch: a request the dispatcher cannot take
// (at capacity) gets 503, and the rider's retry with the same
// Idempotency-Key, once there is room, starts that ride's search instead
// of returning a dead ride.
func TestRetryAfterBusyStartsTheSearch(t *testing.T) {
	e := newEngine(t, time.Second, func(c *dispatch.DispatcherConfig) { c.MaxActive = 1 })
	body := `{"pickup":{"lat":-33.8688,"lng":151.2093},"dropoff":{"lat":-33.8,"lng":151.2}}` // nobody drives in Sydney
	first := e.tok(t, "u1", dispatch.RoleRider)
	code, r1, raw := e.do(t, "POST", "/v1/rides", first, body)
	if code != http.StatusCreated {
		t.Fatalf("first: %d %s", code, raw)
	}
	e.waitState(t, r1.ID, dispatch.Searching)
	second := e.tok(t, "u2", dispatch.RoleRider)
	code, _, raw = e.do(t, "POST", "/v1/rides", second, body, "Idempotency-Key", "k1")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("second at capacity: %d %s", code, raw)
	}
	if code, _, raw := e.do(t, "DELETE", "/v1/rides/"+string(r1.ID), first, ""); code != 200 {
		t.Fatalf("cancel: %d %s", code, raw)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, r2, raw := e.do(t, "POST", "/v1/rides", second, body, "Idempotency-Key", "k1")
		if code == http.StatusOK {
			e.waitState(t, r2.ID, dispatch.Searching)
			return
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("retry: %d %s", code, raw)
		}
		time.Sleep(50 * time.Millisecond) // the first search is still winding down
	}
}
