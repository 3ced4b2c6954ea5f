package main

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// A spread connection is bound with IP_BIND_ADDRESS_NO_PORT, and still
// gets a port of its own at connect.
func TestSpreadDialerBindsWithoutPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := newSpreadDialer(3 * ephemeralPorts())
	for range 4 {
		c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT) })
		if gerr != nil || v != 1 {
			t.Fatalf("IP_BIND_ADDRESS_NO_PORT = %d, %v; want 1", v, gerr)
		}
		if p := c.LocalAddr().(*net.TCPAddr).Port; p == 0 {
			t.Fatalf("local address %v has no port", c.LocalAddr())
		}
	}
}
