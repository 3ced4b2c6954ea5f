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
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisPeer is a real redis-server started on a free loopback port for the
// run, so Redis GEO is measured on the same machine in the same run.
type redisPeer struct {
	cmd    *exec.Cmd
	dir    string
	Addr   string
	Client *redis.Client
}

// startRedis starts redis-server (found on PATH or at path) with no
// persistence and waits until it answers PING.
func startRedis(ctx context.Context, path string, progress io.Writer) (*redisPeer, error) {
	bin, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("redis peer: %q not found (apt-get install redis-server): %w", path, err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hexbench-redis-")
	if err != nil {
		return nil, err
	}
	p := &redisPeer{dir: dir, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	p.cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "yes")
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, io.Discard
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("redis peer: start: %w", err)
	}
	p.Client = redis.NewClient(&redis.Options{Addr: p.Addr, PoolSize: 4})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := p.Client.Ping(ctx).Err(); err == nil {
			break
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			p.Close()
			return nil, fmt.Errorf("redis peer: no PING answer from %s: %w", p.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	info, _ := p.Client.Info(ctx, "server").Result()
	fmt.Fprintf(progress, "hexbench: redis peer %s at %s\n", infoField(info, "redis_version"), p.Addr)
	return p, nil
}

// Close stops the server and removes its directory.
func (p *redisPeer) Close() {
	p.Client.Close()
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	os.RemoveAll(p.dir)
}

// usedMemory returns INFO memory's used_memory in bytes.
func (p *redisPeer) usedMemory(ctx context.Context) (int64, error) {
	info, err := p.Client.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(infoField(info, "used_memory"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redis peer: used_memory: %w", err)
	}
	return v, nil
}

func infoField(info, name string) string {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// geoKey holds the available drivers, the set a matcher queries: Redis GEO
// has no per-member status, so a competent client keeps one key per status.
const geoKey = "drivers:available"

// loadGeo adds the available drivers of f with pipelined GEOADD.
func loadGeo(ctx context.Context, c *redis.Client, f fleet) (int, error) {
	const batch = 1000
	n := 0
	pipe := c.Pipeline()
	for i := range f.IDs {
		if f.Statuses[i] != statusAvailable {
			continue
		}
		pipe.GeoAdd(ctx, geoKey, &redis.GeoLocation{Name: string(f.IDs[i]), Longitude: f.Pos[i].Lng, Latitude: f.Pos[i].Lat})
		n++
		if n%batch == 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return n, err
			}
		}
	}
	_, err := pipe.Exec(ctx)
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	return n, err
}
