package dispatch

import (
	"bufio"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// wsConn is the server side of one driver WebSocket (RFC 6455) on a
// hijacked connection, framed with gobwas/ws's codec. It is built for
// tens of thousands of connections that are idle nearly all their life:
// an idle one is this struct and its socket, nothing else. A read buffer
// comes from a pool while a reader runs and goes back before the
// connection parks; a write builds its frame and writes it with a
// deadline on the socket (no timer, context or goroutine); keepalive
// pongs are timed by the gateway's pinger from heard, so nothing waits
// for them. A WebSocket library's connection is some thirty heap
// objects, which every garbage collection marks: at 17,000 connections
// that was half of the engine's mark work, and the collector's mark
// phases are where the match tail comes from (issue 6).
//
// No extension is negotiated, so frames carry no reserved bits and are
// never compressed.
//
// Concurrency: one reader at a time calls next, buffered and release
// (the gateway's serve, handed from goroutine to goroutine through the
// parker with a happens-before edge each time). Writes come from any
// goroutine; writeMu serialises them, so a frame is never interleaved
// with another.
type wsConn struct {
	nc           net.Conn
	limit        int64         // bounds one message
	writeTimeout time.Duration // bounds one frame's write

	// pending is what the HTTP server read past the handshake: it is read
	// before the socket. The reader's alone.
	pending []byte
	br      *bufio.Reader // from wsReaders while a reader runs; nil when released
	hdr     [ws.MaxHeaderSize - 2]byte

	// heard is when the last frame, data or control, was read: wsClock's
	// monotonic nanoseconds, so that a step of the wall clock neither
	// ages nor freshens it.
	heard atomic.Int64

	writeMu   sync.Mutex
	closeSent atomic.Bool // a close frame went out: nothing else may follow it
}

// wsCloseWait is how long the peer has to answer this side's close frame
// before the socket is closed anyway (a variable for tests).
var wsCloseWait = 5 * time.Second

// wsReadBuffer sizes the pooled read buffers. A driver's frames are a few
// hundred bytes; bufio reads larger payloads straight into the message.
const wsReadBuffer = 4096

var wsReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, wsReadBuffer) }}

// wsClock is the base of heard: its monotonic reading is what heard counts from.
var wsClock = time.Now()

// wsNow is the time since wsClock, monotonic.
func wsNow() int64 { return int64(time.Since(wsClock)) }

// wsTime is the time a wsNow reading stands for, monotonic.
func wsTime(ns int64) time.Time { return wsClock.Add(time.Duration(ns)) }

// errWSClosed is returned once the connection is closed or closing.
var errWSClosed = errors.New("websocket closed")

// Read is the source of the read buffer: pending first, then the socket.
func (c *wsConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.nc.Read(p)
}

// buffered reports whether bytes of the peer wait in this process: a
// connection parks only when none do, or they would wait for the peer's
// next frame.
func (c *wsConn) buffered() bool {
	return len(c.pending) > 0 || (c.br != nil && c.br.Buffered() > 0)
}

// release gives the read buffer back to the pool; only when buffered is
// false, since what it holds is lost.
func (c *wsConn) release() {
	if c.br != nil {
		c.br.Reset(nil)
		wsReaders.Put(c.br)
		c.br = nil
	}
}

// next reads the next data message, answering pings and taking pongs on
// the way. When a control frame was the last thing buffered it returns
// (nil, nil), so that the caller can park the connection instead of
// blocking in a read. Any error leaves the socket closed; a protocol
// violation, an invalid text message or an oversized one is first
// answered with a close frame that says why (1002, 1007, 1009). Data
// that comes after this side's close frame is read and dropped while the
// peer's answer is awaited.
func (c *wsConn) next() ([]byte, error) {
	if c.br == nil {
		c.br = wsReaders.Get().(*bufio.Reader)
		c.br.Reset(c)
	}
	var (
		msg   []byte
		first ws.OpCode // of the message being read; ws.OpContinuation (0) when none
		state = ws.StateServerSide
	)
	for {
		h, err := ws.ReadHeaderBuffer(c.br, c.hdr[:])
		if err != nil {
			return nil, c.fail(err)
		}
		c.heard.Store(wsNow())
		if err := ws.CheckHeader(h, state); err != nil {
			return nil, c.failWith(ws.StatusProtocolError, err.Error())
		}
		if h.OpCode.IsControl() {
			if err := c.control(h); err != nil {
				return nil, err
			}
			if first == ws.OpContinuation && !c.buffered() {
				return nil, nil
			}
			continue
		}
		if h.Length > c.limit-int64(len(msg)) { // not len+Length: a 63-bit length would wrap
			return nil, c.failWith(ws.StatusMessageTooBig, fmt.Sprintf("message over %d bytes", c.limit))
		}
		if msg == nil {
			msg = make([]byte, 0, h.Length) // non-nil even when empty: nil means no message
		}
		start := len(msg)
		msg = slices.Grow(msg, int(h.Length))[:start+int(h.Length)]
		if _, err := io.ReadFull(c.br, msg[start:]); err != nil {
			return nil, c.fail(err)
		}
		ws.Cipher(msg[start:], h.Mask, 0)
		if first == ws.OpContinuation {
			first = h.OpCode
		}
		if !h.Fin {
			state = state.Set(ws.StateFragmented)
			continue
		}
		if first == ws.OpText && !utf8.Valid(msg) {
			return nil, c.failWith(ws.StatusInvalidFramePayloadData, "text message is not valid UTF-8")
		}
		if c.closeSent.Load() {
			msg, first, state = nil, ws.OpContinuation, ws.StateServerSide
			continue
		}
		return msg, nil
	}
}

