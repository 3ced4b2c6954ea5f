package main

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/internal/redistest"
)

// TestSplitRolesMatchARide runs the roles as separate processes: a
// devbroker, a real redis-server, two `-role worker` processes that publish
// their partitions in Redis and serve the query RPC, and one `-role api`
// process that finds them there. A driver online at the api gets the offer
// for a rider's request: the gather crossed processes.
func TestSplitRolesMatchARide(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs binaries")
	}
	rs := redistest.Start(t)
	dir := buildBinaries(t)
	const parts = 4
	broker := startProc(t, "devbroker", filepath.Join(dir, "devbroker"), "-ports", "0", "-partitions", strconv.Itoa(parts))
	kafka, ok := strings.CutPrefix(broker.first, "devbroker listening on ")
	if !ok {
		t.Fatalf("devbroker banner %q", broker.first)
	}
	common := []string{"-kafka", kafka, "-redis", rs.Addr, "-partitions", strconv.Itoa(parts), "-addr", "127.0.0.1:0",
		"-log-level", "warn", "-token-secret", testSecret}
	var workers []string
	for _, name := range []string{"worker1", "worker2"} {
		p := startProc(t, name, filepath.Join(dir, "hexdispatch"), append([]string{"-role", "worker"}, common...)...)
		workers = append(workers, p.first[strings.Index(p.first, "http://"):])
	}
	apiProc := startProc(t, "api", filepath.Join(dir, "hexdispatch"), append([]string{"-role", "api"}, common...)...)
	base := apiProc.first[strings.Index(apiProc.first, "http://"):]
	for _, w := range workers {
		waitReady(t, w, 30*time.Second)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+mintToken(t, "driver", "d1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	// A read whose context ends closes the WebSocket, so one reader feeds
	// the frames to the loop below.
	offers := make(chan string, 16)
	go func() {
		defer close(offers)
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			if m["type"] == "offer" {
				offers <- m["ride"].(string)
			}
		}
	}()
	rider := mintToken(t, "rider", "u1")
	// The position travels api -> Kafka -> a worker, and the worker's
	// ownership reaches Redis on its next heartbeat: request until offered.
	deadline := time.Now().Add(45 * time.Second)
request:
	for seq := 1; ; seq++ {
		b, _ := json.Marshal(map[string]any{"type": "position", "lat": 40.7590, "lng": -73.9845, "status": "available", "seq": seq})
		if err := c.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
		code, ride := call(t, "POST", base+"/v1/rides", rider, `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
		if code != http.StatusCreated {
			t.Fatalf("request: %d %v", code, ride)
		}
		wait := time.After(3 * time.Second)
	waiting:
		for {
			select {
			case id, ok := <-offers:
				if !ok {
					t.Fatal("driver WebSocket closed")
				}
				if id == ride["id"] {
					break request
				}
			case <-wait:
				break waiting
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no offer crossed the processes")
		}
		// Cancel the unmatched ride and try again.
		call(t, "DELETE", base+"/v1/rides/"+ride["id"].(string), rider, "")
	}

	// The api's heatmap sums the cell counts of both workers: drivers
	// across the city land in partitions each worker owns.
	spots := [][2]float64{{40.7580, -73.9855}, {40.6782, -73.9442}, {40.7282, -73.7949}, {40.8448, -73.8648},
		{40.5795, -74.1502}, {40.7769, -73.8740}, {40.6413, -73.7781}, {40.7061, -74.0087}}
	for i, p := range spots {
		id := "h" + strconv.Itoa(i)
		if code, v := call(t, "POST", base+"/v1/drivers/"+id+"/location", mintToken(t, "driver", id),
			`{"lat":`+strconv.FormatFloat(p[0], 'f', -1, 64)+`,"lng":`+strconv.FormatFloat(p[1], 'f', -1, 64)+`,"status":"available","seq":1}`); code != http.StatusAccepted {
			t.Fatalf("location %s: %d %v", id, code, v)
		}
	}
	ops := mintToken(t, "ops", "o1")
	want := float64(len(spots) + 1) // and d1
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, h := call(t, "GET", base+"/v1/ops/heatmap?layer=drivers&res=7", ops, "")
		total := 0.0
		cells, _ := h["cells"].([]any)
		for _, c := range cells {
			total += c.(map[string]any)["value"].(float64)
		}
		if code == http.StatusOK && total == want && h["partial"] == false {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("api heatmap: %d, %v drivers (want %v), partial %v", code, total, want, h["partial"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The api's alert panels read the workers' lag and dead letters from
	// their metrics (served on the query RPC listener the registry names).
	code, alerts := call(t, "GET", base+"/v1/ops/alerts", ops, "")
	lag, _ := alerts["lag"].([]any)
	var lagState any
	for _, a := range alerts["alerts"].([]any) {
		if a.(map[string]any)["name"] == "consumer_lag" {
			lagState = a.(map[string]any)["state"]
		}
	}
	if code != http.StatusOK || len(lag) != parts || lagState == "unknown" {
		t.Fatalf("api alerts without the workers' lag: %d %v", code, alerts)
	}
	for _, w := range workers {
		code, body := get(t, w+"/metrics")
		if code != http.StatusOK || sumMetric(body, "hexd_positions_drivers") < 1 {
			t.Fatalf("worker %s holds no driver: the heatmap did not need both workers", w)
		}
	}
}
