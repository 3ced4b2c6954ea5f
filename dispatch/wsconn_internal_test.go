package dispatch

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// wsPair returns the server side of a WebSocket over a loopback TCP
// connection (limit bytes a message) and the raw client socket, on which
// the test writes frames and reads the server's.
func wsPair(t testing.TB, limit int64) (*wsConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	return &wsConn{nc: srv, limit: limit, writeTimeout: 5 * time.Second}, cli
}

// clientFrame is one masked client frame.
func clientFrame(op ws.OpCode, fin bool, payload string) []byte {
	f := ws.NewFrame(op, fin, []byte(payload))
	f = ws.MaskFrameWith(f, [4]byte{1, 2, 3, 4})
	var b bytes.Buffer
	if err := ws.WriteFrame(&b, f); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// readFrame reads one server frame, which must not be masked.
func readFrame(t *testing.T, br *bufio.Reader) (ws.OpCode, []byte) {
	t.Helper()
	f, err := ws.ReadFrame(br)
	if err != nil {
		t.Fatalf("reading the server's frame: %v", err)
	}
	if f.Header.Masked || !f.Header.Fin {
		t.Fatalf("server frame %+v: masked or not final", f.Header)
	}
	return f.Header.OpCode, f.Payload
}

// writeAll writes the frames as the client, in one write.
func writeAll(t *testing.T, c net.Conn, frames ...[]byte) {
	t.Helper()
	if _, err := c.Write(bytes.Join(frames, nil)); err != nil {
		t.Fatal(err)
	}
}

// A message in three fragments with a ping between them comes out whole;
// the ping is answered with its payload; a lone pong returns no message,
// so that the connection can park.
func TestWSConnFragmentsAndControlFrames(t *testing.T) {
	c, cli := wsPair(t, 1024)
	br := bufio.NewReader(cli)
	writeAll(t, cli,
		clientFrame(ws.OpText, false, `{"type":`),
		clientFrame(ws.OpPing, true, "p1"),
		clientFrame(ws.OpContinuation, false, `"position",`),
		clientFrame(ws.OpContinuation, true, `"seq":1}`),
	)
	msg, err := c.next()
	if err != nil || string(msg) != `{"type":"position","seq":1}` {
		t.Fatalf("next = %q, %v", msg, err)
	}
	if op, p := readFrame(t, br); op != ws.OpPong || string(p) != "p1" {
		t.Fatalf("answer to the ping: %v %q", op, p)
	}
	before := c.heard.Load()
	writeAll(t, cli, clientFrame(ws.OpPong, true, ""))
	msg, err = c.next()
	if msg != nil || err != nil {
		t.Fatalf("next after a lone pong = %q, %v; want nil, nil", msg, err)
	}
	if c.buffered() || c.heard.Load() < before {
		t.Fatalf("after the pong: buffered %v, heard %d < %d", c.buffered(), c.heard.Load(), before)
	}
	c.release()
	if c.br != nil {
		t.Fatal("release kept the read buffer")
	}
	// An empty text message is a message, not the pong's nil.
	writeAll(t, cli, clientFrame(ws.OpText, true, ""))
	if msg, err := c.next(); msg == nil || len(msg) != 0 || err != nil {
		t.Fatalf("empty message: %q (nil %v), %v", msg, msg == nil, err)
	}
}

// Bytes the HTTP server read past the handshake are read before the
// socket, and count as buffered.
func TestWSConnPendingFirst(t *testing.T) {
	c, cli := wsPair(t, 1024)
	c.pending = clientFrame(ws.OpText, true, "first")
	if !c.buffered() {
		t.Fatal("pending bytes not buffered")
	}
	writeAll(t, cli, clientFrame(ws.OpText, true, "second"))
	for _, want := range []string{"first", "second"} {
		if msg, err := c.next(); err != nil || string(msg) != want {
			t.Fatalf("next = %q, %v; want %q", msg, err, want)
		}
	}
}

// Each violation is answered with a close frame naming the reason, with
// the code RFC 6455 gives it, and the socket is closed.
func TestWSConnRefusesViolations(t *testing.T) {
	unmasked := func(payload string) []byte {
		var b bytes.Buffer
		ws.WriteFrame(&b, ws.NewTextFrame([]byte(payload)))
		return b.Bytes()
	}
	for _, tc := range []struct {
		name  string
		bytes []byte
		code  ws.StatusCode
		says  string
	}{
		{"unmasked", unmasked("hi"), ws.StatusProtocolError, "masked"},
		{"reserved bits", func() []byte { b := clientFrame(ws.OpText, true, "hi"); b[0] |= 0x40; return b }(), ws.StatusProtocolError, "rsv"},
		{"reserved opcode", clientFrame(ws.OpCode(3), true, "hi"), ws.StatusProtocolError, "op code"},
		{"fragmented ping", clientFrame(ws.OpPing, false, ""), ws.StatusProtocolError, "control frame"},
		{"continuation first", clientFrame(ws.OpContinuation, true, "hi"), ws.StatusProtocolError, "continuation"},
		{"two messages interleaved", append(clientFrame(ws.OpText, false, "a"), clientFrame(ws.OpText, true, "b")...), ws.StatusProtocolError, "continuation"},
		{"too big", clientFrame(ws.OpText, true, strings.Repeat("x", 300)), ws.StatusMessageTooBig, "over 256 bytes"},
		{"too big in fragments", append(clientFrame(ws.OpText, false, strings.Repeat("x", 200)), clientFrame(ws.OpContinuation, true, strings.Repeat("x", 100))...), ws.StatusMessageTooBig, "over 256 bytes"},
		{"not UTF-8", clientFrame(ws.OpText, true, "\xff\xfe"), ws.StatusInvalidFramePayloadData, "UTF-8"},
		{"length that wraps", append(clientFrame(ws.OpText, false, "a"), wrapHeader()...), ws.StatusMessageTooBig, "over 256 bytes"},
		{"bad close code", clientFrame(ws.OpClose, true, "\x03\xed"), ws.StatusProtocolError, "status code"},
		{"close code 5000", clientFrame(ws.OpClose, true, "\x13\x88"), ws.StatusProtocolError, "5000"},
		{"close reason not UTF-8", clientFrame(ws.OpClose, true, "\x03\xe8\xff"), ws.StatusInvalidFramePayloadData, "utf8"},
		{"one-byte close", clientFrame(ws.OpClose, true, "x"), ws.StatusProtocolError, "one-byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, cli := wsPair(t, 256)
			writeAll(t, cli, tc.bytes)
			msg, err := c.next()
			if err == nil || msg != nil {
				t.Fatalf("next = %q, %v; want an error", msg, err)
			}
			br := bufio.NewReader(cli)
			op, p := readFrame(t, br)
			code, reason := ws.ParseCloseFrameData(p)
			if op != ws.OpClose || code != tc.code || !strings.Contains(reason, tc.says) {
				t.Fatalf("close frame %v %d %q; want %d naming %q", op, code, reason, tc.code, tc.says)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the close frame: %v, want EOF (socket closed)", err)
			}
		})
	}
}

