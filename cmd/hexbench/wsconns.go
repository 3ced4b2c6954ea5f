package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/internal/engineproc"
)

// ws-conns opens -drivers idle driver WebSockets to real hexdispatch
// processes (built from this module and started on loopback) and reports
// the servers' memory per connection: the growth of each process's live
// Go heap (as its last GC marked it) plus goroutine stacks, read from its
// own /metrics, divided by its connections (the note also gives it
// counted with the heap's spans in use, which hold garbage and free slots
// too). Then every driver reports one position, riders request
// rides, and the drivers' clients time each offer from the moment the
// engine sent it (its expires_at less the offer timeout) to its arrival:
// the offer fan-out latency with every connection open.
//
// One process holds at most the open-file limit's connections. When
// -drivers needs more (or -api-procs asks), the engine runs split as on a
// real deployment: a devbroker, a redis-server, one `-role worker` and
// several `-role api` processes, each driver connected to one api process
// and placed in that process's longitude band of the city, and each
// ride requested at the api process of its pickup's band. The clients run
// in child processes of hexbench (see wsclient.go) for the same reason.

func init() {
	register(Workload{Name: "ws-conns", Sized: true, Run: runWSConns})
}

const wsSecret = "hexbench-ws-secret-0123456789"

// The offer phase: wsRideRate ride requests/s for -duration, each offered
// to wsFanOut drivers at once. The offer timeout outlasts the phase, so
// every offer is a first one and none is withdrawn while it travels.
const (
	wsRideRate     = 50
	wsFanOut       = 8
	wsOfferTimeout = 30 * time.Second
	// wsFileReserve is what a process keeps of its open-file limit for
	// everything but the driver connections.
	wsFileReserve = 1000
)

// wsCity is the area the drivers and pickups are spread over (San
// Francisco); api process k of n serves the k-th of n longitude bands.
var wsCity = struct{ latLo, latHi, lngLo, lngHi float64 }{37.71, 37.80, -122.51, -122.39}

// wsBand returns a random point of band k of n; inner keeps it in the
// middle half of the band, away from the neighbours' drivers.
func wsBand(rng *rand.Rand, k, n int, inner bool) (lat, lng float64) {
	w := (wsCity.lngHi - wsCity.lngLo) / float64(n)
	x := rng.Float64()
	if inner {
		x = 0.25 + x/2
	}
	return wsCity.latLo + rng.Float64()*(wsCity.latHi-wsCity.latLo), wsCity.lngLo + (float64(k)+x)*w
}

// wsPerProcess is how many connections one process may hold here.
func wsPerProcess() (int, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	if r.Max <= 2*wsFileReserve {
		return 0, fmt.Errorf("ws-conns: open-file hard limit %d is too low", r.Max)
	}
	// The children inherit the soft limit.
	if err := raiseFileLimit(r.Max); err != nil {
		return 0, err
	}
	return int(r.Max) - wsFileReserve, nil
}

// wsProc is one api process (or, unsplit, the whole engine).
type wsProc struct {
	proc          *engineProc
	conns         int
	before, after memory
}

// memory is an engine's Go memory: goroutine stacks plus the heap the last
// GC marked live (live) or plus the heap's spans in use (inuse, which also
// holds the garbage since and the free slots of partly used spans).
type memory struct{ live, inuse float64 }

func (m memory) minus(o memory) memory { return memory{m.live - o.live, m.inuse - o.inuse} }

