package sim_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/sim"
)

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}

func TestReadDemandPickups(t *testing.T) {
	in := "t_s,lat,lng\n" +
		"120,40.7,-73.9\n" +
		"60,40.8,-73.95\n" +
		"abc,40.8,-73.95\n" + // bad t_s
		"60,91,-73.95\n" + // bad lat
		"60,40.8\n" + // short row
		"\n" +
		"90000,40.8,-73.9\n" + // beyond a day
		"180,40.75,NaN\n" // not finite
	for _, raw := range [][]byte{[]byte(in), gz(in)} {
		d, rep, err := sim.ReadDemand(bytes.NewReader(raw), "test")
		if err != nil {
			t.Fatal(err)
		}
		if rep.Rows != 7 || rep.Kept != 2 || rep.SkippedTotal != 5 || len(rep.Skipped) != 5 {
			t.Fatalf("report = %+v", rep)
		}
		wantLines := []int{4, 5, 6, 8, 9}
		for i, e := range rep.Skipped {
			if e.Line != wantLines[i] {
				t.Fatalf("skipped[%d] at line %d, want %d (%v)", i, e.Line, wantLines[i], e)
			}
		}
		if !strings.Contains(rep.Skipped[1].Error(), "lat 91") {
			t.Fatalf("error does not name the field: %v", rep.Skipped[1])
		}
		if d.Requests[0].At != time.Minute || d.Requests[1].At != 2*time.Minute || d.Requests[0].Line != 3 {
			t.Fatalf("requests not sorted by time: %+v", d.Requests)
		}
		if d.BBox != (geo.BBox{MinLat: 40.7, MinLng: -73.95, MaxLat: 40.8, MaxLng: -73.9}) {
			t.Fatalf("bbox = %+v", d.BBox)
		}
	}
}

func TestReadDemandTripsSpansDays(t *testing.T) {
	in := "t_s,day,pickup_lat,pickup_lng,dropoff_lat,dropoff_lng,duration_s,distance_km\n" +
		"100,2016-01-02,40.7,-73.9,40.8,-73.8,600,3.2\n" +
		"50,2016-01-01,40.7,-73.9,40.71,-73.91,300,0\n" +
		"50,2016-13-01,40.7,-73.9,40.71,-73.91,300,1\n" + // bad day
		"50,2016-01-01,40.7,-73.9,40.71,-73.91,0,1\n" // zero duration
	d, rep, err := sim.ReadDemand(strings.NewReader(in), "trips")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Kept != 2 || rep.SkippedTotal != 2 {
		t.Fatalf("report = %+v", rep)
	}
	first, second := d.Requests[0], d.Requests[1]
	if first.At != 50*time.Second || second.At != 24*time.Hour+100*time.Second {
		t.Fatalf("times = %v, %v", first.At, second.At)
	}
	if !second.HasDropoff || second.TripDuration != 10*time.Minute || second.DistanceKM != 3.2 {
		t.Fatalf("trip = %+v", second)
	}
}

func TestReadDemandRejectsUnusableFiles(t *testing.T) {
	for name, in := range map[string]string{
		"empty":        "",
		"no t_s":       "time,lat,lng\n1,2,3\n",
		"no position":  "t_s,x,y\n1,2,3\n",
		"trip no day":  "t_s,pickup_lat,pickup_lng,dropoff_lat,dropoff_lng,duration_s\n1,2,3,4,5,6\n",
		"no valid row": "t_s,lat,lng\nx,y,z\n",
		"long line":    "t_s,lat,lng\n" + strings.Repeat("1", 5000) + "\n",
	} {
		if _, _, err := sim.ReadDemand(strings.NewReader(in), name); !errors.Is(err, sim.ErrBadDemand) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestSharedDataFiles(t *testing.T) {
	files, _ := filepath.Glob("../../shared/data/*.csv.gz")
	if len(files) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("shared/data is missing beside the repository")
		}
		t.Skip("shared/data not found")
	}
	for _, f := range files {
		d, rep, err := sim.ReadDemandFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if rep.SkippedTotal != 0 || rep.Kept != len(d.Requests) || rep.Kept < 1000 {
			t.Errorf("%s: %s", filepath.Base(f), rep)
		}
		for i := 1; i < len(d.Requests); i++ {
			if d.Requests[i].At < d.Requests[i-1].At {
				t.Fatalf("%s: not sorted at %d", f, i)
			}
		}
		t.Logf("%s: %s, bbox %+v", filepath.Base(f), rep, d.BBox)
	}
}

