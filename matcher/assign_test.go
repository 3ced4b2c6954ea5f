package matcher

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

var inF = Infeasible // short for the tables

func costsOf(rows [][]float64) *CostMatrix {
	cols := 0
	if len(rows) > 0 {
		cols = len(rows[0])
	}
	m := NewCostMatrix(len(rows), cols)
	for i, r := range rows {
		for j, c := range r {
			m.Set(i, j, c)
		}
	}
	return m
}

// checkAssignment verifies that a is a valid assignment for m: one column
// per row at most, each column once, feasible pairs only, and the reported
// count and total recomputed.
func checkAssignment(t *testing.T, m *CostMatrix, maxCost float64, a *Assignment) {
	t.Helper()
	if len(a.Col) != m.Rows {
		t.Fatalf("assignment has %d rows, matrix %d", len(a.Col), m.Rows)
	}
	used := make(map[int]int)
	n, total := 0, 0.0
	for i, j := range a.Col {
		if j == Unassigned {
			continue
		}
		if j < 0 || j >= m.Cols {
			t.Fatalf("row %d: column %d out of range", i, j)
		}
		if other, dup := used[j]; dup {
			t.Fatalf("column %d given to rows %d and %d", j, other, i)
		}
		used[j] = i
		c := m.At(i, j)
		if math.IsInf(c, 1) || (maxCost > 0 && c > maxCost) {
			t.Fatalf("row %d given infeasible column %d (cost %v, max %v)", i, j, c, maxCost)
		}
		n++
		total += c
	}
	if n != a.Assigned || !approxEq(total, a.Total) {
		t.Fatalf("reported assigned=%d total=%v, recomputed %d %v", a.Assigned, a.Total, n, total)
	}
}

func approxEq(a, b float64) bool { return math.Abs(a-b) <= 1e-9*(1+math.Abs(a)+math.Abs(b)) }

func TestAssignCrafted(t *testing.T) {
	tests := []struct {
		name      string
		cost      [][]float64
		maxCost   float64
		want      []int
		wantTotal float64
	}{
		{name: "empty", cost: [][]float64{}, want: []int{}},
		{name: "no drivers", cost: [][]float64{{}, {}}, want: []int{-1, -1}},
		{name: "1x1", cost: [][]float64{{7}}, want: []int{0}, wantTotal: 7},
		{name: "1xN picks cheapest", cost: [][]float64{{9, 3, 5, 3.5}}, want: []int{1}, wantTotal: 3},
		{name: "Nx1 cheapest rider wins", cost: [][]float64{{9}, {3}, {5}}, want: []int{-1, 0, -1}, wantTotal: 3},
		{name: "all infeasible", cost: [][]float64{{inF, inF}, {inF, inF}}, want: []int{-1, -1}},
		{name: "beyond MaxCost is infeasible", cost: [][]float64{{901, 100}, {200, 950}}, maxCost: 900, want: []int{1, 0}, wantTotal: 300},
		{name: "at MaxCost is feasible", cost: [][]float64{{900}}, maxCost: 900, want: []int{0}, wantTotal: 900},
		{
			// Greedy serves rider 0 first with driver 0 (60 s), leaving
			// rider 1 with driver 1 (600 s): 660 s. Crossing is 120+130.
			name: "crossing: greedy is worse",
			cost: [][]float64{{60, 120}, {130, 600}},
			want: []int{1, 0}, wantTotal: 250,
		},
		{
			// Greedy gives rider 0 the only driver rider 1 can use and
			// serves one rider; the optimum serves both.
			name: "cardinality before cost",
			cost: [][]float64{{10, 500}, {20, inF}},
			want: []int{1, 0}, wantTotal: 520,
		},
		{
			name: "more drivers than riders",
			cost: [][]float64{{5, 1, 9, 9}, {1, 5, 9, 9}},
			want: []int{1, 0}, wantTotal: 2,
		},
		{
			name: "more riders than drivers",
			cost: [][]float64{{5, 1}, {1, 5}, {3, 3}},
			want: []int{1, 0, -1}, wantTotal: 2,
		},
		{
			name: "rider with no feasible driver left out",
			cost: [][]float64{{inF, inF, inF}, {4, 2, 8}, {3, inF, 1}},
			want: []int{-1, 1, 2}, wantTotal: 3,
		},
		{name: "zero costs, any perfect matching", cost: [][]float64{{0, 0}, {0, 0}}},
	}
	var s Solver
	var a Assignment
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := costsOf(tt.cost)
			s.MaxCost = tt.maxCost
			if err := s.Solve(m, &a); err != nil {
				t.Fatal(err)
			}
			checkAssignment(t, m, tt.maxCost, &a)
			if !approxEq(a.Total, tt.wantTotal) {
				t.Errorf("total %v, want %v (cols %v)", a.Total, tt.wantTotal, a.Col)
			}
			if tt.want == nil {
				if a.Assigned != len(tt.cost) {
					t.Fatalf("cols %v, want all rows assigned", a.Col)
				}
				return
			}
			if len(tt.want) != len(a.Col) {
				t.Fatalf("cols %v, want %v", a.Col, tt.want)
			}
			for i := range tt.want {
				if a.Col[i] != tt.want[i] {
					t.Fatalf("cols %v, want %v", a.Col, tt.want)
				}
			}
		})
	}
}