func runWSConns(ctx context.Context, env Env) ([]Result, error) {
	n := env.Drivers
	per, err := wsPerProcess()
	if err != nil {
		return nil, err
	}
	procs := env.APIProcs
	if procs == 0 {
		procs = (n + per - 1) / per
	}
	if procs > n {
		return nil, fmt.Errorf("ws-conns: -api-procs %d is more than the %d connections", procs, n)
	}
	if (n+procs-1)/procs > per {
		return nil, fmt.Errorf("ws-conns: %d connections over %d api processes exceed %d per process (the open-file limit); use -api-procs %d", n, procs, per, (n+per-1)/per)
	}
	bin, cleanup, err := buildEngine(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	rev := engineRevision(ctx) // the tree may move on while the run goes
	apis, worker, stop, err := startWSEngines(ctx, env, bin, procs)
	if err != nil {
		return nil, err
	}
	defer stop()
	for i := range n {
		apis[i%procs].conns++
	}
	for _, a := range apis {
		if a.before, err = engineMemory(a.proc.base); err != nil {
			return nil, err
		}
	}

	// The clients: child processes of hexbench, each under the limit.
	bases := make([]string, procs)
	for k, a := range apis {
		bases[k] = a.proc.base
	}
	nClients := (n + per - 1) / per
	clients := make([]*wsClientProc, 0, nClients)
	defer func() {
		for _, c := range clients {
			c.stop()
		}
	}()
	start := time.Now()
	for j := range nClients {
		spec := wsClientSpec{Bases: bases, From: j * n / nClients, To: (j + 1) * n / nClients, Secret: wsSecret,
			OfferTimeout: wsOfferTimeout, Seed: env.Seed + uint64(j)}
		c, err := startWSClient(ctx, spec)
		if err != nil {
			return nil, err
		}
		clients = append(clients, c)
	}
	srcAddrs := 0
	for _, c := range clients {
		line, err := c.await(ctx, "dialed", 5*time.Minute)
		if err != nil {
			return nil, err
		}
		k, _ := strconv.Atoi(line)
		srcAddrs = max(srcAddrs, k)
	}
	dial := time.Since(start)
	// Read each server's memory once its next collection has swept, so the
	// handshakes' garbage does not count as connection memory, and not
	// before every connection has had its keepalive ping: an idle
	// connection's pong gives it a reader goroutine again (see DESIGN.md),
	// so the steady state of an idle connection is after its first ping.
	wait := wsGCWait
	if n < 1000 {
		wait = time.Second // the small sizes are for tests: the process's own memory dominates them anyway
	} else {
		pinged := start.Add(wsPingedAfter)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Until(pinged)):
		}
	}
	var settleMu sync.Mutex
	var settleErr error
	collected := 0
	var sg sync.WaitGroup
	for _, a := range apis {
		sg.Add(1)
		go func() {
			defer sg.Done()
			m, gc, err := memoryAfterGC(ctx, a.proc.base, wait)
			settleMu.Lock()
			defer settleMu.Unlock()
			a.after, settleErr = m, cmpErr(settleErr, err)
			if gc {
				collected++
			}
		}()
	}
	sg.Wait()
	if settleErr != nil {
		return nil, settleErr
	}
	open := 0.0
	for _, a := range apis {
		o, err := engineGauge(a.proc.base, "hexd_gateway_websockets")
		if err != nil {
			return nil, err
		}
		if int(o) != a.conns {
			return nil, fmt.Errorf("ws-conns: %s reports %v open WebSockets, want %d", a.proc.base, o, a.conns)
		}
		open += o
	}
	var perProc []string
	total, worst := 0.0, 0.0
	for k, a := range apis {
		d := a.after.minus(a.before)
		b := d.live / float64(a.conns)
		total += d.live
		worst = max(worst, b)
		s := fmt.Sprintf("api%d %d conns %.1f KB/conn (%.1f KB counting heap in use)", k+1, a.conns, b/1024, d.inuse/float64(a.conns)/1024)
		if rss, ok := a.proc.rss(); ok {
			s += fmt.Sprintf(" (RSS %.0f MB)", rss/(1<<20))
		}
		perProc = append(perProc, s)
	}
	fmt.Fprintf(env.Progress, "hexbench: ws-conns: %d connections in %v; %s\n", n, dial.Round(time.Millisecond), strings.Join(perProc, "; "))

	// Offer fan-out with every connection open.
	lat, fan, err := wsOffers(ctx, env, apis, worker, clients, n)
	if err != nil {
		return nil, err
	}
	split := "one process (role all)"
	if procs > 1 {
		split = fmt.Sprintf("%d api processes + 1 worker + devbroker + redis-server", procs)
	}
	return []Result{{
		System: "hexdispatch", Workload: "ws-conns", Drivers: n,
		BytesPerDriver: round(total / open),
		Seconds:        round(dial.Seconds()),
		P50us:          round(lat.Percentile(50)), P99us: round(lat.Percentile(99)),
		Ops: int64(len(lat.samples)), OffersPerS: round(fan.offersPerS), Errors: fan.missing,
		Note: fmt.Sprintf("server live heap (as the last GC marked it) + goroutine stacks per idle driver WebSocket, mean over %s (worst process %.1f KB), read after a GC in %d of %d processes: %s; "+
			"seconds = time to open them all (%d client processes, up to %d source addresses each); "+
			"p50/p99 = offer fan-out, engine send to client receipt, %d rides at %d/s offered to %d drivers each (%d offers sent, %d received, %d not received = errors); engine %s",
			split, worst/1024, collected, len(apis), strings.Join(perProc, "; "), len(clients), srcAddrs,
			fan.rides, wsRideRate, wsFanOut, fan.sent, len(lat.samples), fan.missing, rev),
	}}, nil
}

