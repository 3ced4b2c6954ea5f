package dispatch

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// poolGoroutines counts the pool's goroutines alive, and those of them
// waiting for a job.
func poolGoroutines() (alive, waiting int) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "dispatch.(*goPool).loop") {
			continue
		}
		alive++
		if strings.Contains(g, "[select") {
			waiting++
		}
	}
	return alive, waiting
}

func TestGoPoolReusesWaitingGoroutines(t *testing.T) {
	done := make(chan struct{})
	p := newGoPool(time.Minute, done)
	var ran atomic.Int64
	// One job at a time: after the first, each finds the goroutine the
	// last one ran on waiting.
	for range 50 {
		finished := make(chan struct{})
		p.run(func() { ran.Add(1); close(finished) })
		<-finished
		waitFor(t, func() bool { _, w := poolGoroutines(); return w == 1 })
	}
	if got, _ := poolGoroutines(); got != 1 {
		t.Fatalf("%d pool goroutines after 50 jobs one at a time, want 1", got)
	}
	// Jobs that overlap each get a goroutine: none waits on another.
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 8 {
		wg.Add(1)
		p.run(func() { defer wg.Done(); <-release; ran.Add(1) })
	}
	waitFor(t, func() bool { n, _ := poolGoroutines(); return n == 8 })
	close(release)
	wg.Wait()
	close(done)
	p.wait()
	if got, _ := poolGoroutines(); got != 0 {
		t.Fatalf("%d pool goroutines after shutdown, want 0", got)
	}
	if got := ran.Load(); got != 58 {
		t.Fatalf("%d jobs ran, want 58", got)
	}
}

func TestGoPoolGoroutinesLeaveWhenIdle(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	p := newGoPool(20*time.Millisecond, done)
	finished := make(chan struct{})
	p.run(func() { close(finished) })
	<-finished
	waitFor(t, func() bool { n, _ := poolGoroutines(); return n == 0 })
	p.wait()
	// A job after the idle goroutine left still runs, on a new one.
	again := make(chan struct{})
	p.run(func() { close(again) })
	<-again
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
