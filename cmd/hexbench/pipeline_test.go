package main

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestPipelineWorkloads runs both pipeline workloads at a toy size so that
// they keep working; the figures mean nothing here.
func TestPipelineWorkloads(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Kafka in-process")
	}
	for _, name := range []string{"pipeline", "pipeline-rebuild"} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := workloads[name].Run(ctx, Env{Drivers: 500, Duration: 300 * time.Millisecond, Seed: 1, Progress: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			// The last result of each workload is measured after a
			// drain, so it has consumed something even on a slow
			// (race-instrumented, shared) machine.
			if len(res) == 0 || res[len(res)-1].Ops == 0 || res[0].Workload != name {
				t.Errorf("results %+v: want the last with ops > 0", res)
			}
		})
	}
}
