package dispatch_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// readersRunning counts the goroutines inside the gateway's reader.
func readersRunning() int {
	buf := make([]byte, 8<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "dispatch.(*Drivers).reader(")
}

// Idle driver WebSockets park: no goroutine of the gateway waits on
// them. A frame wakes its connection, is handled, and the connection
// parks again; a client that hangs up while parked is noticed.
func TestDriverIdleConnectionsPark(t *testing.T) {
	g := newGateway(t, 1024, true)
	const n = 40
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c, _, err := dialDriver(t, g, g.token(t, fmt.Sprintf("d%d", i), dispatch.RoleDriver), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		conns[i] = c
	}
	waitFor(t, "every connection parked", func() bool { return g.drivers.Parked() == n })
	waitFor(t, "no reader goroutine", func() bool { return readersRunning() == 0 })

	for round := 1; round <= 3; round++ {
		for i, c := range conns {
			frame := fmt.Sprintf(`{"type":"position","lat":40.75,"lng":-73.98,"status":"available","seq":%d}`, round*1000+i)
			if err := c.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, fmt.Sprintf("round %d's positions", round), func() bool { return g.drivers.Stats().Positions == uint64(round*n) })
		waitFor(t, "every connection parked again", func() bool { return g.drivers.Parked() == n })
	}
	if st := g.drivers.Stats(); st.Rejected != 0 {
		t.Fatalf("rejected frames: %+v", st)
	}

	// Offers still reach parked drivers: writing needs no reader.
	if !g.drivers.Send("d3", map[string]any{"type": "offer", "ride": "r1"}) {
		t.Fatal("Send to a parked driver failed")
	}
	if _, b, err := conns[3].Read(ctx); err != nil || !strings.Contains(string(b), `"r1"`) {
		t.Fatalf("offer read %q, %v", b, err)
	}

	for _, c := range conns[:10] {
		c.CloseNow()
	}
	waitFor(t, "the hung-up connections gone", func() bool { return g.drivers.Connections() == n-10 })
	waitFor(t, "the rest parked", func() bool { return g.drivers.Parked() == n-10 })
}

// A keepalive pong wakes a parked connection only long enough to be
// read: the connection parks again and no reader goroutine waits for the
// driver's next frame.
func TestDriverPongParksAgain(t *testing.T) {
	g := newGateway(t, 1024, true, func(c *dispatch.DriversConfig) { c.PingEvery = 100 * time.Millisecond })
	pings := dialCountingPings(t, g, "d1", true)
	waitFor(t, "three pings answered", func() bool { return pings.Load() >= 3 })
	waitFor(t, "the connection parked with no reader", func() bool { return g.drivers.Parked() == 1 && readersRunning() == 0 })
	if !g.drivers.Connected("d1") {
		t.Fatal("a driver that answers pings was closed")
	}
}

// A frame that arrives in two parts: the first part wakes the
// connection, whose reader then waits for the rest.
func TestDriverParkedFrameInParts(t *testing.T) {
	g := newGateway(t, 1024, true)
	nc, req := rawDriverConn(t, g, "d1")
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := readUpgrade(t, nc)
	waitFor(t, "the connection parked", func() bool { return g.drivers.Parked() == 1 })

	frame := maskedTextFrame("not json")
	if _, err := nc.Write(frame[:3]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection woken", func() bool { return g.drivers.Parked() == 0 })
	if _, err := nc.Write(frame[3:]); err != nil {
		t.Fatal(err)
	}
	if op, body := readServerFrame(t, br); op != 0x81 || !strings.Contains(string(body), "invalid_json") {
		t.Fatalf("answer to a frame sent in parts: %#x %s", op, body)
	}
	waitFor(t, "the connection parked again", func() bool { return g.drivers.Parked() == 1 })
}
