package dispatch_test

import (
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
