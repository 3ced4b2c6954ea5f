package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindNoPort lets the kernel choose the source port at connect time, not
// at bind: a bind to port 0 must find a port free for every destination,
// a search through the whole ephemeral range that grows with the
// connections (and TIME_WAIT sockets) already on the source address. With
// tens of thousands of loopback connections open, the few hundred dials
// at the start of match-e2e's ride loop spent 2.75 of hexbench's 4.9 CPU
// seconds in bind, and the stalled load generator showed as multi-second
// offers. connect picks a port unique for its 4-tuple instead.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
