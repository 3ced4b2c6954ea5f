package dispatch_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestRateLimiterPerKey(t *testing.T) {
	c := &clock{t: t0}
	l, err := dispatch.NewRateLimiter(2, 3, 100, c.now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("burst call %d refused", i)
		}
	}
	ok, wait := l.Allow("a")
	if ok || wait <= 0 || wait > 500*time.Millisecond {
		t.Fatalf("4th call: %v, retry after %v", ok, wait)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("another key was limited by a's calls")
	}
	c.t = c.t.Add(500 * time.Millisecond) // refills one token at 2/s
	if ok, _ := l.Allow("a"); !ok {
		t.Fatal("refilled token refused")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("more than the refill allowed")
	}
}

func TestRateLimiterBoundsKeys(t *testing.T) {
	c := &clock{t: t0}
	l, _ := dispatch.NewRateLimiter(1, 1, 10, c.now)
	for i := range 1000 {
		l.Allow("k" + strconv.Itoa(i))
	}
	if l.Len() > 10 {
		t.Fatalf("%d keys held, bound is 10", l.Len())
	}
	// Fresh keys beyond the bound share the overflow bucket: a flood is
	// limited as one client.
	if ok, _ := l.Allow("fresh"); ok {
		t.Fatal("overflow bucket did not limit the flood")
	}
	// Once buckets go idle they are reclaimed.
	c.t = c.t.Add(2 * time.Second)
	if ok, _ := l.Allow("fresh2"); !ok {
		t.Fatal("idle buckets were not reclaimed")
	}
}

func TestRideEndpointsAreRateLimited(t *testing.T) {
	e := newEngine(t, time.Second)
	lim, _ := dispatch.NewRateLimiter(0.001, 3, 100, time.Now)
	rides, err := dispatch.NewRides(dispatch.RidesConfig{Store: e.store, Dispatcher: e.disp, Leases: nopLeases{},
		Signer: e.signer, Limiter: lim, Now: time.Now, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	rides.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tok := e.tok(t, "u1", dispatch.RoleRider)
	other := e.tok(t, "u2", dispatch.RoleRider)
	get := func(token string) *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/rides/nope", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 3 {
		if resp := get(tok); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("call %d: %d", i, resp.StatusCode)
		}
	}
	resp := get(tok)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the limit: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := get(other); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another client was limited: %d", resp.StatusCode)
	}
}

// TestRateLimiterDropsIdleBuckets: a steady stream of clients that each
// call once (riders asking for a ride) keeps about the keys of the last
// refill time, not every key up to the bound; a dropped key starts again
// with a full burst, as its idle bucket would have.
func TestRateLimiterDropsIdleBuckets(t *testing.T) {
	c := &clock{t: t0}
	l, err := dispatch.NewRateLimiter(5, 20, 100_000, c.now) // refill time 4 s
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if ok, _ := l.Allow("first"); !ok {
			t.Fatalf("burst call %d refused", i)
		}
	}
	most := 0
	for i := range 30_000 { // 500 new keys a second for a minute
		c.t = c.t.Add(2 * time.Millisecond)
		if ok, _ := l.Allow("k" + strconv.Itoa(i)); !ok {
			t.Fatalf("key %d refused its first call", i)
		}
		most = max(most, l.Len())
	}
	// 2,000 keys come within a refill time; a sweep runs when the map
	// has doubled since the last, so it holds up to about twice that.
	if most > 4_500 {
		t.Fatalf("the limiter held up to %d keys, want about the 2,000 of the last 4 s", most)
	}
	for i := range 20 {
		if ok, _ := l.Allow("first"); !ok {
			t.Fatalf("a key idle for a minute: burst call %d refused", i)
		}
	}
	if ok, _ := l.Allow("first"); ok {
		t.Fatal("more than the burst allowed after the key came back")
	}
}
