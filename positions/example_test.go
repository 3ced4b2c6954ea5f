package positions_test

import (
	"fmt"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

func ExampleIndex_Nearest() {
	x, err := positions.NewIndex(positions.DefaultConfig())
	if err != nil {
		panic(err)
	}
	now := time.Now()
	x.Upsert("ana", geo.LatLng{Lat: 37.7793, Lng: -122.4193}, positions.StatusAvailable, 1, now)
	x.Upsert("ben", geo.LatLng{Lat: 37.7810, Lng: -122.4110}, positions.StatusAvailable, 1, now)
	x.Upsert("cy", geo.LatLng{Lat: 37.7800, Lng: -122.4180}, positions.StatusOnTrip, 1, now)
	// A replayed older position is dropped by the sequence guard.
	out, _ := x.Upsert("ana", geo.LatLng{Lat: 37.70, Lng: -122.50}, positions.StatusAvailable, 1, now)
	fmt.Println("replay:", out)

	rider := geo.LatLng{Lat: 37.7790, Lng: -122.4180}
	cands, err := x.Nearest(rider, 5, 2000, positions.Available)
	if err != nil {
		panic(err)
	}
	for _, c := range cands {
		fmt.Printf("%s %.0f m\n", c.ID, c.DistanceM)
	}
	// Output:
	// replay: stale
	// ana 119 m
	// ben 654 m
}
