package positions_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
	"github.com/hexdispatch/hexdispatch/positions"
)

func sampleEvent() positions.Event {
	return positions.Event{
		Kind:        positions.KindPosition,
		Driver:      "driver-42",
		Pos:         geo.LatLng{Lat: 37.7793123, Lng: -122.4193456},
		Heading:     1234,
		Speed:       1250,
		Status:      positions.StatusAvailable,
		Seq:         77,
		SourceTime:  time.UnixMicro(1_700_000_000_123_456),
		ReceiveTime: time.UnixMicro(1_700_000_000_223_456),
	}
}

func eventsEqual(a, b positions.Event) bool {
	return a.Kind == b.Kind && a.Driver == b.Driver && a.Pos == b.Pos && a.Heading == b.Heading &&
		a.Speed == b.Speed && a.Status == b.Status && a.Seq == b.Seq &&
		a.SourceTime.Equal(b.SourceTime) && a.ReceiveTime.Equal(b.ReceiveTime)
}

func TestEventRoundTrip(t *testing.T) {
	removal := sampleEvent()
	removal.Kind, removal.Status = positions.KindRemoval, 0
	noClock := sampleEvent()
	noClock.SourceTime, noClock.Heading = time.Time{}, positions.NoHeading
	edge := sampleEvent()
	edge.Pos = geo.LatLng{Lat: -90, Lng: 180}
	edge.Driver = positions.DriverID(strings.Repeat("x", positions.MaxDriverIDLen))
	for _, tc := range []struct {
		name string
		e    positions.Event
	}{
		{"position", sampleEvent()},
		{"removal", removal},
		{"no source clock, no heading", noClock},
		{"edges", edge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := positions.AppendEvent(nil, tc.e)
			if len(b) > positions.MaxEventLen {
				t.Fatalf("encoded %d bytes, more than MaxEventLen %d", len(b), positions.MaxEventLen)
			}
			got, err := positions.DecodeEvent(b)
			if err != nil {
				t.Fatalf("DecodeEvent: %v", err)
			}
			if !eventsEqual(got, tc.e) {
				t.Fatalf("round trip\n got %+v\nwant %+v", got, tc.e)
			}
		})
	}
}

func TestDecodeEventRejects(t *testing.T) {
	good := positions.AppendEvent(nil, sampleEvent())
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	enc := func(f func(e *positions.Event)) []byte {
		e := sampleEvent()
		f(&e)
		return positions.AppendEvent(nil, e)
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		reason string
	}{
		{"empty", nil, "empty record"},
		{"unknown version", mut(func(b []byte) []byte { b[0] = 9; return b }), "unknown version 9"},
		{"short header", good[:20], "shorter than the 40 byte header"},
		{"truncated id", good[:len(good)-1], "want 49"},
		{"trailing bytes", append(bytes.Clone(good), 0), "want 49"},
		{"unknown kind", mut(func(b []byte) []byte { b[1] = 7; return b }), "unknown kind 7"},
		{"bad status", mut(func(b []byte) []byte { b[2] = 9; return b }), "invalid driver status"},
		{"removal with status", mut(func(b []byte) []byte { b[1] = byte(positions.KindRemoval); return b }), "removal with status"},
		{"empty id", enc(func(e *positions.Event) { e.Driver = "" }), "driver id is empty"},
		{"lat out of range", enc(func(e *positions.Event) { e.Pos.Lat = 91 }), "lat 91"},
		{"lng out of range", enc(func(e *positions.Event) { e.Pos.Lng = -181 }), "lng -181"},
		{"heading", enc(func(e *positions.Event) { e.Heading = 3600 }), "heading 3600"},
		{"no receive time", enc(func(e *positions.Event) { e.ReceiveTime = time.UnixMicro(0) }), "receive time"},
		{"negative source time", enc(func(e *positions.Event) { e.SourceTime = time.UnixMicro(-5) }), "source time -5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := positions.DecodeEvent(tc.b)
			if !errors.Is(err, positions.ErrBadEvent) {
				t.Fatalf("err = %v, want ErrBadEvent", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.reason)
			}
		})
	}
}

// FuzzDecodeEvent checks that the decoder never panics, that everything it
// accepts is valid, and that the encoding is canonical: re-encoding a
// decoded event gives the same bytes back.
func FuzzDecodeEvent(f *testing.F) {
	removal := sampleEvent()
	removal.Kind, removal.Status = positions.KindRemoval, 0
	f.Add(positions.AppendEvent(nil, sampleEvent()))
	f.Add(positions.AppendEvent(nil, removal))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(bytes.Repeat([]byte{0xff}, 48))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := positions.DecodeEvent(b)
		if err != nil {
			if !errors.Is(err, positions.ErrBadEvent) {
				t.Fatalf("error %v does not wrap ErrBadEvent", err)
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded an invalid event: %v", err)
		}
		if again := positions.AppendEvent(nil, e); !bytes.Equal(again, b) {
			t.Fatalf("not canonical:\n in %x\nout %x", b, again)
		}
	})
}

func BenchmarkEventCodec(b *testing.B) {
	e := sampleEvent()
	buf := make([]byte, 0, positions.MaxEventLen)
	b.ReportAllocs()
	for b.Loop() {
		buf = positions.AppendEvent(buf[:0], e)
		if _, err := positions.DecodeEvent(buf); err != nil {
			b.Fatal(err)
		}
	}
}
