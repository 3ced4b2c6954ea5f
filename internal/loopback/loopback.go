// Package loopback picks loopback ports for servers that tests and tools
// start, stop and start again on the same address.
package loopback

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// FreePort returns a 127.0.0.1 port nobody listened on a moment ago,
// below the kernel's ephemeral range when it can: a port from that range
// can become the local end of some other process's outgoing connection
// while a server on it is stopped, and starting the server again would
// then fail for as long as that connection lives.
func FreePort() (int, error) {
	lo := ephemeralLow()
	for i := 0; i < 50 && lo > minPort+1000; i++ {
		port := minPort + rand.IntN(lo-minPort)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	a, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("loopback: listener address is not TCP")
	}
	return a.Port, nil
}

// minPort is the lowest port FreePort picks: above the well-known and
// most registered service ports.
const minPort = 10000

// ephemeralLow is the first port of the kernel's ephemeral range (Linux;
// 32768, its usual value, elsewhere or when unreadable). When it leaves
// fewer than 1000 ports above minPort, FreePort lets the kernel choose.
func ephemeralLow() int {
	const def = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return def
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return def
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return def
	}
	return lo
}
