package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// spreadDialer dials loopback targets from several 127.0.0.x source
// addresses when one address's ephemeral ports cannot hold the
// connections a workload opens: a TCP connection is unique by its
// (source, destination) pair, so each source address brings its own
// ephemeral port range. It refuses any target outside 127.0.0.0/8: the
// benchmarks only ever talk to processes on this machine.
type spreadDialer struct {
	addrs int // source addresses 127.0.0.1 .. 127.0.0.<addrs>
	next  atomic.Uint64
}

// maxSourceAddrs bounds the spread to 127.0.0.1-127.0.0.254.
const maxSourceAddrs = 254

// newSpreadDialer returns a dialer for up to conns connections open at
// once to one loopback address.
func newSpreadDialer(conns int) *spreadDialer {
	// Use three quarters of the range per address: the rest is left for
	// TIME_WAIT sockets and whatever else dials from 127.0.0.1.
	per := max(1, ephemeralPorts()*3/4)
	return &spreadDialer{addrs: min(maxSourceAddrs, max(1, (conns+per-1)/per))}
}

// ephemeralPorts is the size of the kernel's ephemeral port range
// (Linux's default, 28,232 ports, when it cannot be read).
func ephemeralPorts() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.Atoi(f[0])
			hi, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && hi > lo {
				return hi - lo + 1
			}
		}
	}
	return 60999 - 32768 + 1
}

// DialContext dials addr, a loopback IPv4 host:port, from the next source
// address in turn.
func (d *spreadDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("hexbench: refusing to dial %q: only 127.0.0.0/8 targets", addr)
	}
	nd := net.Dialer{Timeout: 10 * time.Second}
	if d.addrs > 1 {
		i := d.next.Add(1) % uint64(d.addrs)
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
		nd.Control = bindNoPort
	}
	return nd.DialContext(ctx, network, addr)
}

// SourceAddrs reports how many source addresses the dialer spreads over.
func (d *spreadDialer) SourceAddrs() int { return d.addrs }

// httpClient returns a client whose connections come from d, keeping up
// to idle connections open for reuse.
func (d *spreadDialer) httpClient(idle int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     time.Minute,
	}, Timeout: 30 * time.Second}
}
