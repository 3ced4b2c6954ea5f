package main

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// goBenchResults turns `go test -bench` output (path, or "-" for stdin)
// into result lines, so that one results file holds the whole suite: the
// workload is "go:<package>/<benchmark>", ops/s is 1e9 / ns/op, and the
// note keeps the line's other figures (B/op, allocs/op, custom metrics).
func goBenchResults(path string, stdin io.Reader, w io.Writer) error {
	in := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	pkg := ""
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p[strings.LastIndex(p, "/")+1:]
			continue
		}
		r, ok := parseGoBench(line)
		if !ok {
			continue
		}
		r.Workload = "go:" + pkg + "/" + r.Workload
		if err := writeResult(w, r); err != nil {
			return err
		}
	}
	return sc.Err()
}

// parseGoBench reads one benchmark line:
//
//	BenchmarkUpsert/drivers=10000-2   1000000   312.5 ns/op   0 B/op   0 allocs/op
func parseGoBench(line string) (Result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return Result{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return Result{}, false
	}
	name := f[0]
	procs := 0
	if i := strings.LastIndex(name, "-"); i > 0 {
		if p, err := strconv.Atoi(name[i+1:]); err == nil {
			name, procs = name[:i], p
		}
	}
	r := Result{System: "hexdispatch", Workload: name, Ops: n, GOMAXPROCS: procs}
	var extra []string
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return Result{}, false
		}
		if f[i+1] == "ns/op" && v > 0 {
			r.OpsPerS = round(1e9 / v)
			continue
		}
		extra = append(extra, f[i]+" "+f[i+1])
	}
	r.Note = strings.Join(extra, ", ")
	return r, true
}