func TestSpreadMinutesAndWindow(t *testing.T) {
	in := "t_s,lat,lng\n"
	for range 50 {
		in += "64800,40.7,-73.9\n"
	}
	in += "64830,40.7,-73.9\n"
	d, _, err := sim.ReadDemand(strings.NewReader(in), "minute")
	if err != nil {
		t.Fatal(err)
	}
	s := d.SpreadMinutes(1)
	if again := d.SpreadMinutes(1); again.Requests[10].At != s.Requests[10].At {
		t.Fatal("SpreadMinutes is not deterministic for a seed")
	}
	distinct := map[time.Duration]bool{}
	for i, q := range s.Requests {
		if q.At < 18*time.Hour || q.At >= 18*time.Hour+time.Minute {
			t.Fatalf("request %d at %v left its minute", i, q.At)
		}
		if i > 0 && q.At < s.Requests[i-1].At {
			t.Fatal("not sorted after spreading")
		}
		distinct[q.At] = true
	}
	if len(distinct) < 45 {
		t.Fatalf("only %d distinct times", len(distinct))
	}
	w := s.Window(18*time.Hour, 18*time.Hour+30*time.Second)
	for _, q := range w.Requests {
		if q.At >= 18*time.Hour+30*time.Second {
			t.Fatalf("window holds %v", q.At)
		}
	}
	if len(w.Requests) == 0 || len(w.Requests) == len(s.Requests) {
		t.Fatalf("window has %d of %d", len(w.Requests), len(s.Requests))
	}
}

func TestSynthetic(t *testing.T) {
	d, err := sim.Synthetic(sim.SanFrancisco(), 3600, time.Hour, 7)
	if err != nil {
		t.Fatal(err)
	}
	// Poisson with mean 3600: within 5 standard deviations (60 each).
	if n := len(d.Requests); n < 3300 || n > 3900 {
		t.Fatalf("%d requests in an hour at 3600/h", n)
	}
	if _, err := sim.Synthetic(sim.SanFrancisco(), 0, time.Hour, 1); err == nil {
		t.Fatal("zero rate accepted")
	}
}

func FuzzReadDemand(f *testing.F) {
	f.Add([]byte("t_s,lat,lng\n60,40.7,-73.9\n"))
	f.Add([]byte("t_s,day,pickup_lat,pickup_lng,dropoff_lat,dropoff_lng,duration_s,distance_km\n1,2016-01-01,40.7,-73.9,40.8,-73.8,600,3.2\n"))
	f.Add([]byte("t_s,lat,lng\n60,NaN,1e999\n,,\n"))
	f.Add(gz("t_s,lat,lng\n60,40.7,-73.9\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, rep, err := sim.ReadDemand(bytes.NewReader(b), "fuzz")
		if err != nil {
			if !errors.Is(err, sim.ErrBadDemand) {
				t.Fatalf("error %v does not wrap ErrBadDemand", err)
			}
			return
		}
		if rep.Kept != len(d.Requests) || rep.Kept+rep.SkippedTotal != rep.Rows {
			t.Fatalf("report %+v does not add up", rep)
		}
		for _, q := range d.Requests {
			if err := q.Pickup.Validate(); err != nil || !d.BBox.Contains(q.Pickup) {
				t.Fatalf("kept invalid pickup %v: %v", q.Pickup, err)
			}
		}
	})
}