// wsPingedAfter is when, after the first connection opened, every one
// has had its keepalive ping: the engine pings a connection silent for
// PingEvery, checking eight times per PingEvery.
var wsPingedAfter = dispatch.DefaultDriversConfig().PingEvery * 5 / 4

// wsGCWait bounds the wait for a server's next garbage collection after
// the connections are open: an idle Go process collects at least every
// two minutes.
const wsGCWait = 130 * time.Second

// memoryAfterGC waits for the process's next garbage collection, at most
// wait, and returns its memory read once it swept (gc false: none came,
// the live heap is the last GC's from before).
func memoryAfterGC(ctx context.Context, base string, wait time.Duration) (memory, bool, error) {
	n0, err := engineGauge(base, "go_gc_duration_seconds_count")
	if err != nil {
		return memory{}, false, err
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		if n, err := engineGauge(base, "go_gc_duration_seconds_count"); err != nil || n > n0 {
			// The collection frees spans as it sweeps them, after the
			// cycle ends.
			time.Sleep(2 * time.Second)
			m, err2 := engineMemory(base)
			return m, err == nil, cmpErr(err, err2)
		}
	}
	m, err := engineMemory(base)
	return m, false, cmpErr(ctx.Err(), err)
}

// startWSEngines starts the engine for procs api processes: one role-all
// process, or the split roles sharing a devbroker and a redis-server.
func startWSEngines(ctx context.Context, env Env, bin string, procs int) (apis []*wsProc, worker string, stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	dispatchFlags := []string{"-fan-out", strconv.Itoa(wsFanOut), "-offer-timeout", wsOfferTimeout.String()}
	if procs == 1 {
		p, err := startEngineProc(ctx, bin, dispatchFlags...)
		if err != nil {
			return nil, "", stop, err
		}
		stops = append(stops, p.stop)
		return []*wsProc{{proc: p}}, p.base, stop, nil
	}
	rs, err := startRedis(ctx, "redis-server", env.Progress)
	if err != nil {
		return nil, "", stop, err
	}
	stops = append(stops, rs.Close)
	brokerBin, cleanup, err := buildCmd(ctx, "devbroker")
	if err != nil {
		return nil, "", stop, err
	}
	stops = append(stops, cleanup)
	broker, kafka, err := startDevbroker(brokerBin)
	if err != nil {
		return nil, "", stop, err
	}
	stops = append(stops, broker)
	common := []string{"-kafka", kafka, "-redis", rs.Addr}
	w, err := startEngineProc(ctx, bin, append([]string{"-role", "worker"}, common...)...)
	if err != nil {
		return nil, "", stop, err
	}
	stops = append(stops, w.stop)
	for range procs {
		p, err := startEngineProc(ctx, bin, append(append([]string{"-role", "api"}, common...), dispatchFlags...)...)
		if err != nil {
			return nil, "", stop, err
		}
		stops = append(stops, p.stop)
		apis = append(apis, &wsProc{proc: p})
	}
	return apis, w.base, stop, nil
}

// startDevbroker runs a devbroker with the engine's partitions on a free
// port and returns its stop and its address.
func startDevbroker(bin string) (func(), string, error) {
	cmd := exec.Command(bin, "-ports", "0", "-partitions", engineTestPartitions)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	go io.Copy(io.Discard, br)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "devbroker listening on ")
	if err != nil || !ok {
		stop()
		return nil, "", fmt.Errorf("devbroker: banner %q: %v", line, err)
	}
	return stop, addr, nil
}

// fanResult is what the offer phase counted.
type fanResult struct {
	rides, sent, missing int64
	offersPerS           float64
}

