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
			res, err := workloads[name].Run(ctx, Env{Drivers: 500, Duration: time.Second, Seed: 1, Progress: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.Ops == 0 || r.Workload != name {
					t.Errorf("result %+v: want ops > 0", r)
				}
			}
		})
	}
}
