//go:build !linux

package main

import "syscall"

// bindNoPort is Linux's IP_BIND_ADDRESS_NO_PORT (dialer_linux.go); other
// systems bind as they do.
func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }
