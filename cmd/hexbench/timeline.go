package main

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// Timeline is the -timeline file: one CSV line per offered ride of
// match-e2e, in the order the requests were sent, so a tail can be seen
// spread over the run or bunched in a few stalls (a collection, a
// burst of work elsewhere on the machine).
type Timeline struct {
	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer
}

// TimelineHeader is the first line of a timeline file.
const TimelineHeader = "system,sent_unix_us,request_to_offer_us,request_to_send_us"

// createTimeline creates (or truncates) path and writes the header, so a
// bad path fails before any workload runs.
func createTimeline(path string) (*Timeline, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-timeline: %w", err)
	}
	t := &Timeline{f: f, w: bufio.NewWriter(f)}
	fmt.Fprintln(t.w, TimelineHeader)
	return t, nil
}

// TimelineRow is one offered ride: sent on hexbench's clock, the offer
// read at the driver ToOffer later and sent by the engine ToSend later
// (zero when the engine's send time is not known).
type TimelineRow struct {
	Sent            time.Time
	ToOffer, ToSend time.Duration
}

// Add writes system's rows, oldest request first.
func (t *Timeline) Add(system string, rows []TimelineRow) error {
	slices.SortFunc(rows, func(a, b TimelineRow) int { return a.Sent.Compare(b.Sent) })
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range rows {
		if _, err := fmt.Fprintf(t.w, "%s,%d,%d,%d\n", system, r.Sent.UnixMicro(), r.ToOffer.Microseconds(), r.ToSend.Microseconds()); err != nil {
			return fmt.Errorf("-timeline: %w", err)
		}
	}
	if err := t.w.Flush(); err != nil {
		return fmt.Errorf("-timeline: %w", err)
	}
	return nil
}

// Close flushes and closes the file.
func (t *Timeline) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	ferr := t.w.Flush()
	if err := t.f.Close(); ferr == nil {
		ferr = err
	}
	if ferr != nil {
		return fmt.Errorf("-timeline: %w", ferr)
	}
	return nil
}