// control handles one control frame: a ping is answered, a pong is only
// heard, a close is answered (unless this side closed first) and ends the
// connection.
func (c *wsConn) control(h ws.Header) error {
	p := make([]byte, h.Length) // at most 125 bytes (CheckHeader)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return c.fail(err)
	}
	ws.Cipher(p, h.Mask, 0)
	switch h.OpCode {
	case ws.OpPing:
		if err := c.write(ws.OpPong, p); err != nil && !errors.Is(err, errWSClosed) {
			return c.fail(err)
		}
		return nil
	case ws.OpPong:
		return nil
	}
	if len(p) == 1 {
		return c.failWith(ws.StatusProtocolError, "close frame with a one-byte payload")
	}
	code, reason := ws.ParseCloseFrameData(p)
	if len(p) > 0 {
		switch err := ws.CheckCloseFrameData(code, reason); {
		case errors.Is(err, ws.ErrProtocolInvalidUTF8):
			return c.failWith(ws.StatusInvalidFramePayloadData, err.Error())
		case err != nil:
			return c.failWith(ws.StatusProtocolError, err.Error())
		case code >= 5000:
			return c.failWith(ws.StatusProtocolError, fmt.Sprintf("close code %d is not a WebSocket code", code))
		}
	}
	var body []byte
	if len(p) > 0 {
		body = ws.NewCloseFrameBody(code, "")
	}
	_ = c.write(ws.OpClose, body) // the peer is going; nothing to do if it is gone already
	c.nc.Close()
	return fmt.Errorf("%w by the peer: %d %q", errWSClosed, code, reason)
}

// fail closes the socket and returns err.
func (c *wsConn) fail(err error) error {
	c.nc.Close()
	return err
}

// failWith tells the peer why in a close frame, then closes the socket.
func (c *wsConn) failWith(code ws.StatusCode, reason string) error {
	_ = c.write(ws.OpClose, ws.NewCloseFrameBody(code, reason))
	c.nc.Close()
	return fmt.Errorf("websocket: %s (closed with %d)", reason, code)
}

// write writes one frame, unmasked as a server's frames are, within
// writeTimeout. After a close frame nothing more is written (errWSClosed).
func (c *wsConn) write(op ws.OpCode, p []byte) error {
	n := len(p)
	b := make([]byte, 0, 10+n)
	b = append(b, 0x80|byte(op)) // FIN: the gateway never fragments
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
	b = append(b, p...)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.closeSent.Load() {
		return errWSClosed
	}
	if op == ws.OpClose {
		c.closeSent.Store(true)
	}
	err := c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	if err == nil {
		_, err = c.nc.Write(b)
	}
	if err != nil {
		// Part of the frame may be out: nothing may follow it.
		c.closeSent.Store(true)
	}
	return err
}

// close starts the closing handshake: it sends a close frame with code
// and reason and gives the peer wsCloseWait to answer, after which a read
// fails and closes the socket. A reader must run (or be resumed) to take
// the answer; where none will, call closeNow after.
func (c *wsConn) close(code ws.StatusCode, reason string) {
	if err := c.write(ws.OpClose, ws.NewCloseFrameBody(code, reason)); err != nil && !errors.Is(err, errWSClosed) {
		c.nc.Close()
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(wsCloseWait))
}

// closeNow closes the socket with no handshake; a read in progress fails.
func (c *wsConn) closeNow() { c.nc.Close() }

// checkUpgrade checks a WebSocket handshake request (RFC 6455 section
// 4.2.1) before anything is hijacked, so that a bad one gets the API's
// JSON error: 426 for a request that is not an upgrade, 400 for a bad
// version or key, 403 for a browser origin that is neither the API's own
// host nor one of patterns (path.Match host patterns, as
// coder/websocket's OriginPatterns, which the rider WebSocket uses).
func checkUpgrade(r *http.Request, patterns []string) error {
	upgrade := func(msg string) error {
		return &APIError{Status: http.StatusUpgradeRequired, Code: "upgrade_required", Message: msg}
	}
	// The rules are the upgrader's (gobwas/ws), which checks them again
	// after the hijack, where its answer would not be the API's JSON: GET
	// only, the first Connection header holds the upgrade token, and the
	// Upgrade header is websocket alone.
	switch {
	case r.Method != http.MethodGet:
		return &APIError{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: "a WebSocket handshake is a GET"}
	case !r.ProtoAtLeast(1, 1):
		return upgrade("a WebSocket handshake needs HTTP/1.1")
	case !hasToken(r.Header.Get("Connection"), "upgrade"):
		return upgrade("the Connection header must contain Upgrade")
	case !strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		return upgrade("the Upgrade header must be websocket")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return BadField("Sec-WebSocket-Version", "only WebSocket version 13 is supported, not %q", r.Header.Get("Sec-WebSocket-Version"))
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return BadField("Sec-WebSocket-Key", "want one Sec-WebSocket-Key header, not %d", len(keys))
	}
	if k, err := base64.StdEncoding.DecodeString(keys[0]); err != nil || len(k) != 16 {
		return BadField("Sec-WebSocket-Key", "Sec-WebSocket-Key must be 16 bytes in base64")
	}
	return checkOrigin(r, patterns)
}

// checkOrigin allows a request with no Origin (native apps), one from
// the API's own host, or one whose origin host matches a pattern (a
// pattern with "://" matches scheme://host).
func checkOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	forbidden := func(format string, a ...any) error {
		return &APIError{Status: http.StatusForbidden, Code: "forbidden_origin", Message: fmt.Sprintf(format, a...)}
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return forbidden("Origin %q is not a URL with a host", origin)
	}
	if strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return nil
		}
	}
	return forbidden("Origin %q may not open this WebSocket", u.Host)
}

// hasToken reports whether the comma-separated header value v holds
// token, case aside.
func hasToken(v, token string) bool {
	for t := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
