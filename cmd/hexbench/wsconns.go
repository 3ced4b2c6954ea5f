package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

// ws-conns opens -drivers idle driver WebSockets to a real hexdispatch
// process (built from this module and started on loopback) and reports the
// server's memory per connection: the growth of its Go heap plus goroutine
// stacks, read from its own /metrics, divided by the connections.

func init() {
	register(Workload{Name: "ws-conns", Sized: true, Run: runWSConns})
}

const wsSecret = "hexbench-ws-secret-0123456789"

func runWSConns(ctx context.Context, env Env) ([]Result, error) {
	n := env.Drivers
	if err := raiseFileLimit(uint64(n) + 256); err != nil {
		return nil, fmt.Errorf("ws-conns: %d connections need more open files: %w", n, err)
	}
	bin, cleanup, err := buildEngine(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	rev := engineRevision(ctx) // the tree may move on while the run goes
	base, stop, err := startEngine(ctx, bin)
	if err != nil {
		return nil, err
	}
	defer stop()
	dialer := newSpreadDialer(n)
	dialOpts := &websocket.DialOptions{HTTPClient: dialer.httpClient(1)}
	before, err := engineMemory(base)
	if err != nil {
		return nil, err
	}
	signer, _ := dispatch.NewSigner([]byte(wsSecret))
	conns := make([]*websocket.Conn, n)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	jobs := make(chan int)
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				tok, _ := signer.Mint(dispatch.Claims{Subject: "d" + strconv.Itoa(i), Role: dispatch.RoleDriver, Expires: time.Now().Add(time.Hour)})
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				c, _, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/drivers/ws?access_token="+tok, dialOpts)
				cancel()
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("connection %d: %w", i, err))
					mu.Unlock()
					continue
				}
				c.CloseRead(ctx) // answer the server's pings
				conns[i] = c
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	dial := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	if firstErr != nil {
		return nil, firstErr
	}
	// Let the server settle, then read its memory.
	time.Sleep(time.Second)
	after, err := engineMemory(base)
	if err != nil {
		return nil, err
	}
	open, err := engineGauge(base, "hexd_gateway_websockets")
	if err != nil {
		return nil, err
	}
	if int(open) != n {
		return nil, fmt.Errorf("ws-conns: the engine reports %v open WebSockets, want %d", open, n)
	}
	return []Result{{
		System: "hexdispatch", Workload: "ws-conns", Drivers: n,
		BytesPerDriver: round(float64(after-before) / float64(n)),
		Seconds:        round(dial.Seconds()),
		Note: fmt.Sprintf("server heap + goroutine stacks per idle driver WebSocket; seconds = time to open them all from %d source addresses; engine %s",
			dialer.SourceAddrs(), rev),
	}}, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// raiseFileLimit lifts RLIMIT_NOFILE to at least n (the engine inherits it).
func raiseFileLimit(n uint64) error {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return err
	}
	if r.Cur >= n {
		return nil
	}
	r.Cur = n
	if r.Max < n {
		r.Max = n // allowed for root only
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}

// buildEngine builds cmd/hexdispatch of this module into a temp dir.
// Workloads that run the engine as its own process (ws-conns, match-e2e)
// share it and startEngine.
func buildEngine(ctx context.Context) (string, func(), error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", nil, fmt.Errorf("engine: run hexbench inside the hexdispatch module (go env GOMOD: %q, %v)", mod, err)
	}
	dir, err := os.MkdirTemp("", "hexbench-engine-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "hexdispatch")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/hexdispatch")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("engine: building: %w\n%s", err, b)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// engineRevision names the commit of the module hexbench builds the engine
// from ("-dirty" when tracked files had changes), so that a result says
// which engine it measured. Read from git, since builds here may run with
// -buildvcs=false.
func engineRevision(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "unknown"
	}
	rev, err := exec.CommandContext(ctx, "git", "-C", filepath.Dir(mod), "describe", "--always", "--dirty", "--abbrev=7").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(rev))
}

// startEngine runs the engine on a free loopback port and returns its base
// URL once it prints it. extra flags come after the defaults, so they win.
// The engine gets every core whatever GOMAXPROCS hexbench runs with: it is
// measured as it would be deployed.
func startEngine(ctx context.Context, bin string, extra ...string) (string, func(), error) {
	args := append([]string{"-addr", "127.0.0.1:0", "-token-secret", wsSecret, "-partitions", "4", "-log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	go io.Copy(io.Discard, stdout)
	i := strings.Index(line, "http://")
	if err != nil || i < 0 {
		stop()
		return "", nil, fmt.Errorf("engine: banner %q: %v", line, err)
	}
	base := strings.TrimSpace(line[i:])
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base, stop, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return "", nil, errors.New("engine: not ready in 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// engineMemory is the engine's Go heap in use plus goroutine stacks.
func engineMemory(base string) (float64, error) {
	heap, err := engineGauge(base, "go_memstats_heap_inuse_bytes")
	if err != nil {
		return 0, err
	}
	stack, err := engineGauge(base, "go_memstats_stack_inuse_bytes")
	return heap + stack, err
}

// engineGauge reads one unlabelled sample from the engine's /metrics.
func engineGauge(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("engine: %s not in the engine's /metrics", name)
}
