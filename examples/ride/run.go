package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// latLng is a position in degrees.
type latLng struct {
	Lat float64 `json:"lat"`
	Lng float64 `json:"lng"`
}

func (p latLng) String() string { return fmt.Sprintf("%.5f,%.5f", p.Lat, p.Lng) }

// parseLatLng reads "lat,lng" and checks the ranges.
func parseLatLng(s string) (latLng, error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		return latLng{}, fmt.Errorf("%q: want lat,lng", s)
	}
	lat, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	lng, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	switch {
	case err1 != nil || err2 != nil:
		return latLng{}, fmt.Errorf("%q: want two numbers, lat,lng", s)
	case math.IsNaN(lat) || lat < -90 || lat > 90:
		return latLng{}, fmt.Errorf("%q: latitude outside [-90, 90]", s)
	case math.IsNaN(lng) || lng < -180 || lng > 180:
		return latLng{}, fmt.Errorf("%q: longitude outside [-180, 180]", s)
	}
	return latLng{Lat: lat, Lng: lng}, nil
}

// config is what one ride needs.
type config struct {
	base        *url.URL // the engine, http://host:port
	driverToken string
	riderToken  string
	pickup      latLng
	dropoff     latLng
	key         string        // Idempotency-Key of the request
	every       time.Duration // between position reports, and between moves of the car
	timeout     time.Duration // the whole ride
}

// run parses the flags (each with an environment override, RIDE_<FLAG>)
// and takes one ride.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ride", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("base", "http://127.0.0.1:8080", "the engine's base URL")
	driverTok := fs.String("driver-token", "", "bearer token of a driver (hexdispatch token -role driver -sub d1)")
	riderTok := fs.String("rider-token", "", "bearer token of a rider (hexdispatch token -role rider -sub u1)")
	pickup := fs.String("pickup", "40.7580,-73.9855", "pickup, lat,lng")
	dropoff := fs.String("dropoff", "40.7061,-74.0087", "drop-off, lat,lng")
	key := fs.String("key", "", "Idempotency-Key of the ride request (default: a new random one, so every run is a new ride)")
	every := fs.Duration("every", time.Second, "how often the driver reports its position and the car moves")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up after this long")
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv("RIDE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))); ok {
			f.Value.Set(v)
		}
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c := config{driverToken: *driverTok, riderToken: *riderTok, key: *key, every: *every, timeout: *timeout}
	var err error
	if c.base, err = url.Parse(strings.TrimSuffix(*base, "/")); err != nil || (c.base.Scheme != "http" && c.base.Scheme != "https") || c.base.Host == "" {
		return fmt.Errorf("-base %q: want http://host:port", *base)
	}
	if c.pickup, err = parseLatLng(*pickup); err != nil {
		return fmt.Errorf("-pickup %w", err)
	}
	if c.dropoff, err = parseLatLng(*dropoff); err != nil {
		return fmt.Errorf("-dropoff %w", err)
	}
	switch {
	case c.driverToken == "" || c.riderToken == "":
		return errors.New("-driver-token and -rider-token are required (make run prints dev tokens)")
	case c.every <= 0 || c.timeout <= 0:
		return errors.New("-every and -timeout must be positive")
	}
	if c.key == "" {
		var b [8]byte
		rand.Read(b[:])
		c.key = "ride-" + hex.EncodeToString(b[:])
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return takeRide(ctx, c, stdout)
}