func TestGreedyIsWorseOnCrossing(t *testing.T) {
	m := costsOf([][]float64{{60, 120}, {130, 600}})
	var g, o Assignment
	if err := GreedyAssign(m, 0, nil, &g); err != nil {
		t.Fatal(err)
	}
	if err := (&Solver{}).Solve(m, &o); err != nil {
		t.Fatal(err)
	}
	checkAssignment(t, m, 0, &g)
	if g.Col[0] != 0 || g.Col[1] != 1 || g.Total != 660 {
		t.Fatalf("greedy %v total %v, want [0 1] 660", g.Col, g.Total)
	}
	if o.Total != 250 || o.Total >= g.Total {
		t.Fatalf("optimal total %v, want 250 < greedy %v", o.Total, g.Total)
	}

	// Cardinality: greedy serves one rider where two can be served.
	m = costsOf([][]float64{{10, 500}, {20, inF}})
	if err := GreedyAssign(m, 0, nil, &g); err != nil {
		t.Fatal(err)
	}
	if g.Assigned != 1 {
		t.Fatalf("greedy assigned %d, want 1", g.Assigned)
	}
}

func TestAssignRejectsBadInput(t *testing.T) {
	tests := []struct {
		name    string
		m       *CostMatrix
		maxCost float64
		want    error
	}{
		{"NaN", costsOf([][]float64{{1, math.NaN()}}), 0, ErrInvalidCost},
		{"negative", costsOf([][]float64{{1}, {-0.5}}), 0, ErrInvalidCost},
		{"-Inf", costsOf([][]float64{{math.Inf(-1)}}), 0, ErrInvalidCost},
		{"negative MaxCost", costsOf([][]float64{{1}}), -1, ErrInvalidCost},
		{"NaN MaxCost", costsOf([][]float64{{1}}), math.NaN(), ErrInvalidCost},
		{"huge cost", costsOf([][]float64{{math.MaxFloat64 / 2}, {1}}), 0, ErrInvalidCost},
		{"short slice", &CostMatrix{Rows: 2, Cols: 2, Cost: make([]float64, 3)}, 0, ErrMatrixShape},
		{"negative rows", &CostMatrix{Rows: -1, Cols: 0}, 0, ErrMatrixShape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Assignment{Col: []int{3, 4}}
			err := (&Solver{MaxCost: tt.maxCost}).Solve(tt.m, &a)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Solve error %v, want %v", err, tt.want)
			}
			if len(a.Col) != 0 || a.Assigned != 0 {
				t.Fatalf("failed Solve left %+v", a)
			}
			if tt.name == "huge cost" {
				return // greedy has no penalty to overflow
			}
			if err := GreedyAssign(tt.m, tt.maxCost, nil, &a); !errors.Is(err, tt.want) {
				t.Fatalf("GreedyAssign error %v, want %v", err, tt.want)
			}
		})
	}
	err := (&Solver{}).Solve(costsOf([][]float64{{1, 2}, {3, math.NaN()}}), &Assignment{})
	if err == nil || err.Error() != "invalid assignment cost: cost[1][1] = NaN (want a finite cost >= 0 or +Inf)" {
		t.Fatalf("error does not name the cell: %v", err)
	}
}

// bruteForceAssign enumerates every partial assignment of m and returns the best
// by (most rows assigned, then least total).
func bruteForceAssign(m *CostMatrix, maxCost float64) (int, float64) {
	feasible := func(c float64) bool { return !math.IsInf(c, 1) && (maxCost == 0 || c <= maxCost) }
	bestN, bestT := -1, 0.0
	used := make([]bool, m.Cols)
	var rec func(i, n int, t float64)
	rec = func(i, n int, t float64) {
		if i == m.Rows {
			if n > bestN || (n == bestN && t < bestT) {
				bestN, bestT = n, t
			}
			return
		}
		rec(i+1, n, t) // row i unassigned
		for j := range m.Cols {
			if c := m.At(i, j); !used[j] && feasible(c) {
				used[j] = true
				rec(i+1, n+1, t+c)
				used[j] = false
			}
		}
	}
	rec(0, 0, 0)
	return bestN, bestT
}

