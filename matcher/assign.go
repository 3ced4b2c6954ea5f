package matcher

import (
	"errors"
	"fmt"
	"math"
)

// The assignment solver behind the batched policy. It is pure (no I/O, no
// clocks) and allocation-free once a Solver's buffers have grown to the
// largest window it has seen.

var (
	// ErrInvalidCost is returned for a cost matrix holding NaN, a negative
	// cost or -Inf. The wrapping error names the cell.
	ErrInvalidCost = errors.New("invalid assignment cost")
	// ErrMatrixShape is returned for a matrix whose dimensions do not match
	// its backing slice, or a negative dimension.
	ErrMatrixShape = errors.New("invalid cost matrix shape")
)

// Infeasible marks a rider-driver pair that must never be assigned. Any
// cost above the solver's MaxCost is infeasible as well.
var Infeasible = math.Inf(1)

// Unassigned is the column of a row that got no driver.
const Unassigned = -1

// CostMatrix is a dense Rows x Cols matrix of pair costs, row-major: rows
// are riders, columns are drivers and Cost[i*Cols+j] is the cost (pickup
// ETA in seconds) of giving driver j to rider i. Costs are finite and >= 0,
// or [Infeasible].
type CostMatrix struct {
	Rows, Cols int
	Cost       []float64
}

// NewCostMatrix returns a rows x cols matrix with every pair infeasible.
func NewCostMatrix(rows, cols int) *CostMatrix {
	m := &CostMatrix{}
	m.Reset(rows, cols)
	return m
}

// Reset reshapes m to rows x cols, reusing its backing array when it is
// large enough, and marks every pair infeasible.
func (m *CostMatrix) Reset(rows, cols int) {
	n := rows * cols
	if cap(m.Cost) < n {
		m.Cost = make([]float64, n)
	}
	m.Rows, m.Cols, m.Cost = rows, cols, m.Cost[:n]
	for i := range m.Cost {
		m.Cost[i] = Infeasible
	}
}

// At returns the cost of pair (i, j).
func (m *CostMatrix) At(i, j int) float64 { return m.Cost[i*m.Cols+j] }

// Set sets the cost of pair (i, j).
func (m *CostMatrix) Set(i, j int, c float64) { m.Cost[i*m.Cols+j] = c }

// Validate checks the shape and that every cost is >= 0 and not NaN
// (+Inf is allowed: it is [Infeasible]).
func (m *CostMatrix) Validate() error {
	if m.Rows < 0 || m.Cols < 0 || len(m.Cost) != m.Rows*m.Cols {
		return fmt.Errorf("%w: %dx%d with %d costs", ErrMatrixShape, m.Rows, m.Cols, len(m.Cost))
	}
	for k, c := range m.Cost {
		if !(c >= 0) { // catches NaN, negatives and -Inf
			return fmt.Errorf("%w: cost[%d][%d] = %v (want a finite cost >= 0 or +Inf)", ErrInvalidCost, k/m.Cols, k%m.Cols, c)
		}
	}
	return nil
}

// Assignment is a solution: Col[i] is the column (driver) given to row
// (rider) i, or [Unassigned].
type Assignment struct {
	Col      []int
	Assigned int     // rows with a column
	Total    float64 // sum of the assigned pairs' costs
}

// Mean returns the mean cost of the assigned pairs, 0 when none is.
func (a *Assignment) Mean() float64 {
	if a.Assigned == 0 {
		return 0
	}
	return a.Total / float64(a.Assigned)
}

func (a *Assignment) reset(rows int) {
	if cap(a.Col) < rows {
		a.Col = make([]int, rows)
	}
	a.Col = a.Col[:rows]
	for i := range a.Col {
		a.Col[i] = Unassigned
	}
	a.Assigned, a.Total = 0, 0
}

