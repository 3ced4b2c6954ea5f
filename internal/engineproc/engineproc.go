// Package engineproc builds the project's commands and runs the engine as
// a child process on a free loopback port, for benchmarks and tests that
// measure or drive the real program.
package engineproc

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
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Build builds cmd/<name> of the module around the working directory into
// a temp dir, and returns the binary and a cleanup that removes it.
func Build(ctx context.Context, name string) (bin string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "hexd-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	if bin, err = BuildTo(ctx, dir, name); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// BuildTo builds cmd/<name> of the module around the working directory
// into dir/<name> and returns that path. It uses the go command of the
// running toolchain when there is one, else the one on PATH.
func BuildTo(ctx context.Context, dir, name string) (string, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run inside the hexdispatch module (go env GOMOD: %q, %v)", mod, err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", name, err, b)
	}
	return bin, nil
}

// Proc is a running engine process.
type Proc struct {
	// Base is the engine's base URL (http://127.0.0.1:port).
	Base string
	Pid  int
	cmd  *exec.Cmd
	out  chan struct{} // closed when stdout is drained
}

// Start runs bin with args (which should include -addr 127.0.0.1:0), reads
// the base URL from the first stdout line that names one, and waits until
// /readyz answers 200 (at most 30 s). The child gets every core whatever
// GOMAXPROCS the caller runs with; stderr goes to stderr (nil: dropped).
func Start(ctx context.Context, bin string, stderr io.Writer, args ...string) (*Proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if stderr == nil {
		stderr = io.Discard
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Pid: cmd.Process.Pid, cmd: cmd, out: make(chan struct{})}
	banner := make(chan string, 1)
	go func() {
		defer close(p.out)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if i := strings.Index(sc.Text(), "http://"); i >= 0 {
				select {
				case banner <- strings.TrimSpace(sc.Text()[i:]):
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case p.Base = <-banner:
	case <-p.out:
		p.Stop()
		return nil, errors.New("engine exited before printing its address")
	case <-time.After(30 * time.Second):
		p.Stop()
		return nil, errors.New("engine printed no address in 30 s")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.Base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.Stop()
			return nil, errors.New("engine not ready in 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for a graceful exit, killing the process
// after 15 s. It returns the exit error (nil on a clean stop).
func (p *Proc) Stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { <-p.out; done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-done
		return errors.New("engine did not stop in 15 s after SIGTERM")
	}
}