// assignSeed returns SEED from the environment or a fresh one, and logs it
// so that a failure can be replayed.
func assignSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with SEED=%d)", seed, seed)
	return seed
}

// randomCosts fills a rows x cols matrix with a mix of cost styles: small
// integers (many ties), wide floats, and a share of infeasible pairs.
func randomCosts(rng *rand.Rand, rows, cols int) *CostMatrix {
	m := NewCostMatrix(rows, cols)
	pInf := []float64{0, 0.2, 0.5, 0.9}[rng.IntN(4)]
	ints := rng.IntN(2) == 0
	for k := range m.Cost {
		switch {
		case rng.Float64() < pInf:
			m.Cost[k] = Infeasible
		case ints:
			m.Cost[k] = float64(rng.IntN(10))
		default:
			m.Cost[k] = rng.Float64() * 1200
		}
	}
	return m
}

func TestAssignMatchesBruteForce(t *testing.T) {
	seed := assignSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	var s Solver // reused across cases: stale buffers must not leak
	var a, g Assignment
	cases := 20000
	if testing.Short() {
		cases = 1000
	}
	for c := range cases {
		rows, cols := rng.IntN(8)+1, rng.IntN(8)+1
		if rows*cols > 42 { // keep the 8x8 enumerations rare
			rows, cols = rng.IntN(6)+1, rng.IntN(8)+1
		}
		m := randomCosts(rng, rows, cols)
		maxCost := 0.0
		if rng.IntN(3) == 0 {
			maxCost = []float64{5, 600}[rng.IntN(2)]
		}
		s.MaxCost = maxCost
		if err := s.Solve(m, &a); err != nil {
			t.Fatalf("case %d: %v", c, err)
		}
		checkAssignment(t, m, maxCost, &a)
		wantN, wantT := bruteForceAssign(m, maxCost)
		if a.Assigned != wantN || !approxEq(a.Total, wantT) {
			t.Fatalf("case %d (%dx%d, max %v): solver assigned %d total %v, brute force %d total %v\ncost %v\ncols %v",
				c, rows, cols, maxCost, a.Assigned, a.Total, wantN, wantT, m.Cost, a.Col)
		}
		if err := GreedyAssign(m, maxCost, nil, &g); err != nil {
			t.Fatal(err)
		}
		checkAssignment(t, m, maxCost, &g)
		if g.Assigned > a.Assigned || (g.Assigned == a.Assigned && g.Total < a.Total-1e-9) {
			t.Fatalf("case %d: greedy (%d, %v) beats optimal (%d, %v)", c, g.Assigned, g.Total, a.Assigned, a.Total)
		}
	}
	// A few full 8x8 and 8xN/Nx8 shapes.
	for _, shape := range [][2]int{{8, 8}, {8, 3}, {3, 8}, {8, 1}, {1, 8}} {
		for range 4 {
			m := randomCosts(rng, shape[0], shape[1])
			s.MaxCost = 0
			if err := s.Solve(m, &a); err != nil {
				t.Fatal(err)
			}
			checkAssignment(t, m, 0, &a)
			if n, tot := bruteForceAssign(m, 0); a.Assigned != n || !approxEq(a.Total, tot) {
				t.Fatalf("%v: solver (%d, %v), brute force (%d, %v)\ncost %v", shape, a.Assigned, a.Total, n, tot, m.Cost)
			}
		}
	}
}

// TestAssignReuseLargerThenSmaller checks that a Solver carries nothing
// over between windows of different shapes.
func TestAssignReuseLargerThenSmaller(t *testing.T) {
	seed := assignSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	var s Solver
	var a Assignment
	for _, shape := range [][2]int{{40, 30}, {3, 5}, {30, 40}, {1, 1}, {0, 5}, {7, 7}} {
		m := randomCosts(rng, shape[0], shape[1])
		if err := s.Solve(m, &a); err != nil {
			t.Fatal(err)
		}
		checkAssignment(t, m, 0, &a)
		b, err := Assign(m, 0)
		if err != nil {
			t.Fatal(err)
		}
		if a.Assigned != b.Assigned || !approxEq(a.Total, b.Total) {
			t.Fatalf("%v: reused solver (%d, %v), fresh (%d, %v)", shape, a.Assigned, a.Total, b.Assigned, b.Total)
		}
	}
}

