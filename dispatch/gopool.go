package dispatch

import (
	"sync"
	"time"
)

// goPool runs functions on goroutines that, once done, wait a while for
// the next function before they exit. A ride's search goes deep (the
// gather, the ranking, the Redis client, JSON) and a goroutine grows its
// stack by copying it, a few times over, on the way there; at hundreds of
// rides a second, a goroutine of its own for each search was that copying
// every time. A goroutine kept between searches keeps its stack.
type goPool struct {
	jobs chan func() // unbuffered: a send lands only on a waiting goroutine
	idle time.Duration
	done <-chan struct{} // closed at shutdown: the waiting goroutines exit
	wg   sync.WaitGroup
}

func newGoPool(idle time.Duration, done <-chan struct{}) *goPool {
	return &goPool{jobs: make(chan func()), idle: idle, done: done}
}

// run runs f on a waiting goroutine, or on a new one when none waits.
// It does not wait for f.
func (p *goPool) run(f func()) {
	select {
	case p.jobs <- f:
		return
	default:
	}
	p.wg.Add(1)
	go p.loop(f)
}

func (p *goPool) loop(f func()) {
	defer p.wg.Done()
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		f()
		f = nil // let the last job's closure go while this goroutine waits
		t.Reset(p.idle)
		select {
		case f = <-p.jobs:
		case <-t.C:
			return
		case <-p.done:
			return
		}
	}
}

// wait waits for the pool's goroutines to exit: call it after done is
// closed and after the last run.
func (p *goPool) wait() { p.wg.Wait() }
