package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// printRatios writes, per workload and size, ours / the best peer result:
// throughput ratios above 1 and memory ratios below 1 favour hexdispatch.
func printRatios(w io.Writer, results []Result) {
	type key struct {
		workload string
		drivers  int
		size     string
	}
	ours := map[key]Result{}
	best := map[key]Result{}
	var order []key
	for _, r := range results {
		k := key{r.Workload, r.Drivers, r.Size}
		if r.System == "hexdispatch" {
			if _, seen := ours[k]; !seen {
				order = append(order, k)
			}
			ours[k] = r
			continue
		}
		b, ok := best[k]
		if !ok || r.OpsPerS > b.OpsPerS || (r.BytesPerDriver > 0 && r.BytesPerDriver < b.BytesPerDriver) {
			best[k] = r
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tdrivers\thexdispatch\tpeer (best)\tratio ours/peer\t")
	for _, k := range order {
		o, p := ours[k], best[k]
		if p.System == "" {
			continue
		}
		switch {
		case o.BytesPerDriver > 0 && p.BytesPerDriver > 0:
			fmt.Fprintf(tw, "%s\t%d\t%.1f B/driver\t%.1f B/driver\t%.2fx\t\n", k.workload, k.drivers, o.BytesPerDriver, p.BytesPerDriver, o.BytesPerDriver/p.BytesPerDriver)
		case o.OpsPerS > 0 && p.OpsPerS > 0:
			fmt.Fprintf(tw, "%s\t%d\t%.0f/s\t%.0f/s\t%.1fx\t\n", k.workload, k.drivers, o.OpsPerS, p.OpsPerS, o.OpsPerS/p.OpsPerS)
		}
	}
	tw.Flush()
}
