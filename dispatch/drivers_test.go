package dispatch_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// gateway runs the driver gateway over a real Publisher on kfake.
type gateway struct {
	srv     *httptest.Server
	drivers *dispatch.Drivers
	signer  *dispatch.Signer
	brokers []string
}

// newGateway starts the gateway; edit, when given, changes its config.
func newGateway(t *testing.T, maxPending int, run bool, edit ...func(*dispatch.DriversConfig)) *gateway {
	t.Helper()
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, positions.DefaultTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	pcfg := positions.DefaultPublisherConfig()
	pcfg.Brokers = kc.ListenAddrs()
	pcfg.Partitioner.Partitions = 4
	pcfg.MaxPending = maxPending
	pcfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	pub, err := positions.NewPublisher(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if run { // a publisher that is not running keeps its buffer full
		go func() { done <- pub.Run(ctx) }()
	} else {
		close(done)
	}
	signer := newSigner(t)
	cfg := dispatch.DefaultDriversConfig()
	cfg.Sink, cfg.Signer = pub, signer
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, e := range edit {
		e(&cfg)
	}
	d, err := dispatch.NewDrivers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	d.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		d.Close()
		srv.Close()
		cancel()
		<-done
	})
	return &gateway{srv: srv, drivers: d, signer: signer, brokers: kc.ListenAddrs()}
}

