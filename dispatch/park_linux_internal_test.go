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
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tcpRaw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := p.arm(tcpRaw, id, true); err == nil || armFailed(err) {
		t.Errorf("arm on a closed connection: %v, armFailed %v; want an error that does not count", err, armFailed(err))
	}

	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	raw2, err := c2.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	p.stop()
	if err := p.arm(raw2, id, true); err == nil || armFailed(err) {
		t.Errorf("arm after stop: %v, armFailed %v; want an error that does not count", err, armFailed(err))
	}
	if armFailed(nil) {
		t.Error("armFailed(nil) = true")
	}
}
