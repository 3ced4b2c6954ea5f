package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// ratiosFromFile prints the ratio table of the results in path (JSON
// lines as hexbench prints them; "-" reads stdin). Lines that are not
// results are skipped, so a file may hold other records too.
func ratiosFromFile(path string, stdin io.Reader, w io.Writer) error {
	in := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	var all []Result
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r Result
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.System != "" && r.Workload != "" {
			all = append(all, r)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	printRatios(w, all)
	return nil
}

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
		if strings.HasPrefix(r.System, "hexdispatch/") {
			continue // hexdispatch on another backend (match-e2e on redis-server): not a peer
		}
		// The best peer has the higher rate (for mixed, the total: updates
		// and queries come in a fixed proportion, so it is also the higher
		// of each) or the smaller memory.
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
		case o.UpdatesPerS > 0 && p.UpdatesPerS > 0 && o.QueriesPerS > 0 && p.QueriesPerS > 0:
			fmt.Fprintf(tw, "%s updates\t%d\t%.0f/s\t%.0f/s\t%.1fx\t\n", k.workload, k.drivers, o.UpdatesPerS, p.UpdatesPerS, o.UpdatesPerS/p.UpdatesPerS)
			fmt.Fprintf(tw, "%s queries\t%d\t%.0f/s\t%.0f/s\t%.1fx\t\n", k.workload, k.drivers, o.QueriesPerS, p.QueriesPerS, o.QueriesPerS/p.QueriesPerS)
		case o.OpsPerS > 0 && p.OpsPerS > 0:
			fmt.Fprintf(tw, "%s\t%d\t%.0f/s\t%.0f/s\t%.1fx\t\n", k.workload, k.drivers, o.OpsPerS, p.OpsPerS, o.OpsPerS/p.OpsPerS)
		}
	}
	tw.Flush()
}
