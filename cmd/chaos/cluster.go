package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/internal/loopback"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// cluster is one multi-process engine: a devbroker, a redis-server with
// AOF, N `hexdispatch -role worker` processes and one `-role api`, all on
// loopback. The fault loop is its only mutator once it runs; the monitor
// reads the worker table under workersMu.
type cluster struct {
	cfg    config
	logDir string
	all    procs

	broker  *proc
	kafka   string
	redis   *redisServer
	api     *proc
	baseURL string

	rdb *redis.Client     // the monitor's view of the ownership registry
	reg *matcher.Registry // over rdb

	workersMu sync.Mutex
	workers   []*worker // slot i is always "worker<i>"; a killed one has p == nil until restarted
	restarts  int
}

// worker is one worker slot.
type worker struct {
	name    string
	p       *proc
	base    string // http://host:port of /readyz and /metrics
	rpcAddr string // the address it publishes in the registry
}

// startCluster starts every process and waits until the workers own and
// have rebuilt every partition.
func startCluster(ctx context.Context, cfg config, dir string) (c *cluster, err error) {
	c = &cluster{cfg: cfg, logDir: filepath.Join(dir, "logs")}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return nil, err
	}
	redisDir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(redisDir, 0o755); err != nil {
		return nil, err
	}
	if c.redis, err = newRedisServer(cfg.redisBin, redisDir, c.logDir, &c.all); err != nil {
		return nil, err
	}
	if err := c.redis.start(ctx); err != nil {
		return nil, err
	}
	c.rdb = redis.NewClient(matcher.FailFastOptions(c.redis.addr))
	if c.reg, err = matcher.NewRegistry(c.rdb, matcher.DefaultRegistryConfig()); err != nil {
		return nil, err
	}
	b, err := startProc(ctx, c.logDir, "devbroker", cfg.devbrokerBin, true,
		"-ports", "0", "-partitions", strconv.Itoa(cfg.partitions))
	if err != nil {
		return nil, err
	}
	c.broker = c.all.add(b)
	var ok bool
	if c.kafka, ok = strings.CutPrefix(b.first, "devbroker listening on "); !ok {
		return nil, fmt.Errorf("devbroker banner %q", b.first)
	}
	c.workers = make([]*worker, cfg.workers)
	for i := range c.workers {
		c.workers[i] = &worker{name: "worker" + strconv.Itoa(i)}
		if err := c.startWorker(ctx, i); err != nil {
			return nil, err
		}
	}
	a, err := startProc(ctx, c.logDir, "api", cfg.hexdispatchBin, true, append([]string{"-role", "api", "-addr", "127.0.0.1:0"}, c.common()...)...)
	if err != nil {
		return nil, err
	}
	c.api = c.all.add(a)
	if c.baseURL, err = bannerURL(a.first); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		h := c.health(ctx)
		if h.covered() {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the workers did not cover every partition in 60 s: %s", h.why)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// common are the flags every hexdispatch process gets.
func (c *cluster) common() []string {
	return []string{"-kafka", c.kafka, "-redis", c.redis.addr, "-partitions", strconv.Itoa(c.cfg.partitions),
		"-ttl", c.cfg.ttl.String(), "-log-level", "warn", "-token-secret", c.cfg.secret}
}

// startWorker starts the process of slot i on fresh ports.
func (c *cluster) startWorker(ctx context.Context, i int) error {
	port, err := loopback.FreePort()
	if err != nil {
		return err
	}
	rpc := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	w := c.workers[i]
	args := append([]string{"-role", "worker", "-addr", "127.0.0.1:0", "-rpc-addr", rpc}, c.common()...)
	p, err := startProc(ctx, c.logDir, w.name, c.cfg.hexdispatchBin, true, args...)
	if err != nil {
		return err
	}
	c.all.add(p)
	base, err := bannerURL(p.first)
	if err != nil {
		p.kill()
		return err
	}
	c.workersMu.Lock()
	w.p, w.base, w.rpcAddr = p, base, rpc
	c.workersMu.Unlock()
	return nil
}

// killWorker kill -9s the process of slot i and waits until it is reaped.
func (c *cluster) killWorker(i int) {
	c.workersMu.Lock()
	w := c.workers[i]
	p := w.p
	w.p, w.base, w.rpcAddr = nil, "", ""
	c.workersMu.Unlock()
	if p != nil {
		p.kill()
	}
}

// liveWorkers returns copies of the slots with a running process.
func (c *cluster) liveWorkers() []worker {
	c.workersMu.Lock()
	defer c.workersMu.Unlock()
	var out []worker
	for _, w := range c.workers {
		if w.p != nil {
			out = append(out, *w)
		}
	}
	return out
}

// close kills and reaps every child process.
func (c *cluster) close() {
	if c.rdb != nil {
		c.rdb.Close()
	}
	c.all.closeAll()
}

func bannerURL(line string) (string, error) {
	i := strings.Index(line, "http://")
	if i < 0 {
		return "", fmt.Errorf("banner %q has no http:// address", line)
	}
	return line[i:], nil
}

// health is one look at the engine's partitions.
type health struct {
	at time.Time
	// ready: distinct partitions that some live worker owns and has
	// rebuilt (its /readyz says "ready"), and every live worker answered
	// /readyz 200.
	ready int
	// allWorkersReady: every live worker's /readyz answered 200.
	allWorkersReady bool
	// registered: partitions whose owner in the Redis registry is the
	// query RPC address of a live worker that holds it ready. -1 when
	// Redis did not answer.
	registered int
	// drivers: drivers held in ready partitions (the larger count when two
	// workers briefly report the same partition).
	drivers    int
	held       map[string]int // worker name -> partitions it holds ready
	partitions int
	why        string // what is missing, for logs
}

// covered is the recovery predicate of the partitions: every partition
// ready on a live worker, and the registry sends the api to it.
func (h health) covered() bool {
	return h.ready == h.partitions && h.allWorkersReady && h.registered == h.partitions
}

// health reads every live worker's /readyz and the ownership registry.
func (c *cluster) health(ctx context.Context) health {
	h := health{at: time.Now(), partitions: c.cfg.partitions, allWorkersReady: true, held: map[string]int{}}
	ws := c.liveWorkers()
	type view struct {
		ok    bool
		parts map[int]int // ready partition -> drivers
	}
	views := make([]view, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, parts := readyz(ctx, w.base)
			views[i] = view{ok, parts}
		}()
	}
	wg.Wait()
	readyAt := map[int]map[string]bool{} // partition -> rpc addrs holding it ready
	drivers := map[int]int{}
	var why []string
	for i, v := range views {
		if !v.ok {
			h.allWorkersReady = false
			why = append(why, ws[i].name+" not ready")
		}
		h.held[ws[i].name] = len(v.parts)
		for p, n := range v.parts {
			if readyAt[p] == nil {
				readyAt[p] = map[string]bool{}
			}
			readyAt[p][ws[i].rpcAddr] = true
			drivers[p] = max(drivers[p], n)
		}
	}
	h.ready = len(readyAt)
	for _, n := range drivers {
		h.drivers += n
	}
	all := make([]positions.Partition, c.cfg.partitions)
	for i := range all {
		all[i] = positions.Partition(i)
	}
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	owners, err := c.reg.Resolve(rctx, all)
	cancel()
	if err != nil {
		h.registered = -1
		why = append(why, "registry: "+err.Error())
	} else {
		for p, o := range owners {
			if readyAt[int(p)][o.Addr] {
				h.registered++
			}
		}
	}
	if h.ready < h.partitions {
		why = append(why, fmt.Sprintf("%d of %d partitions ready", h.ready, h.partitions))
	}
	if h.registered >= 0 && h.registered < h.partitions {
		why = append(why, fmt.Sprintf("%d of %d partitions registered to a ready owner", h.registered, h.partitions))
	}
	h.why = strings.Join(why, "; ")
	return h
}

var healthClient = &http.Client{Timeout: 500 * time.Millisecond}

// readyz reads a worker's /readyz: whether it answered 200, and its ready
// partitions with their driver counts.
func readyz(ctx context.Context, base string) (bool, map[int]int) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return false, nil
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return false, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return false, nil
	}
	return resp.StatusCode == http.StatusOK, parseReadyz(string(body))
}

// parseReadyz picks the ready partitions out of a /readyz body, whose
// lines read "partition 3 ready drivers=120" (or "rebuilding").
func parseReadyz(body string) map[int]int {
	out := map[int]int{}
	for _, line := range strings.Split(body, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "partition" || f[2] != "ready" {
			continue
		}
		p, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(strings.TrimPrefix(f[3], "drivers="))
		if err1 != nil || err2 != nil || p < 0 {
			continue
		}
		out[p] = n
	}
	return out
}
