package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/hexdispatch/hexdispatch/positions"
)

// get returns the status and body of GET url.
func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample named name (with its labels,
// e.g. `hexd_positions_partitions{state="ready"}`) in a text exposition,
// and whether it was there.
func metric(body, name string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// sumMetric adds every sample of a metric family (all label values).
func sumMetric(body, family string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, family+"{") || strings.HasPrefix(line, family+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// waitReady polls /readyz until it answers 200.
func waitReady(t testing.TB, base string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		code, body := get(t, base+"/readyz")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz not 200 within %v: %d %s", base, d, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunAllIsReadyWithEmbeddedKafka(t *testing.T) {
	base := startRun(t, "-partitions", "4")
	waitReady(t, base, 30*time.Second)
	_, body := get(t, base+"/metrics")
	if v, ok := metric(body, `hexd_positions_partitions{state="ready"}`); !ok || v != 4 {
		t.Fatalf("ready partitions = %v (found %v), want 4", v, ok)
	}
	for _, name := range []string{"hexd_publisher_pending", "hexd_positions_records_total", "hexd_positions_ingest_latency_seconds_count"} {
		if _, ok := metric(body, name); !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

func TestRunWorkerAgainstExternalKafka(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	base := startRun(t, "-role", "worker", "-kafka", strings.Join(c.ListenAddrs(), ","), "-partitions", "3")
	waitReady(t, base, 30*time.Second)
	_, body := get(t, base+"/readyz")
	if !strings.Contains(body, "partition 2 ready") {
		t.Errorf("/readyz body %q: want every partition listed ready", body)
	}
	// The worker created the topic on the external cluster.
	if ti := c.TopicInfo(positions.DefaultTopic); ti == nil {
		t.Errorf("topic %s was not created", positions.DefaultTopic)
	}
}

func TestRunRejectsBadIngestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-partitions", "0"},
		{"-ttl", "0s"},
		{"-session-timeout", "1ms"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%v) = nil, want error", args)
		}
	}
}

// TestRunReadyzUnavailableUntilJoined points a worker at a broker whose
// minimum session timeout (Kafka's default 6 s) rejects the worker's 3 s:
// it never joins the group, so /readyz must keep answering 503.
func TestRunReadyzUnavailableUntilJoined(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, positions.DefaultTopic), kfake.SeedTopics(1, positions.DefaultDLQTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	base := startRun(t, "-role", "worker", "-kafka", strings.Join(c.ListenAddrs(), ","), "-partitions", "2", "-session-timeout", "3s")
	for range 3 {
		if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") {
			t.Fatalf("/readyz = %d %q, want 503 not ready", code, body)
		}
		time.Sleep(50 * time.Millisecond) // not synchronisation: samples a state that must not change
	}
}
