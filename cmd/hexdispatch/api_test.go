package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const testSecret = "test-secret-0123456789abcdef"

func mintToken(t *testing.T, role, sub string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"token", "-secret", testSecret, "-role", role, "-sub", sub}, &out, &errOut); err != nil {
		t.Fatalf("token: %v %s", err, errOut.String())
	}
	return strings.TrimSpace(out.String())
}

func call(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

// TestRunMatchesARide drives the real program, all roles in one process on
// embedded Kafka and Redis: a driver comes online over the WebSocket, a
// rider requests a ride, the driver gets the offer and accepts over the
// WebSocket, and the trip runs to completion (one step over the
// WebSocket, the others over HTTP).
func TestRunMatchesARide(t *testing.T) {
	base := startRun(t, "-token-secret", testSecret, "-partitions", "4")
	waitReady(t, base, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	driverTok := mintToken(t, "driver", "d1")
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+driverTok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	write := func(m map[string]any) {
		b, _ := json.Marshal(m)
		if err := c.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
	}
	write(map[string]any{"type": "position", "lat": 40.7590, "lng": -73.9845, "status": "available", "seq": 1})

	rider := mintToken(t, "rider", "u1")
	code, ride := call(t, "POST", base+"/v1/rides", rider, `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("request: %d %v", code, ride)
	}
	id := ride["id"].(string)
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for the offer: %v", err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		if m["type"] == "offer" && m["ride"] == id {
			break
		}
	}
	write(map[string]any{"type": "accept", "ride": id})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, v := call(t, "GET", base+"/v1/rides/"+id, rider, "")
		if v["state"] == "accepted" && v["driver"] == "d1" {
			if eta, _ := v["pickup_eta_s"].(float64); eta <= 0 {
				t.Fatalf("accepted ride without the offer's pickup ETA: %v", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ride never accepted: %v", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A refused frame's error names the action, the ride and the status
	// HTTP would answer; a taken one is acknowledged with the ride's state.
	next := func(typ string) map[string]any {
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("waiting for %s: %v", typ, err)
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			if m["type"] == typ && m["action"] != "accept" {
				return m
			}
		}
	}
	write(map[string]any{"type": "start", "ride": id})
	if m := next("error"); m["action"] != "start" || m["ride"] != id || m["status"] != float64(409) || m["code"] != "illegal_transition" {
		t.Fatalf("start before arrived answered %v", m)
	}
	write(map[string]any{"type": "arrived", "ride": id})
	if m := next("ack"); m["action"] != "arrived" || m["ride"] != id || m["state"] != "arrived" {
		t.Fatalf("arrived answered %v", m)
	}
	for _, step := range []string{"start", "complete"} {
		if code, v := call(t, "POST", base+"/v1/rides/"+id+"/"+step, driverTok, ""); code != 200 {
			t.Fatalf("%s: %d %v", step, code, v)
		}
	}
	_, v := call(t, "GET", base+"/v1/rides/"+id, rider, "")
	if v["state"] != "completed" {
		t.Fatalf("final ride %v", v)
	}
	code, body := get(t, base+"/metrics")
	if code != 200 || sumMetric(body, "hexd_dispatch_offers_total") < 2 || sumMetric(body, "hexd_gateway_positions_total") < 1 ||
		sumMetric(body, "hexd_match_latency_seconds_count") < 1 ||
		sumMetric(body, "hexd_match_phase_seconds_count") != 4*sumMetric(body, "hexd_match_latency_seconds_count") ||
		!strings.Contains(body, `hexd_match_phase_seconds_count{phase="record"} `) || !strings.Contains(body, `hexd_ride_transitions_total{state="completed"} 1`) ||
		!strings.Contains(body, `hexd_leases_total{result="committed"} 1`) ||
		!strings.Contains(body, `hexd_http_request_duration_seconds_count{code="201",method="POST",route="POST /v1/rides"} 1`) {
		t.Fatalf("metrics missing dispatch counters:\n%s", body)
	}
	ops := mintToken(t, "ops", "o1")
	if code, h := call(t, "GET", base+"/v1/ops/heatmap?layer=drivers", ops, ""); code != 200 || h["cells"] == nil {
		t.Fatalf("heatmap: %d %v", code, h)
	}
	// The ride's events reach the ops heatmap: one request and one match
	// at the pickup's cell, and the alert panels see the dispatcher.
	for _, layer := range []string{"demand", "matched", "eta"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, h := call(t, "GET", base+"/v1/ops/heatmap?layer="+layer, ops, "")
			cells, _ := h["cells"].([]any)
			if code == 200 && len(cells) == 1 && cells[0].(map[string]any)["value"].(float64) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s layer never showed the ride: %d %v", layer, code, h)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	code, alerts := call(t, "GET", base+"/v1/ops/alerts", ops, "")
	if code != 200 || alerts["match_p99_s"] == nil || len(alerts["lag"].([]any)) != 4 {
		t.Fatalf("alerts: %d %v", code, alerts)
	}
}

// TestRunBatchedPolicy runs the same ride with the batched policy as the
// default: the request waits for its region's window, then the driver gets
// the offer.
func TestRunBatchedPolicy(t *testing.T) {
	base := startRun(t, "-token-secret", testSecret, "-partitions", "2", "-policy", "batched", "-batch-window", "100ms")
	waitReady(t, base, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+mintToken(t, "driver", "d7"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	b, _ := json.Marshal(map[string]any{"type": "position", "lat": 40.7590, "lng": -73.9845, "status": "available", "seq": 1})
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
	code, ride := call(t, "POST", base+"/v1/rides", mintToken(t, "rider", "u7"), `{"pickup":{"lat":40.7580,"lng":-73.9855},"dropoff":{"lat":40.7061,"lng":-74.0087}}`)
	if code != http.StatusCreated {
		t.Fatalf("request: %d %v", code, ride)
	}
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for the offer: %v", err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		if m["type"] == "offer" && m["ride"] == ride["id"] {
			break
		}
	}
	_, body := get(t, base+"/metrics")
	if sumMetric(body, "hexd_batch_windows_total") < 1 {
		t.Fatalf("no batch window in the metrics:\n%s", body)
	}
	ops := mintToken(t, "ops", "o1")
	if code, p := call(t, "GET", base+"/v1/ops/policy", ops, ""); code != 200 || p["default"] != "batched" {
		t.Fatalf("policy: %d %v", code, p)
	}
	if code, p := call(t, "PUT", base+"/v1/ops/policy", ops, `{"policy":"greedy"}`); code != 200 || p["default"] != "greedy" {
		t.Fatalf("switch: %d %v", code, p)
	}
}

func TestTokenCommand(t *testing.T) {
	for _, args := range [][]string{
		{"token", "-secret", testSecret, "-role", "admin", "-sub", "x"},
		{"token", "-secret", testSecret, "-role", "driver"},
		{"token", "-secret", "short", "-role", "driver", "-sub", "d1"},
		{"token", "-secret", testSecret, "-role", "driver", "-sub", "d1", "-ttl", "0s"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%v) = nil, want error", args)
		}
	}
}