// Solver finds a min-cost assignment of rows (riders) to columns
// (drivers). The objective, in this order:
//
//  1. maximise the number of assigned rows, using feasible pairs only (cost
//     finite and <= MaxCost);
//  2. among those assignments, minimise the total cost.
//
// A rider is never given an infeasible driver; a rider is left unassigned
// only when no maximum-cardinality assignment can serve it. Rows and columns
// may differ in number. Among equally good assignments the choice is
// deterministic for a given matrix but otherwise unspecified. Totals are
// float64 sums, exact up to rounding.
//
// # Method
//
// Each row i gets a private slack column ("leave i unassigned") of cost P,
// where P = k*cmax + 1, k = min(rows, cols) and cmax is the largest feasible
// cost. Any assignment's feasible cost is at most k*cmax < P, so trading
// one more unassigned row for any saving in cost never pays: minimising
// (assigned cost + P x unassigned rows) is exactly the objective above, and
// a full row assignment always exists. That extended problem (rows x
// (cols + rows)) is solved with the shortest augmenting path method of
// Jonker and Volgenant (1987) in the rectangular form described by Crouse
// ("On implementing 2D rectangular assignment algorithms", IEEE TAES 2016):
// for each row, a Dijkstra search over reduced costs c - u - v finds the
// cheapest augmenting path to a free column, then the duals u, v are
// updated so reduced costs stay >= 0 and the path is flipped. A warm start
// (augmenting row reduction, see reduceRows) assigns most rows before any
// search. Slack columns are implicit: row i's slack joins a search only
// when row i is reached, since no other row can use it, so a search scans
// cols + (rows reached) columns, not cols + rows. Rows with no feasible
// pair are parked on their slack up front. Worst case O(rows^2 * (cols +
// rows)) time; memory O(rows * cols) for a working copy of the costs.
//
// The zero Solver is ready to use. A Solver is not safe for concurrent use;
// keep one per goroutine (for example per region's batch loop).
type Solver struct {
	// MaxCost, when > 0, makes every cost above it infeasible (for pickup
	// ETAs: MaxPickupETA in seconds). Zero means only +Inf is infeasible.
	MaxCost float64

	u, v    []float64 // duals of rows and of columns (real, then slack)
	spc     []float64 // settled distance of each column in one search
	path    []int32   // row preceding each column on the shortest path
	col4row []int32
	row4col []int32
	cost    []float64 // the matrix with pairs above MaxCost set to +Inf
	dist    []float64 // working distance of each real column in one search
	vscan   []float64 // v of the real columns, -Inf once settled
	slacks  []int32   // slack columns reached but not settled
	free    []int32   // rows without a column during the warm start
	rowsHit []int32   // rows reached by the current search, for the dual update
	colsHit []int32   // columns settled by the current search
}

// Solve fills out with an optimal assignment for m (see [Solver] for the
// objective). out's slice is reused. It fails on a malformed matrix or an
// invalid cost, leaving out empty.
func (s *Solver) Solve(m *CostMatrix, out *Assignment) error {
	out.reset(0)
	if err := m.Validate(); err != nil {
		return err
	}
	if math.IsNaN(s.MaxCost) || s.MaxCost < 0 {
		return fmt.Errorf("%w: MaxCost %v", ErrInvalidCost, s.MaxCost)
	}
	limit := s.MaxCost
	if limit == 0 {
		limit = math.MaxFloat64
	}
	rows, cols := m.Rows, m.Cols
	out.reset(rows)
	if rows == 0 || cols == 0 {
		return nil
	}
	cmax := 0.0
	for _, c := range m.Cost {
		if c <= limit && c > cmax {
			cmax = c
		}
	}
	penalty := float64(min(rows, cols))*cmax + 1
	if penalty > math.MaxFloat64/4 {
		out.reset(0)
		return fmt.Errorf("%w: largest feasible cost %v is too large to rank assignments", ErrInvalidCost, cmax)
	}
	s.grow(rows, cols)

	n := cols + rows // real columns, then row i's slack at cols+i
	for j := range n {
		s.v[j] = 0
		s.row4col[j] = -1
	}
	// Work on a copy where every infeasible pair is +Inf, so the search
	// needs no feasibility branch: an infinite reduced cost never wins.
	for k, c := range m.Cost {
		if c > limit {
			c = math.Inf(1)
		}
		s.cost[k] = c
	}
	s.reduceRows(rows, cols, penalty)

	for cur := range rows {
		if s.col4row[cur] >= 0 {
			continue
		}
		sink, minVal := s.search(cols, penalty, cur)
		if sink < 0 {
			// Unreachable: the row's own slack is always a free column.
			out.reset(0)
			return fmt.Errorf("matcher: assignment search found no free column for row %d", cur)
		}
		// Dual update over the rows and columns this search touched.
		s.u[cur] += minVal
		for _, i := range s.rowsHit {
			if int(i) != cur {
				s.u[i] += minVal - s.spc[s.col4row[i]]
			}
		}
		for _, j := range s.colsHit {
			s.v[j] -= minVal - s.spc[j]
		}
		// Flip the augmenting path.
		for j := int32(sink); ; {
			i := s.path[j]
			s.row4col[j] = i
			j, s.col4row[i] = s.col4row[i], j
			if int(i) == cur {
				break
			}
		}
	}

	for i := range rows {
		if j := int(s.col4row[i]); j < cols {
			out.Col[i] = j
			out.Assigned++
			out.Total += m.Cost[i*cols+j]
		}
	}
	return nil
}

