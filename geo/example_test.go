package geo_test

import (
	"fmt"

	"github.com/hexdispatch/hexdispatch/geo"
)

func ExampleDistanceM() {
	sfo, _ := geo.NewLatLng(37.6213, -122.3790)
	lax, _ := geo.NewLatLng(33.9416, -118.4085)
	fmt.Printf("%.0f km\n", geo.DistanceM(sfo, lax)/1000)
	fmt.Println(geo.DefaultETA.ETA(sfo, geo.LatLng{Lat: 37.6300, Lng: -122.3790}).Round(1e9))
	// Output:
	// 544 km
	// 3m8s
}

func ExampleParseLatLng() {
	_, err := geo.ParseLatLng("91.2,-122.4")
	fmt.Println(err)
	// Output: invalid coordinate: lat 91.2 is outside [-90, 90]
}

func ExampleShardCell() {
	c, _ := geo.ShardCell(geo.LatLng{Lat: 40.7580, Lng: -73.9855}, geo.DefaultShardRes)
	fmt.Println(c.Resolution(), c)
	// Output: 6 862a100d7ffffff
}
