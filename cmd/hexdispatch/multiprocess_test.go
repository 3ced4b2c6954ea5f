package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/engineproc"
	"github.com/hexdispatch/hexdispatch/positions"
)

// The multi-process test runs the real binaries: a devbroker, two
// `hexdispatch -role worker` processes and a producer (this test, through
// positions.Publisher). It kills one worker with SIGKILL and checks that
// the other owns every partition again, rebuilt, with every live driver.
// The short variant runs in `make test`; HEXD_TEST_LONG=1 runs a longer
// one with 50,000 moving drivers and six kills.

// buildBinaries builds devbroker and hexdispatch into a temp dir of t.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, pkg := range []string{"devbroker", "hexdispatch"} {
		if _, err := engineproc.BuildTo(context.Background(), dir, pkg); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// proc is a started child process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	first  string // first stdout line
	stderr *syncBuffer
	done   chan struct{}
}

// startProc starts bin with args and waits for its first stdout line. The
// process is killed and waited for when the test ends.
func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	lines := make(chan string, 1)
	go func() {
		br := bufio.NewReader(stdout)
		line, _ := br.ReadString('\n')
		lines <- strings.TrimSpace(line)
		io.Copy(io.Discard, br)
	}()
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s stderr (tail):\n%s", name, tail(p.stderr.String(), 3000))
		}
	})
	select {
	case p.first = <-lines:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s printed nothing in 30s; stderr:\n%s", name, p.stderr)
	}
	if p.first == "" {
		<-p.done
		t.Fatalf("%s exited at start; stderr:\n%s", name, p.stderr)
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// workerView is what a worker's /metrics says about its partitions.
type workerView struct {
	ready   bool
	owned   int
	drivers map[positions.Partition]int
}

func viewWorker(t testing.TB, base string) (workerView, bool) {
	code, _ := get(t, base+"/readyz")
	mcode, body := get(t, base+"/metrics")
	if mcode != http.StatusOK {
		return workerView{}, false
	}
	v := workerView{ready: code == http.StatusOK, drivers: make(map[positions.Partition]int)}
	owned, _ := metric(body, `hexd_positions_partitions{state="owned"}`)
	v.owned = int(owned)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `hexd_positions_drivers{partition="`)
		if !ok {
			continue
		}
		ps, val, _ := strings.Cut(rest, `"} `)
		p, _ := strconv.Atoi(ps)
		n, _ := strconv.ParseFloat(val, 64)
		v.drivers[positions.Partition(p)] = int(n)
	}
	return v, true
}

// fleet is the producer's view: the partition of every live driver.
type fleet struct {
	pt   positions.Partitioner
	pos  map[positions.DriverID]geo.LatLng
	seq  map[positions.DriverID]uint64
	rng  *rand.Rand
	pub  *positions.Publisher
	size int
}