// reduceRows is the warm start: Jonker and Volgenant's augmenting row
// reduction, which assigns most rows before any shortest path search.
//
// Each free row i finds its lowest and second-lowest h = c - v (u1 at j1,
// u2 at j2, over the real columns and its own slack), takes j1 and lowers
// v[j1] by u2 - u1 so that j1 stays i's cheapest column, evicting j1's
// previous row. Invariants that the search then relies on: every assigned
// row sits on a column minimising c - v; only columns that become (and
// stay) assigned have v lowered, so v <= 0 and free columns keep v = 0,
// which the rectangular method requires. Two passes over the free rows, as
// in the paper, with a step budget since floating-point differences can
// make the eviction chains long; rows still free go to the search.
// Rows with no feasible pair are parked on their slack with u = P; no
// other row can reach them. Finally u is set to the tightest dual: c - v
// on the assigned column, min(c - v) for free rows.
func (s *Solver) reduceRows(rows, cols int, penalty float64) {
	free := s.free[:0]
	for i := range rows {
		s.col4row[i] = -1
		feasible := false
		for _, c := range s.cost[i*cols : (i+1)*cols] {
			if c < math.Inf(1) {
				feasible = true
				break
			}
		}
		if feasible {
			free = append(free, int32(i))
			continue
		}
		s.col4row[i] = int32(cols + i)
		s.row4col[cols+i] = int32(i)
	}
	v, row4col := s.v, s.row4col
	budget := 8*rows + 64
	for pass := 0; pass < 2 && len(free) > 0 && budget > 0; pass++ {
		k, next := 0, 0
		for k < len(free) && budget > 0 {
			budget--
			i := int(free[k])
			k++
			u1, u2, j1, j2 := math.Inf(1), math.Inf(1), -1, -1
			for j, c := range s.cost[i*cols : (i+1)*cols] {
				if h := c - v[j]; h < u2 {
					if h < u1 {
						u2, j2, u1, j1 = u1, j1, h, j
					} else {
						u2, j2 = h, j
					}
				}
			}
			if h, j := penalty-v[cols+i], cols+i; h < u2 {
				if h < u1 {
					u2, j2, u1, j1 = u1, j1, h, j
				} else {
					u2, j2 = h, j
				}
			}
			i0 := row4col[j1]
			lowered := false
			switch {
			case u1 < u2 && !math.IsInf(u2, 1):
				v[j1] -= u2 - u1
				lowered = true
			case u1 == u2 && i0 >= 0:
				j1, i0 = j2, row4col[j2] // a tie: prefer the other column
			}
			s.col4row[i] = int32(j1)
			row4col[j1] = int32(i)
			if i0 < 0 {
				continue
			}
			s.col4row[i0] = -1
			if lowered {
				k-- // chase the evicted row now
				free[k] = i0
			} else {
				free[next] = i0
				next++
			}
		}
		if budget > 0 {
			free = free[:next]
		}
	}
	for i := range rows {
		if j := int(s.col4row[i]); j >= cols {
			s.u[i] = penalty - v[j]
		} else if j >= 0 {
			s.u[i] = s.cost[i*cols+j] - v[j]
		} else {
			u := penalty - v[cols+i]
			for j, c := range s.cost[i*cols : (i+1)*cols] {
				u = min(u, c-v[j])
			}
			s.u[i] = u
		}
	}
}

