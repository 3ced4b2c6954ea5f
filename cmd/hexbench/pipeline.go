package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// The pipeline workloads run the GPS ingest end to end in one process:
// positions.Publisher -> in-process Kafka (kfake) -> positions.Worker ->
// Index. kfake shares the CPU with both ends, so the figures are a floor
// for a real broker on its own machine.
//
//	pipeline          saturated: publish as fast as the publisher accepts
//	                  for -duration; ops/s is events applied to an Index
//	                  per second; then paced at 150,000 events/s (600k
//	                  drivers every 4 s) for the p50/p99 receive-to-index
//	                  latency at the target rate.
//	pipeline-rebuild  a partition holding -drivers live drivers with 7
//	                  pings each inside the TTL: time from a fresh worker's
//	                  assignment to the partition being ready.

func init() {
	register(Workload{Name: "pipeline", Sized: true, Run: runPipeline})
	register(Workload{Name: "pipeline-rebuild", Sized: true, Run: runPipelineRebuild})
}

const pipelineTargetRate = 150_000

type pipeline struct {
	cluster *kfake.Cluster
	pub     *positions.Publisher
	worker  *positions.Worker
	cancel  context.CancelFunc
	g       *errgroup.Group
}

func quietLog() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

func startCluster(parts int32) (*kfake.Cluster, error) {
	return kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(parts, positions.DefaultTopic),
		kfake.SeedTopics(1, positions.DefaultDLQTopic),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
}

