package geo_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

func TestNewLatLngValidation(t *testing.T) {
	tests := []struct {
		name      string
		lat, lng  float64
		wantField string // empty: valid
	}{
		{"origin", 0, 0, ""},
		{"north pole", 90, 0, ""},
		{"south pole", -90, 180, ""},
		{"antimeridian west", 10, -180, ""},
		{"lat too big", 90.0000001, 0, "lat"},
		{"lat too small", -91, 0, "lat"},
		{"lng too big", 0, 180.5, "lng"},
		{"lng too small", 0, -181, "lng"},
		{"lat NaN", math.NaN(), 0, "lat"},
		{"lng +Inf", 0, math.Inf(1), "lng"},
		{"lat -Inf", math.Inf(-1), 0, "lat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := geo.NewLatLng(tt.lat, tt.lng)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, geo.ErrInvalidLatLng) {
				t.Fatalf("err = %v, want ErrInvalidLatLng", err)
			}
			if !strings.Contains(err.Error(), tt.wantField+" ") {
				t.Fatalf("error %q does not name field %q", err, tt.wantField)
			}
		})
	}
}

func TestParseLatLng(t *testing.T) {
	tests := []struct {
		in      string
		want    geo.LatLng
		wantErr string
	}{
		{"37.7749,-122.4194", geo.LatLng{Lat: 37.7749, Lng: -122.4194}, ""},
		{" 40.5 , -73.9 ", geo.LatLng{Lat: 40.5, Lng: -73.9}, ""},
		{"", geo.LatLng{}, "not \"lat,lng\""},
		{"1", geo.LatLng{}, "not \"lat,lng\""},
		{",2", geo.LatLng{}, "lat is empty"},
		{"1,", geo.LatLng{}, "lng is empty"},
		{"abc,2", geo.LatLng{}, "lat \"abc\" is not a number"},
		{"1,NaN", geo.LatLng{}, "lng is not a finite number"},
		{"91,0", geo.LatLng{}, "lat 91 is outside"},
		{"0,1,2", geo.LatLng{}, "lng \"1,2\" is not a number"},
	}
	for _, tt := range tests {
		got, err := geo.ParseLatLng(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseLatLng(%q) err = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseLatLng(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestStringRoundTrip(t *testing.T) {
	p := geo.LatLng{Lat: -33.8688197, Lng: 151.2092955}
	got, err := geo.ParseLatLng(p.String())
	if err != nil || got != p {
		t.Fatalf("round trip %v -> %q -> %v, %v", p, p.String(), got, err)
	}
}

func TestE7RoundTrip(t *testing.T) {
	for _, v := range []int32{0, 1, -1, 900000000, -900000000, 1800000000, -1800000000, 377749123, -1224194321} {
		p := geo.FromE7(geo.E7(v), geo.E7(v/2))
		lat, lng := p.ToE7()
		if int32(lat) != v || int32(lng) != v/2 {
			t.Errorf("E7 round trip of %d: got %d,%d", v, lat, lng)
		}
	}
}

func TestDistanceM(t *testing.T) {
	jfk := geo.LatLng{Lat: 40.6413, Lng: -73.7781}
	lax := geo.LatLng{Lat: 33.9416, Lng: -118.4085}
	tests := []struct {
		name      string
		a, b      geo.LatLng
		want, tol float64
	}{
		// The haversine reference case BNA-LAX: 2887.2599506 km on a sphere
		// of radius 6372.8 km, scaled to the mean radius used here.
		{"BNA-LAX", geo.LatLng{Lat: 36.12, Lng: -86.67}, geo.LatLng{Lat: 33.94, Lng: -118.40}, 2887259.9506 * geo.EarthRadiusM / 6372800, 0.5},
		// JFK-LAX is 3,983 km on the WGS84 ellipsoid; the sphere is within 0.5%.
		{"JFK-LAX", jfk, lax, 3_983_000, 3_983_000 * 0.005},
		{"same point", jfk, jfk, 0, 0},
		// One degree of latitude on the mean sphere.
		{"one degree of lat", geo.LatLng{Lat: 10, Lng: 5}, geo.LatLng{Lat: 11, Lng: 5}, 111_195.08, 0.01},
		// Across the antimeridian: 0.2 degrees of longitude at the equator.
		{"antimeridian", geo.LatLng{Lat: 0, Lng: 179.9}, geo.LatLng{Lat: 0, Lng: -179.9}, 22_239.0, 0.1},
		// Pole to pole is half the circumference whatever the longitudes.
		{"pole to pole", geo.LatLng{Lat: 90, Lng: 12}, geo.LatLng{Lat: -90, Lng: -140}, math.Pi * geo.EarthRadiusM, 0.001},
		// At the pole longitude does not matter.
		{"pole longitudes", geo.LatLng{Lat: 90, Lng: 0}, geo.LatLng{Lat: 90, Lng: 179}, 0, 1e-6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := geo.DistanceM(tt.a, tt.b)
			if math.Abs(got-tt.want) > tt.tol {
				t.Fatalf("DistanceM = %.3f, want %.3f ± %v", got, tt.want, tt.tol)
			}
			if back := geo.DistanceM(tt.b, tt.a); math.Abs(back-got) > 1e-6 {
				t.Fatalf("not symmetric: %v vs %v", got, back)
			}
		})
	}
}

func TestStraightLineETA(t *testing.T) {
	e := geo.StraightLineETA{DetourFactor: 1.5, SpeedMPS: 10}
	if got := e.ForDistance(1000); got != 150*time.Second {
		t.Fatalf("ETA(1 km) = %v, want 150s", got)
	}
	var f geo.ETAFunc = e.ETA
	a := geo.LatLng{Lat: 10, Lng: 5}
	b := geo.LatLng{Lat: 11, Lng: 5}
	if got, want := f(a, b), 16679*time.Second; (got - want).Abs() > time.Second {
		t.Fatalf("ETA = %v, want %v", got, want)
	}
	if got := (geo.StraightLineETA{}).ForDistance(100); got != 0 {
		t.Fatalf("zero speed ETA = %v, want 0", got)
	}
}

func TestCellAtKnownCells(t *testing.T) {
	tests := []struct {
		name string
		p    geo.LatLng
		res  int
		want string
	}{
		// The example in the H3 documentation.
		{"SF res 9", geo.LatLng{Lat: 37.775938728915946, Lng: -122.41795063018799}, 9, "8928308280fffff"},
		{"SF res 7", geo.LatLng{Lat: 37.775938728915946, Lng: -122.41795063018799}, 7, "872830828ffffff"},
		{"SF res 0", geo.LatLng{Lat: 37.775938728915946, Lng: -122.41795063018799}, 0, "8029fffffffffff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := geo.CellAt(tt.p, tt.res)
			if err != nil {
				t.Fatal(err)
			}
			if c.String() != tt.want {
				t.Fatalf("CellAt = %s, want %s", c, tt.want)
			}
			if c.Resolution() != tt.res {
				t.Fatalf("resolution %d, want %d", c.Resolution(), tt.res)
			}
		})
	}
}

func TestCellAtRejectsBadInput(t *testing.T) {
	if _, err := geo.CellAt(geo.LatLng{Lat: 91}, 9); !errors.Is(err, geo.ErrInvalidLatLng) {
		t.Errorf("lat 91: err = %v", err)
	}
	if _, err := geo.CellAt(geo.LatLng{Lng: math.NaN()}, 9); !errors.Is(err, geo.ErrInvalidLatLng) {
		t.Errorf("NaN: err = %v", err)
	}
	for _, res := range []int{-1, 16} {
		if _, err := geo.CellAt(geo.LatLng{}, res); !errors.Is(err, geo.ErrInvalidResolution) {
			t.Errorf("res %d: err = %v", res, err)
		}
	}
	if _, err := geo.Parent(geo.Cell(12345), 3); !errors.Is(err, geo.ErrInvalidCell) {
		t.Errorf("invalid cell: err = %v", err)
	}
}

func TestParentDiskRingBoundary(t *testing.T) {
	p := geo.LatLng{Lat: 40.7580, Lng: -73.9855} // Times Square
	c9, err := geo.CellAt(p, 9)
	if err != nil {
		t.Fatal(err)
	}
	c7, err := geo.Parent(c9, 7)
	if err != nil {
		t.Fatal(err)
	}
	if c7.Resolution() != 7 {
		t.Fatalf("parent res %d", c7.Resolution())
	}
	if _, err := geo.Parent(c7, 9); !errors.Is(err, geo.ErrInvalidResolution) {
		t.Fatalf("finer parent: err = %v", err)
	}
	disk, err := geo.Disk(c7, 1)
	if err != nil || len(disk) != 7 {
		t.Fatalf("Disk k=1: %d cells, %v", len(disk), err)
	}
	ring, err := geo.Ring(c7, 2)
	if err != nil || len(ring) != 12 {
		t.Fatalf("Ring k=2: %d cells, %v", len(ring), err)
	}
	b, err := geo.Boundary(c7)
	if err != nil || len(b) != 6 {
		t.Fatalf("Boundary: %d corners, %v", len(b), err)
	}
	center, err := geo.CellCenter(c7)
	if err != nil {
		t.Fatal(err)
	}
	// A res-7 edge is about 1.2 km, so the centre is within 1.5 km of p.
	if d := geo.DistanceM(center, p); d > 1500 {
		t.Fatalf("centre %v is %.0f m from the point", center, d)
	}
	for _, corner := range b {
		if d := geo.DistanceM(center, corner); d < 900 || d > 1700 {
			t.Fatalf("corner %v is %.0f m from the centre", corner, d)
		}
	}
}

func TestShardCellIsParentOfSearchCell(t *testing.T) {
	p := geo.LatLng{Lat: 40.7128, Lng: -74.0060}
	s, err := geo.ShardCell(p, geo.DefaultShardRes)
	if err != nil {
		t.Fatal(err)
	}
	c7, _ := geo.CellAt(p, geo.SearchRes)
	want, _ := geo.Parent(c7, geo.DefaultShardRes)
	if s != want {
		t.Fatalf("ShardCell = %s, want parent of search cell %s", s, want)
	}
	if s7, _ := geo.ShardCell(p, 7); s7 != c7 {
		t.Fatalf("ShardCell at res 7 = %s, want %s", s7, c7)
	}
}

func TestBBox(t *testing.T) {
	b, err := geo.ParseBBox("37.70,-122.52,37.81,-122.36")
	if err != nil {
		t.Fatal(err)
	}
	if !b.Contains(geo.LatLng{Lat: 37.75, Lng: -122.4}) || b.Contains(geo.LatLng{Lat: 37.9, Lng: -122.4}) {
		t.Fatal("Contains is wrong")
	}
	for _, bad := range []string{"1,2,3", "37.81,-122.52,37.70,-122.36", "0,10,1,5", "a,b,c,d", "0,0,95,1"} {
		if _, err := geo.ParseBBox(bad); !errors.Is(err, geo.ErrInvalidBBox) {
			t.Errorf("ParseBBox(%q) err = %v", bad, err)
		}
	}
	e := geo.EmptyBBox.Extend(geo.LatLng{Lat: 1, Lng: 2}).Extend(geo.LatLng{Lat: -1, Lng: 5})
	if e != (geo.BBox{MinLat: -1, MinLng: 2, MaxLat: 1, MaxLng: 5}) {
		t.Fatalf("Extend = %+v", e)
	}
}

func FuzzParseLatLng(f *testing.F) {
	for _, s := range []string{"37.7749,-122.4194", "90,180", "-90,-180", "NaN,0", "1e400,0", "0x1p-2,0", ",", "", "1,2,3", " 1 , 2 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := geo.ParseLatLng(s)
		if err != nil {
			if !errors.Is(err, geo.ErrInvalidLatLng) {
				t.Fatalf("error %v does not wrap ErrInvalidLatLng", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParseLatLng accepted %q -> %v which does not validate: %v", s, p, err)
		}
		// Anything accepted is safe to hand to h3-go.
		if _, err := geo.CellAt(p, 9); err != nil {
			t.Fatalf("CellAt(%v): %v", p, err)
		}
	})
}

func TestParentOfMatchesH3(t *testing.T) {
	for _, p := range []geo.LatLng{
		{Lat: 37.7749, Lng: -122.4194}, {Lat: -33.8688, Lng: 151.2093}, {Lat: 89.9, Lng: 10},
		{Lat: 0, Lng: 179.99}, {Lat: 64.7, Lng: 10.5}, // near a res-0 pentagon's neighbourhood too
	} {
		for fine := 0; fine <= 15; fine++ {
			c, err := geo.CellAt(p, fine)
			if err != nil {
				t.Fatal(err)
			}
			for res := 0; res <= fine; res++ {
				want, err := geo.Parent(c, res)
				if err != nil {
					t.Fatal(err)
				}
				if got := geo.ParentOf(c, res); got != want {
					t.Fatalf("ParentOf(%s, %d) = %s, want %s", c, res, got, want)
				}
			}
		}
	}
}
