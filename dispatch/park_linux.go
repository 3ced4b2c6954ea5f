package dispatch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// Linux epoll flags, the same on every architecture.
const (
	epollOneShot = 0x40000000
	epollRDHup   = 0x2000
)

// parker watches the sockets of idle connections so that they need no
// goroutine while they wait. A driver's WebSocket is idle nearly all its
// life (a frame every few seconds), and a goroutine blocked in a read is a
// stack the garbage collector scans in every cycle. A parked connection
// is a one-shot entry in an epoll set of the parker's own (the runtime's
// netpoller keeps its own registration of the same socket, untouched);
// when the socket turns readable, or hangs up, the entry fires once and
// the parker runs the connection's resume.
//
// The epoll set's descriptor is itself registered with the runtime's
// netpoller (os.NewFile on a non-blocking descriptor), so the parker's
// goroutine waits like any network read, and drains the set with
// epoll_wait calls that never block: a goroutine blocked in epoll_wait
// would hold one of the process's Ps in a system call until sysmon took
// it back.
//
// Concurrency: one goroutine (run) drains the set; mu guards resumes and
// the descriptor's lifetime: stop sets resumes to nil under mu's write
// lock, and arm uses the descriptor under its read lock only while
// resumes is set, so the arms of many connections (an epoll_ctl each) do
// not queue on one Go mutex, nor behind run's lookups (the kernel still
// orders changes to one epoll set under its own lock). A connection's
// entry is armed through its syscall.RawConn, which holds the socket's
// descriptor open while epoll_ctl runs, so an entry is never armed on a
// descriptor that a closed connection gave back and a new one took. The
// kernel drops a descriptor's entry when the descriptor is closed.
type parker struct {
	epfd int
	ep   *os.File // epfd, registered with the runtime's netpoller
	raw  syscall.RawConn

	mu      sync.RWMutex
	resumes map[uint64]func() // by connection id; nil once stopped
	nextID  uint64
}

// newParker returns a parker, or an error where the kernel refuses an
// epoll set; the caller then keeps a goroutine per connection.
func newParker() (*parker, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("epoll set non-blocking: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "parker-epoll")
	raw, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil, fmt.Errorf("epoll set: %w", err)
	}
	return &parker{epfd: epfd, ep: ep, raw: raw, resumes: make(map[uint64]func())}, nil
}

// add registers resume for a connection and returns its id. resume runs
// (on the parker's goroutine: it must not block) each time an armed entry
// of the connection fires.
func (p *parker) add(resume func()) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextID++
	if p.resumes != nil {
		p.resumes[p.nextID] = resume
	}
	return p.nextID
}

// forget drops connection id: a late event for it is ignored.
func (p *parker) forget(id uint64) {
	p.mu.Lock()
	delete(p.resumes, id)
	p.mu.Unlock()
}

// arm watches the socket behind raw for connection id, once: the first
// readable byte, hang-up or error runs the connection's resume. first says
// the socket is not in the set yet. An error (the connection is closed, or
// the parker stopped) means nothing is armed.
func (p *parker) arm(raw syscall.RawConn, id uint64, first bool) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | epollRDHup | epollOneShot}
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	op := syscall.EPOLL_CTL_MOD
	if first {
		op = syscall.EPOLL_CTL_ADD
	}
	var ctlErr error
	err := raw.Control(func(fd uintptr) {
		p.mu.RLock()
		defer p.mu.RUnlock()
		if p.resumes == nil {
			ctlErr = errParkerStopped
			return
		}
		ctlErr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err != nil {
		return err
	}
	return ctlErr
}

var errParkerStopped = errors.New("parker stopped")

// armFailed reports whether err, from arm, is a failure to count: not the
// connection closed under it, nor the parker stopped.
func armFailed(err error) bool {
	return err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, errParkerStopped)
}

// run drains fired entries and runs their resumes until stop (it then
// returns nil) or an epoll_wait error.
func (p *parker) run() error {
	events := make([]syscall.EpollEvent, 256)
	var ready []func()
	var waitErr error
	err := p.raw.Read(func(fd uintptr) bool {
		for {
			n, err := syscall.EpollWait(int(fd), events, 0)
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case err != nil:
				waitErr = fmt.Errorf("epoll_wait: %w", err)
				return true
			case n == 0:
				return false // nothing fired: wait on the netpoller
			}
			p.mu.RLock()
			for _, ev := range events[:n] {
				if resume := p.resumes[uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32]; resume != nil {
					ready = append(ready, resume)
				}
			}
			p.mu.RUnlock()
			// Outside mu: a resume takes the connection's lock, which
			// arm's caller holds while it takes mu.
			for _, resume := range ready {
				resume()
			}
			clear(ready)
			ready = ready[:0]
		}
	})
	p.mu.RLock()
	stopped := p.resumes == nil
	p.mu.RUnlock()
	if stopped {
		return nil
	}
	if waitErr != nil {
		return waitErr
	}
	return err
}

// stop ends run and returns the resumes still registered, for the caller
// to run, so that no parked connection is left without a reader.
func (p *parker) stop() []func() {
	p.mu.Lock()
	left := make([]func(), 0, len(p.resumes))
	for _, resume := range p.resumes {
		left = append(left, resume)
	}
	p.resumes = nil
	p.mu.Unlock()
	// Outside mu: Close waits for run's callback to return, and the
	// callback takes mu's read lock. arm uses the descriptor only under
	// mu's read lock while resumes is set, so none does once it is nil.
	p.ep.Close()
	return left
}
