package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/loopback"
)

// proc is one child process of the soak. Its stdout after the first line
// and its stderr go to a log file in the run's log directory.
//
// Concurrency: kill, pause and resume may be called from any goroutine;
// the process is reaped by its own goroutine, which closes done.
type proc struct {
	name  string
	cmd   *exec.Cmd
	first string // the first stdout line (the banner), when waited for
	log   *os.File
	done  chan struct{} // closed when the process has exited and been reaped
}

// startProc starts bin with args. When banner is true it waits (up to
// 30 s) for the first stdout line, which every hexdispatch binary prints
// once it listens. The caller must kill the process (procs.closeAll does).
func startProc(ctx context.Context, logDir, name, bin string, banner bool, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "--- %s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	setDeathSignal(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logf, done: make(chan struct{})}
	lines := make(chan string, 1)
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		br := bufio.NewReader(stdout)
		line, _ := br.ReadString('\n')
		lines <- strings.TrimSpace(line)
		io.Copy(logf, br)
	}()
	go func() {
		copied.Wait() // Wait closes stdout: read it to the end first
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	if !banner {
		return p, nil
	}
	select {
	case p.first = <-lines:
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, fmt.Errorf("%s printed nothing in 30 s (see %s.log)", name, filepath.Join(logDir, name))
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
	if p.first == "" {
		<-p.done
		return nil, fmt.Errorf("%s exited at start (see %s.log)", name, filepath.Join(logDir, name))
	}
	return p, nil
}

// kill sends SIGKILL (which also ends a stopped process) and waits until
// the process is reaped. Killing a dead process does nothing.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// pause stops the process (SIGSTOP): its sockets stay open and silent.
func (p *proc) pause() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

// resume continues a paused process (SIGCONT).
func (p *proc) resume() error { return p.cmd.Process.Signal(syscall.SIGCONT) }

// alive reports whether the process has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// procs is every child process started, so that all of them are killed
// and reaped on the way out, whatever the path.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

func (ps *procs) add(p *proc) *proc {
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p
}

// closeAll kills and reaps every process, newest first (the api before the
// workers before the broker and Redis).
func (ps *procs) closeAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].kill()
	}
}

// redisServer is a redis-server on a fixed loopback port with the
// append-only file on (fsync per write): Stop and Start keep the port and
// the data, as a production Redis holding leases and rides is run.
type redisServer struct {
	bin, dir, logDir string
	addr             string
	all              *procs

	mu  sync.Mutex
	cur *proc // nil while stopped
}

func newRedisServer(bin, dir, logDir string, all *procs) (*redisServer, error) {
	port, err := loopback.FreePort()
	if err != nil {
		return nil, err
	}
	return &redisServer{bin: bin, dir: dir, logDir: logDir, all: all, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}, nil
}

// start launches the server and waits until it answers PING (up to 10 s,
// retrying while the old socket lingers).
func (r *redisServer) start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil && r.cur.alive() {
		return nil
	}
	_, port, _ := net.SplitHostPort(r.addr)
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := startProc(ctx, r.logDir, "redis", r.bin, false,
			"--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", r.dir, "--protected-mode", "yes",
			"--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning")
		if err != nil {
			return err
		}
		r.all.add(p)
		if err = waitPing(ctx, r.addr, p.done, time.Until(deadline)); err == nil {
			r.cur = p
			return nil
		}
		p.kill()
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s: %w", r.addr, err)
		}
		select { // the port of the killed server may linger briefly
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop kills the server with SIGKILL, as a crash would.
func (r *redisServer) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		r.cur.kill()
		r.cur = nil
	}
}

// waitPing polls PING until it answers, the process exits or d passes.
func waitPing(ctx context.Context, addr string, exited <-chan struct{}, d time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(d)
	for {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING answer: %w", err)
		}
	}
}
