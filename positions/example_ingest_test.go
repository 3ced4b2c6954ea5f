package positions_test

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// A gateway publishes positions; a cell worker consumes them into one
// Index per partition and answers queries. Kafka here is in-process.
func ExampleWorker() {
	// Like cmd/devbroker, allow session timeouts under Kafka's default 6 s
	// minimum: the worker's 3 s default is what bounds failover.
	cluster, err := kfake.NewCluster(kfake.SeedTopics(4, positions.DefaultTopic), kfake.SeedTopics(1, positions.DefaultDLQTopic),
		kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		panic(err)
	}
	defer cluster.Close()

	pcfg := positions.DefaultPublisherConfig()
	pcfg.Brokers, pcfg.Partitioner.Partitions, pcfg.Logger = cluster.ListenAddrs(), 4, quietLogger()
	pub, err := positions.NewPublisher(pcfg)
	if err != nil {
		panic(err)
	}
	wcfg := positions.DefaultWorkerConfig()
	wcfg.Brokers, wcfg.Logger = cluster.ListenAddrs(), quietLogger()
	worker, err := positions.NewWorker(wcfg)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return pub.Run(ctx) })
	g.Go(func() error { return worker.Run(ctx) })
	defer func() { cancel(); g.Wait() }()

	pub.Publish(positions.Event{Driver: "ana", Pos: geo.LatLng{Lat: 37.7793, Lng: -122.4193}, Status: positions.StatusAvailable, Seq: 1})
	pub.Publish(positions.Event{Driver: "ben", Pos: geo.LatLng{Lat: 37.7810, Lng: -122.4110}, Status: positions.StatusAvailable, Seq: 1})
	pub.Flush(ctx)

	// Ask every partition; poll until both drivers are in (the worker
	// joins the group and rebuilds first).
	req := positions.NearestRequest{Partitions: []positions.Partition{0, 1, 2, 3},
		Center: geo.LatLng{Lat: 37.7790, Lng: -122.4180}, K: 5, RadiusM: 2000, Filter: positions.Available}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, err := worker.Nearest(ctx, req)
		if err != nil {
			panic(err)
		}
		if len(resp.Missed) == 0 && len(resp.Candidates) == 2 {
			for _, c := range resp.Candidates {
				fmt.Printf("%s %.0f m\n", c.ID, c.DistanceM)
			}
			break
		}
	}
	// Output:
	// ana 119 m
	// ben 654 m
}