// wrapHeader is a masked continuation frame's header that declares
// 2^63-1 bytes: added to a message's length it wraps.
func wrapHeader() []byte {
	return []byte{0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
}

// A close from the peer is answered with its code and ends the
// connection; nothing is written after a close frame.
func TestWSConnPeerCloses(t *testing.T) {
	c, cli := wsPair(t, 1024)
	writeAll(t, cli, clientFrame(ws.OpClose, true, string(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))))
	if _, err := c.next(); !errors.Is(err, errWSClosed) {
		t.Fatalf("next = %v, want errWSClosed", err)
	}
	br := bufio.NewReader(cli)
	op, p := readFrame(t, br)
	if code, _ := ws.ParseCloseFrameData(p); op != ws.OpClose || code != ws.StatusGoingAway {
		t.Fatalf("answer %v %d, want close 1001", op, code)
	}
	if err := c.write(ws.OpText, []byte("late")); !errors.Is(err, errWSClosed) {
		t.Fatalf("write after close = %v, want errWSClosed", err)
	}
}

// close sends the close frame; data the peer sent meanwhile is dropped,
// and its answer ends the reader. Without an answer, the read fails
// once wsCloseWait is over (not waited for here: the deadline is
// checked).
func TestWSConnCloseHandshake(t *testing.T) {
	c, cli := wsPair(t, 1024)
	c.close(ws.StatusGoingAway, "server shutting down")
	br := bufio.NewReader(cli)
	op, p := readFrame(t, br)
	if code, reason := ws.ParseCloseFrameData(p); op != ws.OpClose || code != ws.StatusGoingAway || reason != "server shutting down" {
		t.Fatalf("close frame %v %d %q", op, code, reason)
	}
	writeAll(t, cli, clientFrame(ws.OpText, true, "in flight"),
		clientFrame(ws.OpClose, true, string(ws.NewCloseFrameBody(ws.StatusGoingAway, ""))))
	if msg, err := c.next(); msg != nil || !errors.Is(err, errWSClosed) {
		t.Fatalf("next after close = %q, %v; want the in-flight message dropped and errWSClosed", msg, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the handshake: %v, want EOF (no second close frame, socket closed)", err)
	}
}

// A peer that never answers this side's close frame: the read fails
// once wsCloseWait is over, and the socket is closed.
func TestWSConnCloseWithoutAnswer(t *testing.T) {
	defer func(w time.Duration) { wsCloseWait = w }(wsCloseWait)
	wsCloseWait = 50 * time.Millisecond
	c, _ := wsPair(t, 1024)
	c.nc.SetReadDeadline(time.Time{}) // only close's deadline
	c.close(ws.StatusGoingAway, "bye")
	done := make(chan error, 1)
	go func() {
		_, err := c.next()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("next returned no error")
		}
		if derr := c.nc.SetReadDeadline(time.Time{}); !errors.Is(derr, net.ErrClosed) {
			t.Fatalf("socket still open after %v", err)
		}
	case <-time.After(10 * time.Second):
		c.closeNow()
		t.Fatal("the read did not end: close set no deadline")
	}
}

