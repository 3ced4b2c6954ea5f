package dispatch

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// arm's errors: a closed connection and a stopped parker are expected
// and not counted; an epoll error (here EPERM: a regular file cannot be
// watched) is a failure.
func TestParkerArmFailures(t *testing.T) {
	p, err := newParker()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "regular"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	id := p.add(func() {})
	err = p.arm(raw, id, true)
	if !errors.Is(err, syscall.EPERM) || !armFailed(err) {
		t.Errorf("arm on a regular file: %v, armFailed %v; want an epoll error that counts", err, armFailed(err))
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, tcpRaw := dialRaw(t, ln.Addr().String())
	c.Close()
	if err := p.arm(tcpRaw, id, true); err == nil || armFailed(err) {
		t.Errorf("arm on a closed connection: %v, armFailed %v; want an error that does not count", err, armFailed(err))
	}

	c2, raw2 := dialRaw(t, ln.Addr().String())
	defer c2.Close()
	p.stop()
	if err := p.arm(raw2, id, true); err == nil || armFailed(err) {
		t.Errorf("arm after stop: %v, armFailed %v; want an error that does not count", err, armFailed(err))
	}
	if armFailed(nil) {
		t.Error("armFailed(nil) = true")
	}
}

// dialRaw opens a TCP connection to addr and returns it with its raw
// descriptor access.
func dialRaw(t testing.TB, addr string) (net.Conn, syscall.RawConn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, raw
}

// stop while run is inside a resume: stop waits for that resume to
// return, hands back every connection still registered (the busy one
// too: its reader must be restarted by the caller), run returns nil, and
// nothing can be armed after.
func TestParkerStopWhileRunBusy(t *testing.T) {
	p, err := newParker()
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- p.run() }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const conns = 3
	clients := make([]net.Conn, conns)
	raws := make([]syscall.RawConn, conns)
	ids := make([]uint64, conns)
	busy, release := make(chan struct{}), make(chan struct{})
	resumed := make([]int, conns) // by index, only from run's goroutine (and after it ends)
	for i := range conns {
		c, _ := dialRaw(t, ln.Addr().String())
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		raw, err := s.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		clients[i], raws[i] = c, raw
		ids[i] = p.add(func() {
			resumed[i]++
			if i == 0 && resumed[i] == 1 {
				close(busy)
				<-release // run is busy here while stop is called
			}
		})
		if err := p.arm(raw, ids[i], true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := clients[0].Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-busy:
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection's resume did not run")
	}
	stopped := make(chan []func(), 1)
	go func() { stopped <- p.stop() }()
	// The other connections turn readable while run is busy: their
	// entries fire, but the parker is stopping and must not resume them.
	for _, c := range clients[1:] {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	// stop has dropped the resumes (it then waits in Close for run's
	// callback) and must still be waiting, as the busy resume has not
	// returned.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		p.mu.RLock()
		dropped := p.resumes == nil
		p.mu.RUnlock()
		if dropped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stop did not drop the resumes")
		}
	}
	select {
	case <-stopped:
		t.Fatal("stop returned while run was still inside a resume")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	var left []func()
	select {
	case left = <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return after the busy resume did")
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("run after stop: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after stop")
	}
	if resumed[0] != 1 || resumed[1] != 0 || resumed[2] != 0 {
		t.Fatalf("resumes ran %v times by connection, want [1 0 0]", resumed)
	}
	if len(left) != conns {
		t.Fatalf("stop handed back %d connections, want all %d", len(left), conns)
	}
	for _, resume := range left {
		resume()
	}
	if resumed[0] != 2 || resumed[1] != 1 || resumed[2] != 1 {
		t.Fatalf("after running what stop handed back: %v, want [2 1 1]", resumed)
	}
	if err := p.arm(raws[1], ids[1], false); !errors.Is(err, errParkerStopped) {
		t.Fatalf("arm after stop: %v, want errParkerStopped", err)
	}
}

// BenchmarkParkerArm re-arms parked sockets from parallel goroutines, as
// the readers of many WebSockets do after each frame.
func BenchmarkParkerArm(b *testing.B) {
	p, err := newParker()
	if err != nil {
		b.Fatal(err)
	}
	defer p.stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	const conns = 64
	type parked struct {
		raw syscall.RawConn
		id  uint64
	}
	next := make(chan parked, conns)
	for range conns {
		c, raw := dialRaw(b, ln.Addr().String())
		defer c.Close()
		id := p.add(func() {})
		if err := p.arm(raw, id, true); err != nil {
			b.Fatal(err)
		}
		next <- parked{raw, id}
	}
	b.RunParallel(func(pb *testing.PB) {
		c := <-next // one socket a goroutine, as one reader a connection
		defer func() { next <- c }()
		for pb.Next() {
			if err := p.arm(c.raw, c.id, false); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