// wsOffers puts every driver on the map, requests rides at wsRideRate for
// -duration and collects the clients' offer latencies.
func wsOffers(ctx context.Context, env Env, apis []*wsProc, worker string, clients []*wsClientProc, n int) (*Timer, fanResult, error) {
	var fan fanResult
	for _, c := range clients {
		c.send("positions")
	}
	for _, c := range clients {
		if _, err := c.await(ctx, "positioned", 2*time.Minute); err != nil {
			return nil, fan, err
		}
	}
	// Wait until the worker indexed (nearly) every driver.
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := wsMetricSum(worker, "hexd_positions_drivers{")
		if err == nil && got >= 0.99*float64(n) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fan, fmt.Errorf("ws-conns: the worker indexed %v of %d drivers in 60 s (%v)", got, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	signer, _ := dispatch.NewSigner([]byte(wsSecret))
	client := &http.Client{Timeout: 10 * time.Second}
	rng := rand.New(rand.NewPCG(env.Seed, 0x6f66666572))
	var created, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	every := time.Second / wsRideRate
	total := int(env.Duration / every)
	for j := range total {
		if err := ctx.Err(); err != nil {
			return nil, fan, err
		}
		time.Sleep(time.Until(start.Add(time.Duration(j) * every)))
		k := j % len(apis)
		lat, lng := wsBand(rng, k, len(apis), true)
		body := fmt.Sprintf(`{"pickup":{"lat":%f,"lng":%f},"dropoff":{"lat":%f,"lng":%f}}`, lat, lng, lat+0.01, lng)
		tok, _ := signer.Mint(dispatch.Claims{Subject: "wsrider" + strconv.Itoa(j), Role: dispatch.RoleRider, Expires: time.Now().Add(time.Hour)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", apis[k].proc.base+"/v1/rides", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "ws-"+strconv.Itoa(j))
			resp, err := client.Do(req)
			if err != nil {
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated {
				created.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	// The last searches take a moment to offer.
	time.Sleep(2 * time.Second)
	elapsed := time.Since(start)
	fan.rides = created.Load()
	for _, a := range apis {
		sent, err1 := engineGauge(a.proc.base, `hexd_dispatch_offers_total{outcome="sent"}`)
		undelivered, err2 := engineGauge(a.proc.base, `hexd_dispatch_offers_total{outcome="timed_out"}`)
		if err := cmpErr(err1, err2); err != nil {
			return nil, fan, err
		}
		fan.sent += int64(sent - undelivered)
	}
	var lat Timer
	for _, c := range clients {
		c.send("report")
		line, err := c.await(ctx, "offers", time.Minute)
		if err != nil {
			return nil, fan, err
		}
		var ns []int64
		if err := json.Unmarshal([]byte(line), &ns); err != nil {
			return nil, fan, fmt.Errorf("ws-conns: client report: %w", err)
		}
		for _, v := range ns {
			lat.samples = append(lat.samples, time.Duration(v))
		}
	}
	fan.missing = max(0, fan.sent-int64(len(lat.samples))) + failed.Load()
	fan.offersPerS = float64(len(lat.samples)) / elapsed.Seconds()
	return &lat, fan, nil
}

// wsMetricSum adds up the samples of one labelled metric.
func wsMetricSum(base, prefix string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			if i := strings.LastIndexByte(rest, ' '); i >= 0 {
				v, err := strconv.ParseFloat(rest[i+1:], 64)
				if err == nil && !math.IsNaN(v) {
					sum, found = sum+v, true
				}
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("engine: no %s samples in /metrics", prefix)
	}
	return sum, sc.Err()
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
	return buildCmd(ctx, "hexdispatch")
}

// buildCmd builds cmd/<name> of this module into a temp dir.
func buildCmd(ctx context.Context, name string) (string, func(), error) {
	bin, cleanup, err := engineproc.Build(ctx, name)
	if err != nil {
		return "", nil, fmt.Errorf("engine: %w", err)
	}
	return bin, cleanup, nil
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

// engineTestPartitions is the driver-positions partitions of every
// engine (and devbroker) hexbench starts.
const engineTestPartitions = "4"

// startEngine runs the engine on a free loopback port and returns its base
// URL once it prints it. extra flags come after the defaults, so they win.
// The engine gets every core whatever GOMAXPROCS hexbench runs with: it is
// measured as it would be deployed.
func startEngine(ctx context.Context, bin string, extra ...string) (string, func(), error) {
	p, err := startEngineProc(ctx, bin, extra...)
	if err != nil {
		return "", nil, err
	}
	return p.base, p.stop, nil
}

// engineProc is a started engine process.
type engineProc struct {
	base string
	pid  int
	stop func()
}

// rss is the process's resident memory (Linux), socket buffers not
// included.
func (p *engineProc) rss() (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseFloat(f[0], 64)
				return kb * 1024, err == nil
			}
		}
	}
	return 0, false
}

// startEngineProc is startEngine keeping the process's id.
func startEngineProc(ctx context.Context, bin string, extra ...string) (*engineProc, error) {
	args := append([]string{"-addr", "127.0.0.1:0", "-token-secret", wsSecret, "-partitions", engineTestPartitions, "-log-level", "warn"}, extra...)
	p, err := engineproc.Start(ctx, bin, nil, args...)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return &engineProc{base: p.Base, pid: p.Pid, stop: func() { p.Stop() }}, nil
}

// engineMemory reads the engine's Go memory from its /metrics.
func engineMemory(base string) (memory, error) {
	var v [3]float64
	for i, name := range []string{"go_gc_heap_live_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"} {
		var err error
		if v[i], err = engineGauge(base, name); err != nil {
			return memory{}, err
		}
	}
	return memory{live: v[0] + v[2], inuse: v[1] + v[2]}, nil
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
