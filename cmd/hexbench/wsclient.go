package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// ws-conns' clients run in child processes of hexbench, each holding up to
// the open-file limit's driver connections. A child is this binary started
// with wsClientEnv set to its wsClientSpec; it answers on stdout, one line
// per step, and takes the next step from a line on stdin:
//
//	-> dialed <source addresses>     (every connection is open)
//	<- positions  -> positioned      (every driver sent one position)
//	<- report     -> offers <JSON array of offer latencies in ns>
//	<- (stdin closed)                (close the connections and exit)
//
// Any failure is a line "error <message>" and the child exits.
const wsClientEnv = "HEXBENCH_WS_CLIENT"

func init() {
	// The child's main: it runs before hexbench's (or a test binary's)
	// and never returns to it.
	if spec := os.Getenv(wsClientEnv); spec != "" {
		os.Exit(wsClientMain(spec, os.Stdin, os.Stdout, os.Stderr))
	}
}

// wsClientSpec is one child's share: drivers From..To-1, driver i
// connected to Bases[i % len(Bases)] and placed in that api process's
// band of the city.
type wsClientSpec struct {
	Bases        []string
	From, To     int
	Secret       string
	OfferTimeout time.Duration // the engine's: an offer was sent at its expires_at less this
	Seed         uint64
}

// wsClientProc is a started child.
type wsClientProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startWSClient(ctx context.Context, spec wsClientSpec) (*wsClientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(spec)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), wsClientEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("ws-conns: client process: %w", err)
	}
	c := &wsClientProc{cmd: cmd, in: in, lines: make(chan string, 4)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 1<<20), 256<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c, nil
}

// send writes one command line to the child.
func (c *wsClientProc) send(cmd string) { fmt.Fprintln(c.in, cmd) }

// await returns the rest of the child's next line, which must start with
// word.
func (c *wsClientProc) await(ctx context.Context, word string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("ws-conns: a client process exited before %q", word)
		}
		if msg, ok := strings.CutPrefix(line, "error "); ok {
			return "", fmt.Errorf("ws-conns: client: %s", msg)
		}
		rest, ok := strings.CutPrefix(line, word)
		if !ok {
			return "", fmt.Errorf("ws-conns: client said %.200q, want %q", line, word)
		}
		return strings.TrimSpace(rest), nil
	case <-t.C:
		return "", fmt.Errorf("ws-conns: no %q from a client process in %v", word, timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// stop closes the child's stdin, which closes its connections, and waits
// for it.
func (c *wsClientProc) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() {
		for range c.lines {
		}
		c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// wsClientMain is the child: it returns the exit code.
func wsClientMain(specJSON string, stdin io.Reader, stdout, stderr io.Writer) int {
	var spec wsClientSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil || len(spec.Bases) == 0 || spec.To <= spec.From {
		fmt.Fprintf(stdout, "error bad %s: %v\n", wsClientEnv, err)
		return 2
	}
	c := &wsClient{spec: spec, errs: stderr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.dial(ctx); err != nil {
		fmt.Fprintf(stdout, "error %v\n", err)
		c.close(cancel)
		return 1
	}
	fmt.Fprintf(stdout, "dialed %d\n", c.srcAddrs)
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "positions":
			if err := c.positions(ctx); err != nil {
				fmt.Fprintf(stdout, "error %v\n", err)
				c.close(cancel)
				return 1
			}
			fmt.Fprintln(stdout, "positioned")
		case "report":
			c.mu.Lock()
			b, _ := json.Marshal(c.latencies)
			c.mu.Unlock()
			fmt.Fprintf(stdout, "offers %s\n", b)
		}
	}
	c.close(cancel)
	return 0
}

// wsClient holds one child's driver connections.
type wsClient struct {
	spec     wsClientSpec
	errs     io.Writer
	conns    []*websocket.Conn
	readers  sync.WaitGroup
	srcAddrs int

	mu         sync.Mutex
	latencies  []int64 // ns from the engine's send to receipt, one per offer
	errFrames  int
	firstError string
}

func (c *wsClient) id(i int) string { return "d" + strconv.Itoa(i) }

// dial opens every connection, 64 at a time, and starts its reader.
func (c *wsClient) dial(ctx context.Context) error {
	n := c.spec.To - c.spec.From
	d := newSpreadDialer(n)
	// Spread wider than the ephemeral ports need: other processes on this
	// machine dial from 127.0.0.1 too.
	d.addrs = max(d.addrs, min(maxSourceAddrs, (n+1999)/2000))
	c.srcAddrs = d.SourceAddrs()
	opts := &websocket.DialOptions{HTTPClient: d.httpClient(1)}
	signer, err := dispatch.NewSigner([]byte(c.spec.Secret))
	if err != nil {
		return err
	}
	c.conns = make([]*websocket.Conn, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range jobs {
				i := c.spec.From + k
				tok, _ := signer.Mint(dispatch.Claims{Subject: c.id(i), Role: dispatch.RoleDriver, Expires: time.Now().Add(time.Hour)})
				base := c.spec.Bases[i%len(c.spec.Bases)]
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				conn, _, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+tok, opts)
				cancel()
				if err != nil {
					errMu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("connection %d: %w", i, err))
					errMu.Unlock()
					continue
				}
				c.conns[k] = conn
				c.readers.Add(1)
				go c.read(ctx, conn)
			}
		}()
	}
	for k := range n {
		jobs <- k
	}
	close(jobs)
	wg.Wait()
	return firstErr
}