func (f *fleet) pingAll(t testing.TB, move bool) {
	t.Helper()
	for i := range f.size {
		id := positions.DriverID("mp" + strconv.Itoa(i))
		p, ok := f.pos[id]
		switch {
		case !ok:
			p = geo.LatLng{Lat: 37.77 + (f.rng.Float64()-0.5)*0.4, Lng: -122.42 + (f.rng.Float64()-0.5)*0.5}
		case move:
			p = geo.LatLng{Lat: p.Lat + (f.rng.Float64()-0.5)*0.01, Lng: p.Lng + (f.rng.Float64()-0.5)*0.01}
		}
		f.seq[id]++
		ev := positions.Event{Driver: id, Pos: p, Status: positions.StatusAvailable, Seq: f.seq[id], Heading: positions.NoHeading}
		if err := f.pub.Publish(ev); err != nil {
			t.Fatalf("publish: %v", err)
		}
		f.pos[id] = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.pub.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

func (f *fleet) want() map[positions.Partition]int {
	out := make(map[positions.Partition]int)
	for _, p := range f.pos {
		part, _, _ := f.pt.ForPos(p)
		out[part]++
	}
	return out
}

// covered reports whether the workers together own every partition,
// rebuilt, each once, holding exactly the fleet's drivers.
func covered(t testing.TB, f *fleet, bases ...string) (bool, string) {
	got := make(map[positions.Partition]int)
	owned := 0
	for _, b := range bases {
		v, ok := viewWorker(t, b)
		if !ok || !v.ready {
			return false, b + " not ready"
		}
		owned += v.owned
		for p, n := range v.drivers {
			got[p] += n
		}
	}
	if owned != int(f.pt.Partitions) {
		return false, fmt.Sprintf("%d partitions owned", owned)
	}
	want := f.want()
	for p := range f.pt.Partitions {
		if got[positions.Partition(p)] != want[positions.Partition(p)] {
			return false, fmt.Sprintf("partition %d holds %d drivers, want %d", p, got[positions.Partition(p)], want[positions.Partition(p)])
		}
	}
	return true, ""
}

func waitCovered(t testing.TB, what string, d time.Duration, f *fleet, bases ...string) {
	t.Helper()
	start := time.Now()
	var why string
	for {
		var ok bool
		if ok, why = covered(t, f, bases...); ok {
			return
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v: %s", what, d, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMultiProcessWorkerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs binaries")
	}
	long := os.Getenv("HEXD_TEST_LONG") == "1"
	dir := buildBinaries(t)
	const parts = 8
	broker := startProc(t, "devbroker", filepath.Join(dir, "devbroker"), "-ports", "0", "-partitions", strconv.Itoa(parts))
	addr, ok := strings.CutPrefix(broker.first, "devbroker listening on ")
	if !ok {
		t.Fatalf("devbroker banner %q", broker.first)
	}
	startWorker := func(name string) (*proc, string) {
		p := startProc(t, name, filepath.Join(dir, "hexdispatch"), "-role", "worker", "-kafka", addr,
			"-partitions", strconv.Itoa(parts), "-addr", "127.0.0.1:0", "-log-level", "warn")
		i := strings.Index(p.first, "http://")
		if i < 0 {
			t.Fatalf("%s banner %q", name, p.first)
		}
		return p, p.first[i:]
	}

	pcfg := positions.DefaultPublisherConfig()
	pcfg.Brokers = []string{addr}
	pcfg.Partitioner.Partitions = parts
	pcfg.Linger = time.Millisecond
	pub, err := positions.NewPublisher(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return pub.Run(ctx) })
	t.Cleanup(func() { cancel(); g.Wait() })

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("SEED=%d", seed)
	f := &fleet{pt: pcfg.Partitioner, pos: make(map[positions.DriverID]geo.LatLng), seq: make(map[positions.DriverID]uint64),
		rng: rand.New(rand.NewPCG(seed, 9)), pub: pub, size: 2000}
	if long {
		f.size = 50_000
	}
	f.pingAll(t, false)

	a, aURL := startWorker("worker-a")
	b, bURL := startWorker("worker-b")
	waitCovered(t, "two workers cover every partition", 60*time.Second, f, aURL, bURL)
	if va, _ := viewWorker(t, aURL); va.owned == 0 || va.owned == parts {
		t.Logf("worker-a owns %d of %d partitions (the group may not have split yet)", va.owned, parts)
	}

	rounds := 1
	if long {
		rounds = 6
	}
	for round := range rounds {
		// Kill whichever worker owns partitions, then check the
		// survivor covers everything.
		victim, survivorURL := a, bURL
		if round%2 == 1 {
			victim, survivorURL = b, aURL
		}
		killed := time.Now()
		victim.kill()
		waitCovered(t, "survivor covers every partition after kill -9", 60*time.Second, f, survivorURL)
		t.Logf("round %d: kill -9 %s -> survivor owns and has rebuilt all %d partitions with all %d drivers in %v",
			round, victim.name, parts, f.size, time.Since(killed).Round(time.Millisecond))
		if !long {
			break
		}
		// Drivers move (some across shards), a replacement joins.
		f.pingAll(t, true)
		name := fmt.Sprintf("worker-%d", round)
		if round%2 == 0 {
			a, aURL = startWorker(name)
		} else {
			b, bURL = startWorker(name)
		}
		f.pingAll(t, true)
		waitCovered(t, "replacement joins", 60*time.Second, f, aURL, bURL)
	}
}
