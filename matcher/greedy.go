package matcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

// GreedyConfig configures a Greedy matcher.
type GreedyConfig struct {
	// ETA ranks candidates; the nearest by distance is not always the
	// soonest at the pickup.
	ETA geo.ETAFunc
	// OfferTTL is the lease a match takes on its driver: how long the
	// driver has to accept. Zero means the Leases' OfferTTL.
	OfferTTL time.Duration
	// MaxAttempts bounds the reservations tried per match: under heavy
	// contention a rider gets an answer (no driver) rather than a walk
	// down the whole list.
	MaxAttempts int
}

// DefaultGreedyConfig returns straight-line ETAs and up to 8 attempts.
func DefaultGreedyConfig() GreedyConfig {
	return GreedyConfig{ETA: geo.DefaultETA.ETA, MaxAttempts: 8}
}

// Validate checks c.
func (c GreedyConfig) Validate() error {
	switch {
	case c.ETA == nil:
		return fmt.Errorf("%w: ETA is nil", ErrInvalidConfig)
	case c.OfferTTL < 0:
		return fmt.Errorf("%w: OfferTTL %v is negative", ErrInvalidConfig, c.OfferTTL)
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: MaxAttempts %d must be at least 1", ErrInvalidConfig, c.MaxAttempts)
	}
	return nil
}

// Greedy is the first-come policy: each request gets the best driver free
// right now, ranked by ETA, reserved through Leases; when another ride
// took that driver first it falls back to the next.
//
// Safe for concurrent use; its only state is the Widened counter.
type Greedy struct {
	gather  *Gatherer
	leases  *Leases
	cfg     GreedyConfig
	widened atomic.Uint64 // further gathers (see Match)
}

// Widened counts the wider gathers matches made after the nearest
// candidates were all taken.
func (m *Greedy) Widened() uint64 { return m.widened.Load() }

// NewGreedy returns a Greedy matcher.
func NewGreedy(g *Gatherer, l *Leases, cfg GreedyConfig) (*Greedy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if g == nil || l == nil {
		return nil, fmt.Errorf("%w: nil Gatherer or Leases", ErrInvalidConfig)
	}
	return &Greedy{gather: g, leases: l, cfg: cfg}, nil
}

// MatchRequest asks for a driver for one ride.
type MatchRequest struct {
	Ride   RideID
	Pickup geo.LatLng
	// Exclude holds drivers not to offer again (they declined this ride
	// or let the offer time out).
	Exclude []positions.DriverID
}

// Match is a reserved driver: the offer can go out. The ride owns the
// lease until Token is committed (accept) or released (decline, cancel),
// or the offer expires.
type Match struct {
	Ride   RideID
	Driver positions.Candidate
	ETA    time.Duration
	Token  Token
	// Tried is how many reservations were attempted (1 = no contention).
	Tried int
	// Partial, Ring and RadiusM describe the gather: a partial gather
	// may have missed a nearer driver.
	Partial bool
	Ring    int
	RadiusM float64
}

// Ranked is a candidate with its ETA.
type Ranked struct {
	positions.Candidate
	ETA time.Duration
}

// Rank orders candidates by ETA from their position to pickup, then
// distance, then ID, so that equal inputs give equal offers.
func Rank(cands []positions.Candidate, pickup geo.LatLng, eta geo.ETAFunc) []Ranked {
	out := make([]Ranked, len(cands))
	for i, c := range cands {
		out[i] = Ranked{Candidate: c, ETA: eta(c.Pos, pickup)}
	}
	slices.SortFunc(out, func(a, b Ranked) int {
		if c := cmp.Compare(a.ETA, b.ETA); c != 0 {
			return c
		}
		if c := cmp.Compare(a.DistanceM, b.DistanceM); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// Match gathers candidates near the pickup, ranks them by ETA and
// reserves the first that is free. It returns ErrNoDriver when none could
// be reserved (none near, all taken, or MaxAttempts contended), and an
// error wrapping ErrUnavailable as soon as Redis fails: no second
// candidate is tried then, so a Redis outage costs one fast failure.
func (m *Greedy) Match(ctx context.Context, req MatchRequest) (Match, error) {
	if err := req.Ride.Validate(); err != nil {
		return Match{}, err
	}
	// The nearest few first (the gatherer's MinCandidates); when every one
	// of them is taken or excluded and the gather found as many as it was
	// asked for, there are more drivers farther out: gather a wider set
	// (widenFactor times as many, up to positions.MaxK) and go on down
	// the ranking, rather than answer "no driver" while free drivers are
	// in reach. Busy drivers stay "available" in the index until their
	// next report, so at peak the nearest few are often all taken.
	// Candidates this process saw leased lately (Leases.Held) are passed
	// over without a round trip, and tried last, in rank order, should
	// nobody else be free.
	var match Match
	var later []Ranked
	found := 0 // drivers the last gather returned
	seen := make(map[positions.DriverID]bool)
	n := m.gather.cfg.MinCandidates
	for widened := 0; ; widened++ {
		gr, err := m.gather.Gather(ctx, req.Pickup, n)
		if err != nil {
			if widened == 0 {
				return Match{}, err
			}
			break
		}
		match.Ride, match.Partial, match.Ring, match.RadiusM = req.Ride, gr.Partial, gr.Ring, gr.RadiusM
		found = len(gr.Candidates)
		for _, c := range Rank(gr.Candidates, req.Pickup, m.cfg.ETA) {
			if match.Tried == m.cfg.MaxAttempts {
				break
			}
			if seen[c.ID] || slices.Contains(req.Exclude, c.ID) {
				continue
			}
			seen[c.ID] = true
			if m.leases.Held(c.ID) {
				m.leases.stats.skipped.Add(1)
				later = append(later, c)
				continue
			}
			ok, err := m.reserve(ctx, req, c, &match)
			if ok || err != nil {
				return match, err
			}
		}
		next := min(n*widenFactor, positions.MaxK-m.gather.cfg.DupSlack)
		if match.Tried == m.cfg.MaxAttempts || len(gr.Candidates) < n || next <= n {
			break // out of attempts, or nobody more within the gather's reach
		}
		m.widened.Add(1)
		n = next
	}
	for _, c := range later {
		if match.Tried == m.cfg.MaxAttempts {
			break
		}
		ok, err := m.reserve(ctx, req, c, &match)
		if ok || err != nil {
			return match, err
		}
	}
	return match, fmt.Errorf("ride %s: %d candidates within %.0f m, %d tried: %w", req.Ride, found, match.RadiusM, match.Tried, ErrNoDriver)
}

// widenFactor is how much wider each further gather of a match is.
const widenFactor = 4

// reserve tries to lease c for req, counting the try on match; on success
// match names the driver. It reports false with no error when another
// ride holds the driver.
func (m *Greedy) reserve(ctx context.Context, req MatchRequest, c Ranked, match *Match) (bool, error) {
	match.Tried++
	tok, err := m.leases.Reserve(ctx, c.ID, req.Ride, m.cfg.OfferTTL)
	if errors.Is(err, ErrDriverTaken) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	match.Driver, match.ETA, match.Token = c.Candidate, c.ETA, tok
	return true, nil
}