func newPipeline(ctx context.Context, parts int32, withWorker bool) (*pipeline, error) {
	c, err := startCluster(parts)
	if err != nil {
		return nil, err
	}
	p := &pipeline{cluster: c}
	pcfg := positions.DefaultPublisherConfig()
	pcfg.Brokers, pcfg.Logger = c.ListenAddrs(), quietLog()
	pcfg.Partitioner.Partitions = parts
	if p.pub, err = positions.NewPublisher(pcfg); err != nil {
		c.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.g = &errgroup.Group{}
	p.g.Go(func() error { return p.pub.Run(rctx) })
	if withWorker {
		if err := p.startWorker(rctx, time.Hour); err != nil {
			p.close()
			return nil, err
		}
	}
	return p, nil
}

func (p *pipeline) startWorker(ctx context.Context, ttl time.Duration) error {
	wcfg := positions.DefaultWorkerConfig()
	wcfg.Brokers, wcfg.Logger = p.cluster.ListenAddrs(), quietLog()
	wcfg.Index.TTL = ttl
	w, err := positions.NewWorker(wcfg)
	if err != nil {
		return err
	}
	p.worker = w
	p.g.Go(func() error { return w.Run(ctx) })
	return nil
}

func (p *pipeline) close() {
	p.cancel()
	p.g.Wait()
	p.cluster.Close()
}

// waitReady polls until the worker owns every partition, rebuilt.
func (p *pipeline) waitReady(ctx context.Context, parts int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !(p.worker.Ready() && len(p.worker.Partitions()) == parts) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("worker not ready within %v", d)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// mover publishes fleet positions with small random steps.
type mover struct {
	f    fleet
	seq  []uint64
	rng  *rand.Rand
	next int
	shed uint64
}

func (m *mover) publish(p *positions.Publisher) error {
	i := m.next
	m.next = (m.next + 1) % len(m.f.IDs)
	pos := m.f.Pos[i]
	pos.Lat += (m.rng.Float64() - 0.5) * 2e-4
	pos.Lng += (m.rng.Float64() - 0.5) * 2e-4
	if pos.Validate() == nil {
		m.f.Pos[i] = pos
	}
	m.seq[i]++
	err := p.Publish(positions.Event{Driver: m.f.IDs[i], Pos: m.f.Pos[i], Status: m.f.Statuses[i], Seq: m.seq[i], Heading: positions.NoHeading})
	if errors.Is(err, positions.ErrOverloaded) {
		m.shed++
		return nil
	}
	return err
}

func runPipeline(ctx context.Context, env Env) ([]Result, error) {
	const parts = 16
	p, err := newPipeline(ctx, parts, true)
	if err != nil {
		return nil, err
	}
	defer p.close()
	if err := p.waitReady(ctx, parts, 30*time.Second); err != nil {
		return nil, err
	}
	m := &mover{f: newFleet(env.Drivers, env.Seed), seq: make([]uint64, env.Drivers), rng: rand.New(rand.NewPCG(env.Seed, 21))}

	// Every driver pings once first, so that the timed loops measure
	// steady state (drivers moving), not the indexes growing.
	for range env.Drivers {
		if err := m.publish(p.pub); err != nil {
			return nil, err
		}
		if m.shed > 0 {
			if err := drain(ctx, p); err != nil {
				return nil, err
			}
			m.shed = 0
		}
	}
	if err := drain(ctx, p); err != nil {
		return nil, err
	}

	// Saturated: as fast as the publisher takes events.
	warm := time.Now().Add(env.Duration / 5)
	for time.Now().Before(warm) {
		for range 256 {
			if err := m.publish(p.pub); err != nil {
				return nil, err
			}
		}
	}
	s0, l0, shed0, ps0 := p.worker.Stats(), p.worker.IngestLatency(), m.shed, p.pub.Stats()
	cpu0 := cpuTime()
	start := time.Now()
	for time.Since(start) < env.Duration && ctx.Err() == nil {
		for range 256 {
			if err := m.publish(p.pub); err != nil {
				return nil, err
			}
		}
		if m.shed > shed0 {
			runtime.Gosched()
		}
	}
	elapsed := time.Since(start)
	s1, l1, ps1 := p.worker.Stats(), p.worker.IngestLatency(), p.pub.Stats()
	cpu := cpuTime() - cpu0
	lat := l1.Sub(l0)
	applied := s1.Records - s0.Records
	sat := Result{
		System: "hexdispatch", Workload: "pipeline", Drivers: env.Drivers,
		OpsPerS: round(float64(applied) / elapsed.Seconds()),
		P50us:   round(float64(lat.Quantile(0.50).Microseconds())), P99us: round(float64(lat.Quantile(0.99).Microseconds())),
		Ops: int64(applied), Seconds: round(elapsed.Seconds()), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Note: fmt.Sprintf("saturated: %d partitions; offered %.0f/s, coalesced %d, shed %d (ErrOverloaded); process CPU %.2f us per consumed event (publisher, broker and worker together, so %.0f events/s per dedicated core); latency is receive stamp to index apply, upper bucket bounds",
			parts, float64(ps1.Accepted-ps0.Accepted+m.shed-shed0)/elapsed.Seconds(), ps1.Coalesced-ps0.Coalesced, m.shed-shed0,
			cpu.Seconds()*1e6/float64(max(applied, 1)), float64(applied)/max(cpu.Seconds(), 1e-9)),
	}
	if err := drain(ctx, p); err != nil {
		return nil, err
	}

	// Paced at the target rate, in 1 ms ticks.
	s0, l0, shed0 = p.worker.Stats(), p.worker.IngestLatency(), m.shed
	start = time.Now()
	sent := 0
	for time.Since(start) < env.Duration && ctx.Err() == nil {
		due := int(time.Since(start).Seconds() * pipelineTargetRate)
		for ; sent < due; sent++ {
			if err := m.publish(p.pub); err != nil {
				return nil, err
			}
		}
		time.Sleep(time.Millisecond)
	}
	elapsed = time.Since(start)
	if err := drain(ctx, p); err != nil {
		return nil, err
	}
	s1, l1 = p.worker.Stats(), p.worker.IngestLatency()
	lat = l1.Sub(l0)
	// Every record Kafka acknowledged was consumed exactly once.
	if produced := p.pub.Stats().Produced; s1.Records != produced {
		return nil, fmt.Errorf("worker consumed %d records, publisher produced %d", s1.Records, produced)
	}
	paced := Result{
		System: "hexdispatch", Workload: "pipeline", Drivers: env.Drivers,
		OpsPerS: round(float64(s1.Records-s0.Records) / elapsed.Seconds()),
		P50us:   round(float64(lat.Quantile(0.50).Microseconds())), P99us: round(float64(lat.Quantile(0.99).Microseconds())),
		Ops: int64(s1.Records - s0.Records), Seconds: round(elapsed.Seconds()), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Note: fmt.Sprintf("paced at %d events/s offered; shed %d", pipelineTargetRate, m.shed-shed0),
	}
	return []Result{sat, paced}, nil
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drain waits until the worker has applied everything published.
func drain(ctx context.Context, p *pipeline) error {
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := p.pub.Flush(fctx); err != nil {
		return err
	}
	for {
		lag, err := p.worker.Lag(fctx)
		if err != nil {
			return err
		}
		var total int64
		for _, l := range lag {
			total += l
		}
		if total == 0 {
			return nil
		}
		if fctx.Err() != nil {
			return fmt.Errorf("worker still %d records behind", total)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runPipelineRebuild(ctx context.Context, env Env) ([]Result, error) {
	const ttl = 30 * time.Second
	const pings = 7 // one every 4 s within the TTL
	p, err := newPipeline(ctx, 1, false)
	if err != nil {
		return nil, err
	}
	defer p.close()
	f := newFleet(env.Drivers, env.Seed)
	now := time.Now()
	rng := rand.New(rand.NewPCG(env.Seed, 22))
	for k := range pings {
		at := now.Add(-ttl + time.Duration(k+1)*ttl/(pings+1))
		for i := range f.IDs {
			pos := f.Pos[i]
			pos.Lat += (rng.Float64() - 0.5) * 2e-4
			ev := positions.Event{Driver: f.IDs[i], Pos: geo.LatLng{Lat: pos.Lat, Lng: pos.Lng}, Status: f.Statuses[i],
				Seq: uint64(k + 1), Heading: positions.NoHeading, ReceiveTime: at}
			for {
				err := p.pub.Publish(ev)
				if !errors.Is(err, positions.ErrOverloaded) {
					if err != nil {
						return nil, err
					}
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := p.pub.Flush(fctx); err != nil {
		return nil, err
	}
	records := p.pub.Stats().Produced

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	cpu0 := cpuTime()
	start := time.Now()
	if err := p.startWorker(wctx, ttl); err != nil {
		return nil, err
	}
	if err := p.waitReady(ctx, 1, time.Minute); err != nil {
		return nil, err
	}
	took := time.Since(start)
	cpu := cpuTime() - cpu0
	parts := p.worker.Partitions()
	return []Result{{
		System: "hexdispatch", Workload: "pipeline-rebuild", Drivers: env.Drivers,
		OpsPerS: round(float64(p.worker.Stats().Records) / parts[0].Rebuild.Seconds()),
		Ops:     int64(p.worker.Stats().Records), Seconds: round(took.Seconds()), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Note: fmt.Sprintf("1 partition, %d records in the topic, %d drivers rebuilt; seconds = worker start to ready (group join included), partition rebuild %v (assignment to ready), process CPU %v (broker and worker)",
			records, parts[0].Drivers, parts[0].Rebuild.Round(time.Millisecond), cpu.Round(time.Millisecond)),
	}}, nil
}
