package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/positions"
)

// Violation is one broken invariant.
type Violation struct {
	Kind   string `json:"kind"`
	Ride   string `json:"ride,omitempty"`
	Driver string `json:"driver,omitempty"`
	Detail string `json:"detail"`
}

// InvariantReport is what CheckRides found.
type InvariantReport struct {
	Checked          bool        `json:"checked"` // false when no event stream was available
	Events           int         `json:"events"`
	Rides            int         `json:"rides"`
	DoubleAssignment int         `json:"double_assignments"` // must be 0
	Lost             int         `json:"lost"`               // must be 0
	Inconsistent     int         `json:"inconsistent"`       // must be 0
	Violations       []Violation `json:"violations,omitempty"`
}

// OK reports whether no invariant was broken.
func (r InvariantReport) OK() bool {
	return r.DoubleAssignment == 0 && r.Lost == 0 && r.Inconsistent == 0
}

// maxViolations bounds the report's list; the counts stay exact.
const maxViolations = 50

func (r *InvariantReport) add(v Violation) {
	switch v.Kind {
	case "double_assignment":
		r.DoubleAssignment++
	case "lost":
		r.Lost++
	default:
		r.Inconsistent++
	}
	if len(r.Violations) < maxViolations {
		r.Violations = append(r.Violations, v)
	}
}

// CheckRides checks the ride-events stream against what clients saw:
//
//   - consistency: every ride's events, deduplicated by version, run from
//     version 1 ("requested") without gaps, each one a legal transition
//     (dispatch.Next) from the state the previous one left;
//   - no double assignment: a driver's committed rides (from accepted to
//     the ride's end) never overlap in time;
//   - nothing lost: every ride a client created has events, and its last
//     event is at least as far along as the last state the client saw.
//
// seen maps each ride a client created to the last state it observed (zero
// if none).
func CheckRides(events []dispatch.RideEvent, seen map[dispatch.RideID]dispatch.State) InvariantReport {
	rep := InvariantReport{Checked: true, Events: len(events)}
	byRide := map[dispatch.RideID][]dispatch.RideEvent{}
	for _, e := range events {
		byRide[e.Ride] = append(byRide[e.Ride], e)
	}
	rep.Rides = len(byRide)
	type commit struct {
		ride       dispatch.RideID
		start, end time.Time
	}
	commits := map[positions.DriverID][]commit{}
	last := map[dispatch.RideID]dispatch.State{}
	for id, evs := range byRide {
		slices.SortStableFunc(evs, func(a, b dispatch.RideEvent) int { return compareU64(a.Version, b.Version) })
		evs = slices.CompactFunc(evs, func(a, b dispatch.RideEvent) bool { return a.Version == b.Version })
		state := dispatch.State(0)
		var c *commit
		for i, e := range evs {
			if e.Version != uint64(i+1) {
				rep.add(Violation{Kind: "gap", Ride: string(id), Detail: fmt.Sprintf("version %d where %d was due", e.Version, i+1)})
				break
			}
			if i == 0 {
				if e.Kind != "requested" || e.To != dispatch.Requested {
					rep.add(Violation{Kind: "bad_start", Ride: string(id), Detail: fmt.Sprintf("first event %s to %s", e.Kind, e.To)})
					break
				}
			} else if e.From != state {
				rep.add(Violation{Kind: "bad_transition", Ride: string(id), Detail: fmt.Sprintf("v%d from %s, but the ride was %s", e.Version, e.From, state)})
				break
			} else if k, ok := eventKind(e.Kind); !ok {
				rep.add(Violation{Kind: "bad_transition", Ride: string(id), Detail: fmt.Sprintf("v%d unknown kind %q", e.Version, e.Kind)})
				break
			} else if next, err := dispatch.Next(state, k); err != nil || next != e.To {
				rep.add(Violation{Kind: "bad_transition", Ride: string(id), Detail: fmt.Sprintf("v%d %s: %s -> %s is not legal", e.Version, e.Kind, state, e.To)})
				break
			}
			state = e.To
			if e.To == dispatch.Accepted {
				c = &commit{ride: id, start: e.At}
				commits[e.Driver] = append(commits[e.Driver], *c)
			}
			if c != nil && e.To.Terminal() {
				cs := commits[e.Driver]
				cs[len(cs)-1].end = e.At
			}
		}
		last[id] = state
	}
	for d, cs := range commits {
		slices.SortFunc(cs, func(a, b commit) int { return a.start.Compare(b.start) })
		for i := 1; i < len(cs); i++ {
			prev := cs[i-1]
			if prev.end.IsZero() || cs[i].start.Before(prev.end) {
				rep.add(Violation{Kind: "double_assignment", Driver: string(d), Ride: string(cs[i].ride),
					Detail: fmt.Sprintf("accepted at %s while still on ride %s", cs[i].start.Format(time.RFC3339Nano), prev.ride)})
			}
		}
	}
	for id, st := range seen {
		got, ok := last[id]
		switch {
		case !ok:
			rep.add(Violation{Kind: "lost", Ride: string(id), Detail: "created, but no event on the ride-events topic"})
		case st.Valid() && stateRank(got) < stateRank(st):
			rep.add(Violation{Kind: "lost", Ride: string(id), Detail: fmt.Sprintf("the rider saw %s, the last event says %s", st, got)})
		}
	}
	return rep
}

// stateRank orders states along the lifecycle; every terminal state ranks
// last.
func stateRank(s dispatch.State) int {
	if s.Terminal() {
		return int(dispatch.Completed)
	}
	return int(s)
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// eventKind maps a RideEvent's kind back to the EventKind.
func eventKind(name string) (dispatch.EventKind, bool) {
	for k := dispatch.EvSearch; k < 255; k++ {
		if n := k.String(); n == name {
			return k, true
		} else if strings.HasPrefix(n, "event(") {
			break // past the last kind
		}
	}
	return 0, false
}

// ReadRideEvents reads the whole ride-events topic from brokers, up to its
// end offsets as of the call. Records that do not decode are reported as
// inconsistent by the caller through the returned count.
func ReadRideEvents(ctx context.Context, brokers []string, topic string) ([]dispatch.RideEvent, int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, 0, err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, 0, fmt.Errorf("ride events end offsets: %w", err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	var out []dispatch.RideEvent
	bad := 0
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return out, bad, fmt.Errorf("reading ride events: %w", err)
		}
		fs.EachError(func(_ string, _ int32, e error) { err = e })
		if err != nil {
			return out, bad, fmt.Errorf("reading ride events: %w", err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			var e dispatch.RideEvent
			if json.Unmarshal(r.Value, &e) != nil {
				bad++
			} else {
				out = append(out, e)
			}
			if end, ok := want[r.Partition]; ok && r.Offset+1 >= end {
				delete(want, r.Partition)
			}
		})
	}
	return out, bad, nil
}