func TestAssignAllocations(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	m := randomCosts(rng, 60, 50)
	var s Solver
	var a Assignment
	if err := s.Solve(m, &a); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		if err := s.Solve(m, &a); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Solve with warm buffers allocates %v times", allocs)
	}
}

// benchCity is San Francisco's bounding box, where the benchmark scatters
// riders and drivers uniformly.
var benchCity = geo.BBox{MinLat: 37.70, MinLng: -122.52, MaxLat: 37.81, MaxLng: -122.36}

func cityPoint(rng *rand.Rand, b geo.BBox) geo.LatLng {
	return geo.LatLng{
		Lat: b.MinLat + rng.Float64()*(b.MaxLat-b.MinLat),
		Lng: b.MinLng + rng.Float64()*(b.MaxLng-b.MinLng),
	}
}

// hotspotPoint mirrors the benchmark city of package sim (which this
// package's tests do not import): 40% uniform over benchCity, the rest in
// Gaussian hot spots at the Financial District, SoMa, the Mission and the
// Marina. Demand and supply pile up in the same places, which makes long
// augmenting paths.
func hotspotPoint(rng *rand.Rand) geo.LatLng {
	hot := []struct{ lat, lng, sigmaM, w float64 }{
		{37.7946, -122.3999, 600, 0.25}, {37.7785, -122.4056, 800, 0.15},
		{37.7599, -122.4148, 700, 0.12}, {37.8037, -122.4368, 500, 0.08},
	}
	const mPerDeg = geo.EarthRadiusM * math.Pi / 180
	for {
		w := rng.Float64()
		if w < 0.4 {
			return cityPoint(rng, benchCity)
		}
		w -= 0.4
		h := hot[len(hot)-1]
		for _, c := range hot {
			if w < c.w {
				h = c
				break
			}
			w -= c.w
		}
		p := geo.LatLng{
			Lat: h.lat + rng.NormFloat64()*h.sigmaM/mPerDeg,
			Lng: h.lng + rng.NormFloat64()*h.sigmaM/(mPerDeg*math.Cos(h.lat*math.Pi/180)),
		}
		if benchCity.Contains(p) {
			return p
		}
	}
}

// cityCosts is a rows x cols matrix of pickup ETAs in seconds between
// riders and drivers drawn by point, with geo.DefaultETA; pairs beyond
// 15 min are left to the solver's MaxCost.
func cityCosts(rng *rand.Rand, point func(*rand.Rand) geo.LatLng, rows, cols int) *CostMatrix {
	m := NewCostMatrix(rows, cols)
	drivers := make([]geo.LatLng, cols)
	for j := range drivers {
		drivers[j] = point(rng)
	}
	for i := range rows {
		p := point(rng)
		for j, d := range drivers {
			m.Set(i, j, geo.DefaultETA.ETA(d, p).Seconds())
		}
	}
	return m
}

