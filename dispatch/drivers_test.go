package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
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

func newGateway(t *testing.T, maxPending int, run bool) *gateway {
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
	// An oversized frame closes the connection (read limit).
	send(`{"type":"position","pad":"` + string(bytes.Repeat([]byte("x"), 5000)) + `"}`)
	if _, _, err := c.Read(ctx); err == nil {
		t.Fatal("connection survived an oversized frame")
	}
	ev, err := positions.DecodeEvent(consumeOne(t, g.brokers, positions.DefaultTopic).Value)
	if err != nil || ev.Driver != "d9" || ev.Seq != 1 {
		t.Fatalf("ws position %+v, %v", ev, err)
	}
}