// Server frames use the shortest length encoding: 7 bits, 16 or 64.
func TestWSConnWriteLengths(t *testing.T) {
	c, cli := wsPair(t, 1024)
	br := bufio.NewReader(cli)
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		wrote := make(chan error, 1)
		go func() { wrote <- c.write(ws.OpText, bytes.Repeat([]byte{'a'}, n)) }()
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatal(err)
		}
		got, ext := int(hdr[1]), 0
		switch got {
		case 126:
			ext = 2
		case 127:
			ext = 8
		}
		if (n < 126) != (ext == 0) || (n >= 126 && n <= 65535) != (ext == 2) || (n > 65535) != (ext == 8) {
			t.Fatalf("%d bytes: length byte %d", n, got)
		}
		b := make([]byte, ext)
		io.ReadFull(br, b)
		switch ext {
		case 2:
			got = int(binary.BigEndian.Uint16(b))
		case 8:
			got = int(binary.BigEndian.Uint64(b))
		}
		if got != n || hdr[0] != 0x81 {
			t.Fatalf("%d bytes: header %#x, length %d", n, hdr[0], got)
		}
		if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
			t.Fatal(err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzWSConnNext reads arbitrary client bytes: next never panics, never
// returns a message over the limit, and an error leaves the socket
// closed.
func FuzzWSConnNext(f *testing.F) {
	f.Add(clientFrame(ws.OpText, true, `{"type":"position"}`))
	f.Add(append(clientFrame(ws.OpText, false, "ab"), clientFrame(ws.OpContinuation, true, "cd")...))
	f.Add(append(clientFrame(ws.OpPing, true, "x"), clientFrame(ws.OpClose, true, "\x03\xe8")...))
	f.Add([]byte{0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add(append(clientFrame(ws.OpText, false, "a"), wrapHeader()...))
	f.Add([]byte{0x81})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, cli := wsPair(t, 256)
		go io.Copy(io.Discard, cli) // the server's pongs and close frames
		c.pending = b
		cli.(*net.TCPConn).CloseWrite()
		for {
			msg, err := c.next()
			if err != nil {
				if derr := c.nc.SetReadDeadline(time.Time{}); !errors.Is(derr, net.ErrClosed) {
					t.Fatalf("after %v the socket is open (%v)", err, derr)
				}
				return
			}
			if int64(len(msg)) > c.limit {
				t.Fatalf("message of %d bytes over the limit %d", len(msg), c.limit)
			}
		}
	})
}
