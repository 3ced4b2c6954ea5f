package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/internal/redistest"
	"github.com/hexdispatch/hexdispatch/positions"
)

// heatmapCity is the benchmark's city: New York's bounding box, where
// 100,000 drivers spread uniformly occupy about 9,500 res-9 cells.
var heatmapCity = geo.BBox{MinLat: 40.55, MinLng: -74.05, MaxLat: 40.90, MaxLng: -73.75}

func heatmapDrivers(n int) []geo.LatLng {
	rng := rand.New(rand.NewPCG(7, 11))
	out := make([]geo.LatLng, n)
	for i := range out {
		out[i] = geo.LatLng{Lat: heatmapCity.MinLat + rng.Float64()*(heatmapCity.MaxLat-heatmapCity.MinLat),
			Lng: heatmapCity.MinLng + rng.Float64()*(heatmapCity.MaxLng-heatmapCity.MinLng)}
	}
	return out
}

// latencies records per-request times and reports p50 and p99.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	s := slices.Clone(l)
	slices.Sort(s)
	q := func(p float64) float64 {
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// BenchmarkHeatmap100k times the whole-city supply heatmap at res 9 with
// 100,000 online drivers: GET /v1/ops/heatmap on a running engine (four
// partitions, the HTTP round trip and JSON included), against the peer a
// Redis GEO user would write: GEOSEARCH BYBOX over the city WITHCOORD and
// the H3 binning in the client. Run with -benchtime 200x for a p99.
func BenchmarkHeatmap100k(b *testing.B) {
	const n = 100_000
	pos := heatmapDrivers(n)
	b.Run("hexdispatch", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		e, err := New(ctx, Config{Addr: "127.0.0.1:0", TokenSecret: "heatmap-bench-secret-0123456789", Partitions: 4,
			TTL: time.Hour}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
		}()
		now := time.Now()
		for i, p := range pos {
			ev := positions.Event{Kind: positions.KindPosition, Driver: positions.DriverID(fmt.Sprintf("d%d", i)), Pos: p,
				Heading: positions.NoHeading, Status: positions.StatusAvailable, Seq: 1, ReceiveTime: now}
			for {
				err := e.in.publisher.Publish(ev)
				if !errors.Is(err, positions.ErrOverloaded) {
					if err != nil {
						b.Fatal(err)
					}
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		tok, err := e.Signer().Mint(dispatch.Claims{Subject: "ops", Role: dispatch.RoleOps, Expires: time.Now().Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		url := "http://" + e.Addr().String() + "/v1/ops/heatmap?layer=supply&res=9"
		get := func() (int, error) {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return 0, fmt.Errorf("heatmap: %d %s", resp.StatusCode, body)
			}
			return len(body), err
		}
		// Wait until every driver is indexed.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			r, err := e.in.worker.CellCounts(context.Background(), positions.CellCountsRequest{
				Partitions: []positions.Partition{0, 1, 2, 3}, Res: 9})
			if err != nil {
				b.Fatal(err)
			}
			total := 0
			for _, v := range r.Counts {
				total += v
			}
			if total == n {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d drivers indexed", total, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		size, err := get() // warm the boundary cache
		if err != nil {
			b.Fatal(err)
		}
		var lat latencies
		for b.Loop() {
			t0 := time.Now()
			if _, err := get(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		lat.report(b)
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("redis-geo", func(b *testing.B) {
		srv := redistest.Start(b)
		rdb := srv.Client(b)
		ctx := context.Background()
		for i := 0; i < n; i += 1000 {
			var locs []*redis.GeoLocation
			for j := i; j < min(n, i+1000); j++ {
				locs = append(locs, &redis.GeoLocation{Name: fmt.Sprintf("d%d", j), Longitude: pos[j].Lng, Latitude: pos[j].Lat})
			}
			if err := rdb.GeoAdd(ctx, "drivers", locs...).Err(); err != nil {
				b.Fatal(err)
			}
		}
		c := heatmapCity.Center()
		wKm := geo.DistanceM(geo.LatLng{Lat: c.Lat, Lng: heatmapCity.MinLng}, geo.LatLng{Lat: c.Lat, Lng: heatmapCity.MaxLng}) / 1000
		hKm := geo.DistanceM(geo.LatLng{Lat: heatmapCity.MinLat, Lng: c.Lng}, geo.LatLng{Lat: heatmapCity.MaxLat, Lng: c.Lng}) / 1000
		var lat latencies
		cells := 0
		for b.Loop() {
			t0 := time.Now()
			res, err := rdb.GeoSearchLocation(ctx, "drivers", &redis.GeoSearchLocationQuery{
				GeoSearchQuery: redis.GeoSearchQuery{Longitude: c.Lng, Latitude: c.Lat, BoxWidth: wKm * 1.01, BoxHeight: hKm * 1.01, BoxUnit: "km"},
				WithCoord:      true,
			}).Result()
			if err != nil {
				b.Fatal(err)
			}
			counts := make(map[geo.Cell]int)
			for _, r := range res {
				cell, err := geo.CellAt(geo.LatLng{Lat: r.Latitude, Lng: r.Longitude}, 9)
				if err != nil {
					b.Fatal(err)
				}
				counts[cell]++
			}
			lat = append(lat, time.Since(t0))
			if len(res) < n*99/100 {
				b.Fatalf("GEOSEARCH found %d of %d drivers", len(res), n)
			}
			cells = len(counts)
		}
		lat.report(b)
		b.ReportMetric(float64(cells), "cells")
	})
}