// search runs one Dijkstra over reduced costs from row cur and returns the
// free column it reached (or -1) and the path's length. It leaves the rows
// and columns it touched in rowsHit and colsHit, and each settled column's
// distance in spc.
//
// The real columns are scanned in index order over flat arrays, which is
// several times faster than chasing a list of unsettled columns: a settled
// column is taken out of the scan by setting its working distance to +Inf
// and its working dual to -Inf, so that no row can lower it again.
func (s *Solver) search(cols int, penalty float64, cur int) (int, float64) {
	dist, vs := s.dist[:cols], s.vscan[:cols]
	path, row4col := s.path[:cols], s.row4col[:cols]
	copy(vs, s.v[:cols])
	for j := range dist {
		dist[j] = math.Inf(1)
	}
	s.slacks = s.slacks[:0]
	s.rowsHit, s.colsHit = s.rowsHit[:0], s.colsHit[:0]
	minVal := 0.0
	i := cur
	for {
		s.rowsHit = append(s.rowsHit, int32(i))
		base := minVal - s.u[i]

		// Real columns: the hot loop.
		row := s.cost[i*cols : (i+1)*cols]
		row = row[:len(dist)]
		vs := vs[:len(dist)]
		path := path[:len(dist)]
		lowest, index, inSlacks := math.Inf(1), -1, false
		i32 := int32(i)
		for j, c := range row {
			// Branch-free relaxation: early in a search most columns
			// improve, later almost none do, and the branch mispredicts.
			d, p := dist[j], path[j]
			r := base + c - vs[j]
			if r < d {
				p = i32
			}
			d = min(d, r)
			dist[j], path[j] = d, p
			// Ties go to a free column: the search can stop there.
			if d < lowest || (d == lowest && row4col[j] < 0 && !math.IsInf(d, 1)) {
				lowest, index = d, j
			}
		}
		// Slack columns: row i's own joins now (only row i can use it);
		// those of rows reached earlier keep their cost. All are free.
		slack := int32(cols + i)
		s.spc[slack] = base + penalty - s.v[slack]
		s.path[slack] = int32(i)
		s.slacks = append(s.slacks, slack)
		lowestFree := index >= 0 && row4col[index] < 0
		for k, j := range s.slacks {
			if sp := s.spc[j]; sp < lowest || (sp == lowest && !lowestFree) {
				lowest, index, inSlacks = sp, k, true
			}
		}
		if index < 0 || math.IsInf(lowest, 1) {
			return -1, 0
		}
		minVal = lowest
		var j int32
		if inSlacks {
			j = s.slacks[index]
			s.slacks[index] = s.slacks[len(s.slacks)-1]
			s.slacks = s.slacks[:len(s.slacks)-1]
		} else {
			j = int32(index)
			s.spc[j] = lowest
			dist[j] = math.Inf(1)
			vs[j] = math.Inf(-1)
		}
		s.colsHit = append(s.colsHit, j)
		if s.row4col[j] < 0 {
			return int(j), minVal
		}
		i = int(s.row4col[j])
	}
}

func (s *Solver) grow(rows, cols int) {
	n := rows + cols
	if cap(s.dist) < cols {
		s.dist = make([]float64, cols)
		s.vscan = make([]float64, cols)
	}
	if cap(s.cost) < rows*cols {
		s.cost = make([]float64, rows*cols)
	}
	s.cost = s.cost[:rows*cols]
	if cap(s.u) < rows {
		s.u = make([]float64, rows)
		s.col4row = make([]int32, rows)
		s.rowsHit = make([]int32, 0, rows)
		s.slacks = make([]int32, 0, rows)
		s.free = make([]int32, 0, rows)
	}
	if cap(s.v) < n {
		s.v = make([]float64, n)
		s.spc = make([]float64, n)
		s.path = make([]int32, n)
		s.row4col = make([]int32, n)
		s.colsHit = make([]int32, 0, n)
	}
	s.u, s.col4row = s.u[:rows], s.col4row[:rows]
	s.v, s.spc, s.path, s.row4col = s.v[:n], s.spc[:n], s.path[:n], s.row4col[:n]
}

// Assign solves m with a fresh [Solver] (maxCost as [Solver.MaxCost]).
// Loops that solve many windows should keep a Solver instead.
func Assign(m *CostMatrix, maxCost float64) (Assignment, error) {
	s := Solver{MaxCost: maxCost}
	var a Assignment
	err := s.Solve(m, &a)
	return a, err
}

// GreedyAssign is the one-at-a-time policy on the same matrix: rows are
// taken in order (the caller puts riders in arrival order) and each takes
// its cheapest free feasible column, ties to the lowest column. taken is
// scratch space of at least m.Cols entries (nil allocates). The result
// is what matching riders one by one would have done on this window, for
// measuring the batched gain.
func GreedyAssign(m *CostMatrix, maxCost float64, taken []bool, out *Assignment) error {
	out.reset(0)
	if err := m.Validate(); err != nil {
		return err
	}
	if math.IsNaN(maxCost) || maxCost < 0 {
		return fmt.Errorf("%w: maxCost %v", ErrInvalidCost, maxCost)
	}
	limit := maxCost
	if limit == 0 {
		limit = math.MaxFloat64
	}
	if len(taken) < m.Cols {
		taken = make([]bool, m.Cols)
	}
	taken = taken[:m.Cols]
	clear(taken)
	out.reset(m.Rows)
	for i := range m.Rows {
		best, bestC := -1, math.Inf(1)
		for j, c := range m.Cost[i*m.Cols : (i+1)*m.Cols] {
			if c <= limit && c < bestC && !taken[j] {
				best, bestC = j, c
			}
		}
		if best >= 0 {
			taken[best] = true
			out.Col[i] = best
			out.Assigned++
			out.Total += bestC
		}
	}
	return nil
}
