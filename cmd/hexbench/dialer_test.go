package main

import (
	"context"
	"net"
	"strings"
	"testing"
)

func TestSpreadDialerRefusesOtherTargets(t *testing.T) {
	d := newSpreadDialer(1)
	for _, addr := range []string{"10.0.0.1:80", "192.168.1.1:80", "[::1]:80", "example.com:80", "nonsense"} {
		if c, err := d.DialContext(context.Background(), "tcp", addr); err == nil {
			c.Close()
			t.Errorf("dial %s: want refusal", addr)
		}
	}
}

func TestSpreadDialerSpreadsSourceAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := newSpreadDialer(3 * ephemeralPorts())
	if d.SourceAddrs() < 2 {
		t.Fatalf("%d source addresses for three ranges of connections", d.SourceAddrs())
	}
	seen := map[string]bool{}
	for range d.SourceAddrs() {
		c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		host, _, _ := net.SplitHostPort(s.RemoteAddr().String())
		if !strings.HasPrefix(host, "127.0.0.") {
			t.Errorf("source %s is not loopback", host)
		}
		seen[host] = true
		s.Close()
		c.Close()
	}
	if len(seen) != d.SourceAddrs() {
		t.Fatalf("sources %v, want %d distinct", seen, d.SourceAddrs())
	}
}
