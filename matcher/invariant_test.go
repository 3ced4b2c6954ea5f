package matcher_test

import (
	"strings"
	"testing"

	"github.com/hexdispatch/hexdispatch/matcher"
	"github.com/hexdispatch/hexdispatch/positions"
)

func TestCheckNoDoubleAssignment(t *testing.T) {
	c := func(d string, r matcher.RideID, tok matcher.Token) matcher.AssignmentEvent {
		return matcher.AssignmentEvent{Kind: matcher.AssignmentCommitted, Driver: positions.DriverID(d), Ride: r, Token: tok}
	}
	rel := func(d string, r matcher.RideID, tok matcher.Token) matcher.AssignmentEvent {
		return matcher.AssignmentEvent{Kind: matcher.AssignmentReleased, Driver: positions.DriverID(d), Ride: r, Token: tok}
	}
	tests := []struct {
		name    string
		events  []matcher.AssignmentEvent
		wantErr string
	}{
		{"empty", nil, ""},
		{"one trip", []matcher.AssignmentEvent{c("d1", "r1", 1), rel("d1", "r1", 1)}, ""},
		{"driver reused after release", []matcher.AssignmentEvent{c("d1", "r1", 1), rel("d1", "r1", 1), c("d1", "r2", 2)}, ""},
		{"ride re-matched after release", []matcher.AssignmentEvent{c("d1", "r1", 1), rel("d1", "r1", 1), c("d2", "r1", 7)}, ""},
		{"two drivers two rides", []matcher.AssignmentEvent{c("d1", "r1", 1), c("d2", "r2", 1)}, ""},
		{"driver twice", []matcher.AssignmentEvent{c("d1", "r1", 1), c("d1", "r2", 2)}, "driver d1 committed to ride r2 while committed to ride r1"},
		{"ride twice", []matcher.AssignmentEvent{c("d1", "r1", 1), c("d2", "r1", 1)}, "ride r1 committed to driver d2 while it holds driver d1"},
		{"token went back", []matcher.AssignmentEvent{c("d1", "r1", 5), rel("d1", "r1", 5), c("d1", "r2", 5)}, "not above its previous 5"},
		{"release not held", []matcher.AssignmentEvent{rel("d1", "r1", 1)}, "not held"},
		{"release with a stale token", []matcher.AssignmentEvent{c("d1", "r1", 2), rel("d1", "r1", 1)}, "not held"},
		{"unknown kind", []matcher.AssignmentEvent{{Driver: "d1", Ride: "r1"}}, "unknown kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := matcher.CheckNoDoubleAssignment(tt.events)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}
