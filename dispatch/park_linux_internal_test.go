package dispatch

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
func dialRaw(t *testing.T, addr string) (net.Conn, syscall.RawConn) {
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