func (g *gateway) token(t *testing.T, sub string, role dispatch.Role) string {
	t.Helper()
	tok, err := g.signer.Mint(dispatch.Claims{Subject: sub, Role: role, Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func post(t *testing.T, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDriverLocationOverHTTP(t *testing.T) {
	g := newGateway(t, 1024, true)
	d42 := g.token(t, "d42", dispatch.RoleDriver)
	url := g.srv.URL + "/v1/drivers/d42/location"
	tests := []struct {
		name, token, url, body string
		code                   int
		field                  string
	}{
		{"ok", d42, url, `{"lat":40.758,"lng":-73.9855,"status":"available","seq":1,"heading":90,"speed":8.5}`, 202, ""},
		{"no token", "", url, `{}`, 401, ""},
		{"other driver", g.token(t, "d7", dispatch.RoleDriver), url, `{"lat":1,"lng":1,"status":"available","seq":1}`, 403, ""},
		{"rider", g.token(t, "d42", dispatch.RoleRider), url, `{"lat":1,"lng":1,"status":"available","seq":1}`, 403, ""},
		{"missing lat", d42, url, `{"lng":1,"status":"available","seq":2}`, 400, "lat"},
		{"lng out of range", d42, url, `{"lat":1,"lng":181,"status":"available","seq":2}`, 400, "lng"},
		{"bad status", d42, url, `{"lat":1,"lng":1,"status":"napping","seq":2}`, 400, ""},
		{"no seq", d42, url, `{"lat":1,"lng":1,"status":"available"}`, 400, "seq"},
		{"bad heading", d42, url, `{"lat":1,"lng":1,"status":"available","seq":2,"heading":400}`, 400, "heading"},
		{"unknown field", d42, url, `{"lat":1,"lng":1,"status":"available","seq":2,"altitude":5}`, 400, "altitude"},
		{"huge body", d42, url, `{"lat":1,"pad":"` + strings.Repeat("x", 5000) + `"}`, 413, ""},
	}
	for _, tt := range tests {
		code, body := post(t, tt.url, tt.token, tt.body)
		if code != tt.code || (tt.field != "" && !strings.Contains(body, `"field":"`+tt.field+`"`)) {
			t.Errorf("%s: %d %s, want %d field %q", tt.name, code, body, tt.code, tt.field)
		}
	}
	// The good position reached Kafka, keyed by driver, in the shard's
	// partition.
	rec := consumeOne(t, g.brokers, positions.DefaultTopic)
	ev, err := positions.DecodeEvent(rec.Value)
	if err != nil || ev.Driver != "d42" || ev.Seq != 1 || ev.Status != positions.StatusAvailable || ev.Heading != 900 || ev.Speed != 850 {
		t.Fatalf("event %+v, %v", ev, err)
	}
	want, _, _ := positions.Partitioner{ShardRes: geo.DefaultShardRes, Partitions: 4}.ForPos(ev.Pos)
	if positions.Partition(rec.Partition) != want {
		t.Fatalf("partition %d, want %d", rec.Partition, want)
	}
}

func consumeOne(t *testing.T, brokers []string, topic string) *kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("no record before the deadline")
		}
		if recs := fs.Records(); len(recs) > 0 {
			return recs[0]
		}
	}
}

func TestDriverShedWhenOverloaded(t *testing.T) {
	g := newGateway(t, 2, false) // the publisher is not running: its two slots stay full
	d1 := g.token(t, "d1", dispatch.RoleDriver)
	d2 := g.token(t, "d2", dispatch.RoleDriver)
	d3 := g.token(t, "d3", dispatch.RoleDriver)
	if code, body := post(t, g.srv.URL+"/v1/drivers/d2/location", d2, `{"lat":2,"lng":2,"status":"available","seq":1}`); code != 202 {
		t.Fatalf("second slot: %d %s", code, body)
	}
	if code, body := post(t, g.srv.URL+"/v1/drivers/d1/location", d1, `{"lat":1,"lng":1,"status":"available","seq":1}`); code != 202 {
		t.Fatalf("first: %d %s", code, body)
	}
	// The same driver coalesces into its pending slot.
	if code, body := post(t, g.srv.URL+"/v1/drivers/d1/location", d1, `{"lat":1,"lng":1.001,"status":"available","seq":2}`); code != 202 {
		t.Fatalf("coalesced: %d %s", code, body)
	}
	req, _ := http.NewRequest("POST", g.srv.URL+"/v1/drivers/d3/location", strings.NewReader(`{"lat":1,"lng":1,"status":"available","seq":1}`))
	req.Header.Set("Authorization", "Bearer "+d3)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("overloaded: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if st := g.drivers.Stats(); st.Shed != 1 || st.Positions != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func dialDriver(t *testing.T, g *gateway, token string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if hdr == nil {
		hdr = http.Header{}
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/v1/drivers/ws", &websocket.DialOptions{HTTPHeader: hdr})
}

func TestDriverWebSocket(t *testing.T) {
	g := newGateway(t, 1024, true)
	tok := g.token(t, "d9", dispatch.RoleDriver)
	if _, resp, err := dialDriver(t, g, "", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("no token: %v %v", resp, err)
	}
	if _, resp, err := dialDriver(t, g, g.token(t, "u1", dispatch.RoleRider), nil); err == nil || resp.StatusCode != 403 {
		t.Fatalf("rider token: %v", err)
	}
	if _, resp, err := dialDriver(t, g, tok, http.Header{"Origin": {"https://evil.example"}}); err == nil || resp.StatusCode != 403 {
		t.Fatalf("foreign origin: %v", err)
	}
	c, _, err := dialDriver(t, g, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send := func(s string) {
		if err := c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	read := func() map[string]any {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		return m
	}
	send(`{"type":"position","lat":40.7,"lng":-73.9,"status":"available","seq":1}`)
	send(`{"type":"position","lat":95,"lng":-73.9,"status":"available","seq":2}`)
	if m := read(); m["type"] != "error" || m["field"] != "lat" {
		t.Fatalf("bad lat frame answered %v", m)
	}
	send(`{"type":"teleport"}`)
	if m := read(); m["field"] != "type" {
		t.Fatalf("unknown type answered %v", m)
	}
	send(`not json`)
	if m := read(); m["code"] != "invalid_json" {
		t.Fatalf("garbage answered %v", m)
	}
	// Messages down: an offer reaches the connected driver.
	deadline := time.Now().Add(5 * time.Second)
	for !g.drivers.Connected("d9") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !g.drivers.Send("d9", map[string]any{"type": "offer", "ride": "r1"}) {
		t.Fatal("Send to a connected driver failed")
	}
	if m := read(); m["type"] != "offer" || m["ride"] != "r1" {
		t.Fatalf("offer frame %v", m)
	}
	if g.drivers.Send("nobody", map[string]any{"type": "offer"}) {
		t.Fatal("Send to an absent driver succeeded")
	}
	// An oversized frame closes the connection (read limit), saying why.
	send(`{"type":"position","pad":"` + string(bytes.Repeat([]byte("x"), 5000)) + `"}`)
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("read after an oversized frame: %v, want StatusMessageTooBig", err)
	}
	ev, err := positions.DecodeEvent(consumeOne(t, g.brokers, positions.DefaultTopic).Value)
	if err != nil || ev.Driver != "d9" || ev.Seq != 1 {
		t.Fatalf("ws position %+v, %v", ev, err)
	}
}

// A request to the driver WebSocket that is not a valid handshake gets
// a JSON error naming the problem, before anything is upgraded.
func TestDriverWebSocketBadHandshake(t *testing.T) {
	g := newGateway(t, 1024, true)
	tok := g.token(t, "d1", dispatch.RoleDriver)
	upgrade := http.Header{}
	upgrade.Set("Connection", "Upgrade")
	upgrade.Set("Upgrade", "websocket")
	upgrade.Set("Sec-WebSocket-Version", "13")
	upgrade.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	for _, tc := range []struct {
		name   string
		edit   func(h http.Header)
		status int
		says   string
	}{
		{"plain GET", func(h http.Header) { h.Del("Connection"); h.Del("Upgrade") }, http.StatusUpgradeRequired, "Connection"},
		{"no websocket upgrade", func(h http.Header) { h.Set("Upgrade", "h2c") }, http.StatusUpgradeRequired, "Upgrade"},
		{"websocket among others", func(h http.Header) { h.Set("Upgrade", "websocket, h2c") }, http.StatusUpgradeRequired, "Upgrade"},
		{"version 8", func(h http.Header) { h.Set("Sec-WebSocket-Version", "8") }, http.StatusBadRequest, `"field":"Sec-WebSocket-Version"`},
		{"no key", func(h http.Header) { h.Del("Sec-WebSocket-Key") }, http.StatusBadRequest, `"field":"Sec-WebSocket-Key"`},
		{"short key", func(h http.Header) { h.Set("Sec-WebSocket-Key", "c2hvcnQ=") }, http.StatusBadRequest, `"field":"Sec-WebSocket-Key"`},
		{"foreign origin", func(h http.Header) { h.Set("Origin", "https://evil.example") }, http.StatusForbidden, "evil.example"},
		{"origin not a URL", func(h http.Header) { h.Set("Origin", "::") }, http.StatusForbidden, "not a URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", g.srv.URL+"/v1/drivers/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = upgrade.Clone()
			req.Header.Set("Authorization", "Bearer "+tok)
			tc.edit(req.Header)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(body), `"error"`) || !strings.Contains(string(body), tc.says) {
				t.Fatalf("%d %s; want %d naming %s", resp.StatusCode, body, tc.status, tc.says)
			}
		})
	}
	head, err := http.NewRequest("HEAD", g.srv.URL+"/v1/drivers/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	head.Header = upgrade.Clone()
	head.Header.Set("Authorization", "Bearer "+tok)
	if resp, err := http.DefaultClient.Do(head); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("HEAD handshake: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}
	if g.drivers.Connections() != 0 {
		t.Fatalf("%d connections from bad handshakes", g.drivers.Connections())
	}
	// An allowed origin pattern opens it; a malformed pattern is refused
	// at start.
	cfg := dispatch.DefaultDriversConfig()
	cfg.Sink, cfg.Signer, cfg.OriginPatterns = checkSink{t}, newSigner(t), []string{"[app.example"}
	if _, err := dispatch.NewDrivers(cfg); err == nil || !strings.Contains(err.Error(), "[app.example") {
		t.Fatalf("malformed origin pattern: %v", err)
	}
	g2 := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) { c.OriginPatterns = []string{"*.app.example"} })
	c, _, err := dialDriver(t, g2, g2.token(t, "d1", dispatch.RoleDriver), http.Header{"Origin": {"https://ops.app.example"}})
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	c.CloseNow()
}

// dialCountingPings connects driver sub with a client that reads (so
// sees the pings) until the test ends, answers them only if pong, and
// counts them.
func dialCountingPings(t *testing.T, g *gateway, sub string, pong bool) *atomic.Int64 {
	t.Helper()
	var pings atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.srv.URL, "http")+"/v1/drivers/ws", &websocket.DialOptions{
		HTTPHeader:     http.Header{"Authorization": {"Bearer " + g.token(t, sub, dispatch.RoleDriver)}},
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return pong },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	c.CloseRead(closeReads(t))
	return &pings
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closeReads returns the context for client connections' CloseRead; the
// test's end cancels it, which closes them. (A CloseNow while CloseRead
// runs waits 15 s for it.)
func closeReads(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// An idle connection costs the gateway at most one goroutine (its
// reader, where it cannot park; none on Linux, see park_linux_test.go):
// no writer, no ticker. ws-conns measures the memory this buys.
func TestDriverIdleConnectionsHoldOneGoroutine(t *testing.T) {
	g := newGateway(t, 1024, true)
	// The first connection starts the pinger; count from after it.
	first, _, err := dialDriver(t, g, g.token(t, "d0", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.CloseNow()
	waitFor(t, "the first connection", func() bool { return g.drivers.Connections() == 1 })
	// The client's goroutines are counted too: each connection's
	// CloseRead runs one.
	before := runtime.NumGoroutine()
	const n = 50
	ctx := closeReads(t)
	for i := 1; i <= n; i++ {
		c, _, err := dialDriver(t, g, g.token(t, fmt.Sprintf("d%d", i), dispatch.RoleDriver), nil)
		if err != nil {
			t.Fatal(err)
		}
		c.CloseRead(ctx)
	}
	waitFor(t, "every connection", func() bool { return g.drivers.Connections() == n+1 })
	// A message starts a writer that ends once it is written.
	if !g.drivers.Send("d1", map[string]any{"type": "offer", "ride": "r1"}) {
		t.Fatal("Send to a connected driver failed")
	}
	var per float64
	waitFor(t, "two goroutines per connection (server reader, client CloseRead)", func() bool {
		per = float64(runtime.NumGoroutine()-before) / n
		return per <= 2
	})
}

// Close ends every connection with StatusGoingAway, and a connection
// refused after it says why.
func TestDriverCloseSendsGoingAway(t *testing.T) {
	g := newGateway(t, 1024, true)
	c, _, err := dialDriver(t, g, g.token(t, "d1", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	waitFor(t, "the connection", func() bool { return g.drivers.Connected("d1") })
	read := make(chan error, 1)
	go func() {
		_, _, err := c.Read(context.Background())
		read <- err
	}()
	g.drivers.Close()
	if err := <-read; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("read after Close: %v, want StatusGoingAway", err)
	}
	if _, resp, err := dialDriver(t, g, g.token(t, "d2", dispatch.RoleDriver), nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after Close: %v", err)
	}
}

// A driver's newest connection wins: the older one is closed and Send
// reaches the newer.
func TestDriverNewestConnectionWins(t *testing.T) {
	g := newGateway(t, 1024, true)
	tok := g.token(t, "d1", dispatch.RoleDriver)
	old, _, err := dialDriver(t, g, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.CloseNow()
	waitFor(t, "the first connection", func() bool { return g.drivers.Connected("d1") })
	c, _, err := dialDriver(t, g, tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := old.Read(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("the older connection: %v", err)
	}
	waitFor(t, "one connection", func() bool { return g.drivers.Connections() == 1 })
	if !g.drivers.Send("d1", map[string]any{"type": "offer", "ride": "r1"}) {
		t.Fatal("Send failed")
	}
	if _, b, err := c.Read(ctx); err != nil || !strings.Contains(string(b), `"r1"`) {
		t.Fatalf("newer connection read %q, %v", b, err)
	}
}

// A client that reads (so keeps its socket open and sees the pings) but
// never answers one is closed.
func TestDriverKeepaliveClosesPongless(t *testing.T) {
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) { c.PingEvery = 50 * time.Millisecond })
	pings := dialCountingPings(t, g, "mute", false)
	waitFor(t, "the connection", func() bool { return g.drivers.Connected("mute") })
	waitFor(t, "the pongless driver closed", func() bool { return !g.drivers.Connected("mute") })
	if pings.Load() == 0 {
		t.Fatal("closed without a ping")
	}
}

// Keepalive: a client that answers pings stays connected over several
// ping periods; one that stops reading (so never answers) is closed.
func TestDriverKeepalive(t *testing.T) {
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) { c.PingEvery = 50 * time.Millisecond })
	live, _, err := dialDriver(t, g, g.token(t, "live", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	live.CloseRead(closeReads(t)) // reads, so answers pings
	deaf, _, err := dialDriver(t, g, g.token(t, "deaf", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.CloseNow()
	waitFor(t, "both connections", func() bool { return g.drivers.Connections() == 2 })
	waitFor(t, "the deaf driver closed", func() bool { return !g.drivers.Connected("deaf") })
	if !g.drivers.Connected("live") {
		t.Fatal("the driver that answers pings was closed")
	}
	if !g.drivers.Send("live", map[string]any{"type": "offer", "ride": "r1"}) {
		t.Fatal("Send to the live driver failed")
	}
}

// A driver that reports more often than PingEvery is not pinged: one that
// sends positions but never reads (so could not answer a ping) stays
// connected while it reports, and is closed once it falls silent.
func TestDriverReportingNeedsNoPing(t *testing.T) {
	const every = 200 * time.Millisecond
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) { c.PingEvery = every })
	talker, _, err := dialDriver(t, g, g.token(t, "talker", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer talker.CloseNow()
	waitFor(t, "the connection", func() bool { return g.drivers.Connected("talker") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for seq := 1; seq <= 40; seq++ { // 4 ping periods of reports every every/8
		frame := fmt.Sprintf(`{"type":"position","lat":40.75,"lng":-73.98,"status":"available","seq":%d}`, seq)
		if err := talker.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
			t.Fatalf("report %d: %v", seq, err)
		}
		if !g.drivers.Connected("talker") {
			t.Fatalf("closed after %d reports: a reporting driver was pinged", seq)
		}
		time.Sleep(every / 8)
	}
	waitFor(t, "the silent driver closed", func() bool { return !g.drivers.Connected("talker") })
}

// A driver that does not read: once the socket buffers are full its queue
// fills, further messages are dropped and counted, and WriteTimeout
// closes the connection.
func TestDriverSlowConsumerDropsAndCloses(t *testing.T) {
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) {
		c.SendQueue, c.WriteTimeout, c.PingEvery = 4, 300*time.Millisecond, time.Hour
	})
	c, _, err := dialDriver(t, g, g.token(t, "slow", dispatch.RoleDriver), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	waitFor(t, "the connection", func() bool { return g.drivers.Connected("slow") })
	big := map[string]any{"type": "offer", "pad": strings.Repeat("x", 64<<10)}
	deadline := time.Now().Add(20 * time.Second)
	for g.drivers.Connected("slow") {
		if time.Now().After(deadline) {
			t.Fatalf("a driver that does not read is still connected; %+v", g.drivers.Stats())
		}
		g.drivers.Send("slow", big)
		time.Sleep(time.Millisecond)
	}
	if st := g.drivers.Stats(); st.Dropped == 0 {
		t.Fatalf("nothing dropped for a driver that does not read: %+v", st)
	}
	if g.drivers.Send("slow", big) {
		t.Fatal("Send to a closed driver succeeded")
	}
}

// A frame the client sends in the same packet as its handshake reaches
// the gateway: the hijack keeps the bytes the HTTP server read ahead.
func TestDriverFrameRightAfterHandshake(t *testing.T) {
	g := newGateway(t, 1024, true)
	nc, req := rawDriverConn(t, g, "d1")
	if _, err := nc.Write(append([]byte(req), maskedTextFrame("not json")...)); err != nil {
		t.Fatal(err)
	}
	br := readUpgrade(t, nc)
	if op, body := readServerFrame(t, br); op != 0x81 || !strings.Contains(string(body), "invalid_json") {
		t.Fatalf("answer to a frame sent with the handshake: %#x %s", op, body)
	}
}

// rawDriverConn dials the gateway over plain TCP (10 s deadline) and
// returns the connection with the WebSocket upgrade request for driver
// sub, not yet sent: for tests that control the bytes on the wire.
func rawDriverConn(t *testing.T, g *gateway, sub string) (net.Conn, string) {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(g.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /v1/drivers/ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + g.token(t, sub, dispatch.RoleDriver) + "\r\n\r\n"
	return nc, req
}

// maskedTextFrame is one client text frame (payload under 126 bytes); a
// zero mask key leaves the payload as is.
func maskedTextFrame(payload string) []byte {
	return append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

// readUpgrade reads the gateway's answer to rawDriverConn's upgrade
// request, which must be 101, and returns the reader the frames follow in.
func readUpgrade(t *testing.T, nc net.Conn) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return br
}

// readServerFrame reads one unmasked server frame (payload under 64 KiB)
// and returns its first byte and its payload.
func readServerFrame(t *testing.T, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[1] & 0x7f)
	if n == 126 {
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			t.Fatal(err)
		}
		n = int(ext[0])<<8 | int(ext[1])
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	return hdr[0], body
}
