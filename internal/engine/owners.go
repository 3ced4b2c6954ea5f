package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

// ownership is the worker side of cross-process queries (role worker with
// -redis): the internal query RPC listener, and the heartbeat that
// publishes the partitions this worker owns, fenced by the consumer-group
// generation, so api processes can find it.
type ownership struct {
	ln  net.Listener
	srv *http.Server
	rdb *redis.Client
	reg *matcher.Registry
	w   *positions.Worker
	log *slog.Logger
}

func newOwnership(cfg Config, log *slog.Logger, w *positions.Worker, metrics prometheus.Gatherer) (*ownership, error) {
	ln, err := net.Listen("tcp", cfg.RPCAddr)
	if err != nil {
		return nil, fmt.Errorf("-rpc-addr %s: %w", cfg.RPCAddr, err)
	}
	// The query RPC, and the worker's metrics where the api processes
	// that find it in the registry can read them (the ops console's lag
	// and dead-letter panels).
	mux := http.NewServeMux()
	mux.Handle("/", matcher.NewRPCHandler(w))
	mux.Handle("GET "+WorkerMetricsPath, promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	o := &ownership{ln: ln, w: w, log: log,
		rdb: redis.NewClient(matcher.FailFastOptions(cfg.Redis)),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}}
	if o.reg, err = matcher.NewRegistry(o.rdb, matcher.DefaultRegistryConfig()); err != nil {
		o.close()
		return nil, err
	}
	return o, nil
}

func (o *ownership) run(ctx context.Context, g *errgroup.Group) {
	addr := o.ln.Addr().String()
	o.log.Info("worker query RPC listening", "addr", addr)
	g.Go(func() error {
		if err := o.srv.Serve(o.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("query RPC server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		err := o.reg.HeartbeatOn(ctx, addr, o.w.Owned, func(p positions.Partition, err error) {
			o.log.Warn("a newer owner holds a partition this worker still has", "partition", p, "err", err)
		}, o.w.OwnedChanged())
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		o.srv.Shutdown(sctx)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
}

func (o *ownership) close() {
	o.ln.Close()
	o.rdb.Close()
}

// WorkerMetricsPath serves a worker's Prometheus metrics on its query RPC
// listener.
const WorkerMetricsPath = "/metrics"

// workerMetrics reads the metrics of every worker that owns a partition,
// as the registry names them, for an api process's alert panels. A worker
// that does not answer within a second is left out.
type workerMetrics struct {
	reg   *matcher.Registry
	parts int32
	hc    *http.Client
}

func (m workerMetrics) Gather(ctx context.Context) ([]*dto.MetricFamily, error) {
	all := make([]positions.Partition, m.parts)
	for i := range all {
		all[i] = positions.Partition(i)
	}
	owners, err := m.reg.Resolve(ctx, all)
	if err != nil {
		return nil, err
	}
	addrs := map[string]bool{}
	for _, o := range owners {
		addrs[o.Addr] = true
	}
	var mu sync.Mutex
	var out []*dto.MetricFamily
	var wg sync.WaitGroup
	for addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(rctx, "GET", "http://"+addr+WorkerMetricsPath, nil)
			resp, err := m.hc.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return
			}
			p := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := p.TextToMetricFamilies(resp.Body)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			out = slices.AppendSeq(out, maps.Values(fams))
		}()
	}
	wg.Wait()
	return out, nil
}

// ownersSupply sums cell counts over every partition, asking each owner
// for its partitions in parallel; partitions with no live owner or whose
// owner failed are reported missed.
type ownersSupply struct {
	owners matcher.Owners
	parts  int32
}

func (s ownersSupply) CellCounts(ctx context.Context, res int, f positions.Filter) (map[geo.Cell]int, []positions.Partition, error) {
	all := make([]positions.Partition, s.parts)
	for i := range all {
		all[i] = positions.Partition(i)
	}
	groups, missed := s.owners.Lookup(ctx, all)
	var out map[geo.Cell]int // the first answer, which the others add into
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := g.Querier.CellCounts(ctx, positions.CellCountsRequest{Partitions: g.Partitions, Res: res, Filter: f})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.owners.Stale(g.Owner, g.Partitions)
				missed = append(missed, g.Partitions...)
				return
			}
			missed = append(missed, r.Missed...)
			if out == nil && r.Counts != nil {
				out = r.Counts
				return
			}
			for c, n := range r.Counts {
				out[c] += n
			}
		}()
	}
	wg.Wait()
	if out == nil {
		out = make(map[geo.Cell]int)
	}
	return out, missed, nil
}