// BenchmarkAssign solves riders x drivers windows. greedy/opt_mean_eta is
// the greedy policy's mean pickup ETA over the optimal one on the same
// matrix; the assigned metrics say how many riders each served (the
// optimum serves at least as many, so compare the two together).
func BenchmarkAssign(b *testing.B) {
	const maxETA = 15 * 60.0
	for _, bc := range []struct {
		name string
		gen  func(rng *rand.Rand, n int) *CostMatrix
	}{
		{"city-uniform", func(rng *rand.Rand, n int) *CostMatrix {
			return cityCosts(rng, func(r *rand.Rand) geo.LatLng { return cityPoint(r, benchCity) }, n, n)
		}},
		{"city-hotspots", func(rng *rand.Rand, n int) *CostMatrix { return cityCosts(rng, hotspotPoint, n, n) }},
		{"downtown", func(rng *rand.Rand, n int) *CostMatrix {
			// a 3 km x 3 km downtown: every pair feasible, heavy contention
			box := geo.BBox{MinLat: 37.775, MinLng: -122.42, MaxLat: 37.802, MaxLng: -122.386}
			return cityCosts(rng, func(r *rand.Rand) geo.LatLng { return cityPoint(r, box) }, n, n)
		}},
		{"dense-random", func(rng *rand.Rand, n int) *CostMatrix {
			m := NewCostMatrix(n, n)
			for k := range m.Cost {
				m.Cost[k] = rng.Float64() * maxETA
			}
			return m
		}},
	} {
		for _, n := range []int{100, 500} {
			b.Run(bc.name+"/"+strconv.Itoa(n)+"x"+strconv.Itoa(n), func(b *testing.B) {
				m := bc.gen(rand.New(rand.NewPCG(42, uint64(n))), n)
				s := Solver{MaxCost: maxETA}
				var a, g Assignment
				if err := GreedyAssign(m, maxETA, nil, &g); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for b.Loop() {
					if err := s.Solve(m, &a); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(g.Mean()/a.Mean(), "greedy/opt_mean_eta")
				b.ReportMetric(float64(a.Assigned), "opt_assigned")
				b.ReportMetric(float64(g.Assigned), "greedy_assigned")
			})
		}
	}
}

// dpAssign is an exact reference for up to 14 columns: a dynamic program
// over the set of used columns, rows in order, best by (most assigned, then
// least total).
func dpAssign(m *CostMatrix, maxCost float64) (int, float64) {
	type best struct {
		n  int
		t  float64
		ok bool
	}
	better := func(a, b best) bool { return !b.ok || a.n > b.n || (a.n == b.n && a.t < b.t) }
	cur := make([]best, 1<<m.Cols)
	cur[0] = best{ok: true}
	for i := range m.Rows {
		next := make([]best, len(cur))
		for mask, b := range cur {
			if !b.ok {
				continue
			}
			if better(b, next[mask]) {
				next[mask] = b
			}
			for j := range m.Cols {
				c := m.At(i, j)
				if mask&(1<<j) != 0 || math.IsInf(c, 1) || (maxCost > 0 && c > maxCost) {
					continue
				}
				nb := best{n: b.n + 1, t: b.t + c, ok: true}
				if better(nb, next[mask|1<<j]) {
					next[mask|1<<j] = nb
				}
			}
		}
		cur = next
	}
	var r best
	for _, b := range cur {
		if b.ok && better(b, r) {
			r = b
		}
	}
	return r.n, r.t
}

// TestAssignMatchesDP covers medium shapes (up to 20 riders x 12 drivers),
// where augmenting paths run through many rows.
func TestAssignMatchesDP(t *testing.T) {
	seed := assignSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	var s Solver
	var a Assignment
	cases := 1000
	if testing.Short() {
		cases = 30
	}
	for c := range cases {
		rows, cols := rng.IntN(20)+1, rng.IntN(12)+1
		m := randomCosts(rng, rows, cols)
		s.MaxCost = []float64{0, 5, 600}[rng.IntN(3)]
		if err := s.Solve(m, &a); err != nil {
			t.Fatal(err)
		}
		checkAssignment(t, m, s.MaxCost, &a)
		if n, tot := dpAssign(m, s.MaxCost); a.Assigned != n || !approxEq(a.Total, tot) {
			t.Fatalf("case %d (%dx%d, max %v): solver (%d, %v), DP (%d, %v)\ncost %v", c, rows, cols, s.MaxCost, a.Assigned, a.Total, n, tot, m.Cost)
		}
	}
}

// FuzzAssign decodes a small matrix from bytes (255 is infeasible) and
// checks the solver against brute force.
func FuzzAssign(f *testing.F) {
	f.Add([]byte{2, 2, 60, 120, 130, 255})
	f.Add([]byte{3, 2, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{1, 4, 255, 255, 255, 7})
	f.Add([]byte{4, 4, 0, 0, 0, 0, 9, 9, 9, 9, 255, 1, 255, 1, 5, 5, 5, 5})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		rows, cols := int(data[0]%7), int(data[1]%7)
		m := NewCostMatrix(rows, cols)
		body := data[2:]
		for k := range m.Cost {
			if len(body) == 0 {
				break
			}
			if b := body[k%len(body)]; b != 255 {
				m.Cost[k] = float64(b) * (1 + float64(k%3)/7)
			}
		}
		maxCost := 0.0
		if rows > 0 && data[0] >= 128 {
			maxCost = 100
		}
		var a Assignment
		if err := (&Solver{MaxCost: maxCost}).Solve(m, &a); err != nil {
			t.Fatal(err)
		}
		checkAssignment(t, m, maxCost, &a)
		if n, tot := bruteForceAssign(m, maxCost); a.Assigned != n || !approxEq(a.Total, tot) {
			t.Fatalf("solver (%d, %v), brute force (%d, %v)\ncost %v", a.Assigned, a.Total, n, tot, m.Cost)
		}
	})
}