// offerFrame is the part of an offer the client reads.
type offerFrame struct {
	Type      string    `json:"type"`
	ExpiresAt time.Time `json:"expires_at"`
}

// read takes one connection's messages (which also answers the engine's
// pings) and times the offers.
func (c *wsClient) read(ctx context.Context, conn *websocket.Conn) {
	defer c.readers.Done()
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		switch {
		case bytes.Contains(b, []byte(`"type":"offer"`)):
			var f offerFrame
			if json.Unmarshal(b, &f) == nil && !f.ExpiresAt.IsZero() {
				c.mu.Lock()
				c.latencies = append(c.latencies, int64(now.Sub(f.ExpiresAt.Add(-c.spec.OfferTimeout))))
				c.mu.Unlock()
			}
		case bytes.Contains(b, []byte(`"type":"error"`)):
			c.mu.Lock()
			c.errFrames++
			if c.firstError == "" {
				c.firstError = string(b)
			}
			c.mu.Unlock()
		}
	}
}

// positions sends one position per driver, in its api process's band.
func (c *wsClient) positions(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(c.spec.Seed, 0x706f73))
	frames := make([][]byte, len(c.conns))
	for k := range c.conns {
		i := c.spec.From + k
		lat, lng := wsBand(rng, i%len(c.spec.Bases), len(c.spec.Bases), false)
		frames[k], _ = json.Marshal(map[string]any{"type": "position", "lat": lat, "lng": lng, "status": "available", "seq": 1})
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Map
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range jobs {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := c.conns[k].Write(wctx, websocket.MessageText, frames[k]); err != nil {
					failed.Store(k, err)
				}
				cancel()
			}
		}()
	}
	for k := range c.conns {
		jobs <- k
	}
	close(jobs)
	wg.Wait()
	var err error
	failed.Range(func(k, v any) bool {
		err = fmt.Errorf("position of connection %d: %w", k, v.(error))
		return false
	})
	return err
}

// close ends every connection and waits for the readers.
func (c *wsClient) close(cancel context.CancelFunc) {
	cancel()
	for _, conn := range c.conns {
		if conn != nil {
			conn.CloseNow()
		}
	}
	c.readers.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.errFrames > 0 {
		fmt.Fprintf(c.errs, "hexbench: ws-conns client: %d error frames from the engine, the first: %s\n", c.errFrames, c.firstError)
	}
}
