package positions

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/hexdispatch/hexdispatch/geo"
)

// EventKind says what an Event asks the owner of its partition to do.
type EventKind uint8

// Event kinds. The zero value is invalid so that a missing field is caught.
const (
	// KindPosition upserts the driver at Pos with Status.
	KindPosition EventKind = iota + 1
	// KindRemoval drops the driver: it went offline, or it moved to a shard
	// that hashes to another partition (a handoff). Status is zero.
	KindRemoval
	numKinds
)

var kindNames = [...]string{"", "position", "removal"}

func (k EventKind) String() string {
	if k >= KindPosition && k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Heading is a direction of travel in tenths of a degree clockwise from
// north, in [0, 3600), or NoHeading.
type Heading uint16

// NoHeading marks an unknown heading (a phone that is standing still).
const NoHeading Heading = 0xFFFF

// Valid reports whether h is a heading or NoHeading.
func (h Heading) Valid() bool { return h < 3600 || h == NoHeading }

// Speed is a ground speed in centimetres per second (up to 655 m/s).
type Speed uint16

// Event is one driver position report, or a removal, as it travels from the
// gateway through Kafka to the cell worker.
//
// Both clocks are kept: SourceTime is the driver's phone clock (shown to
// ops, never trusted for ordering or expiry); ReceiveTime is the gateway's
// stamp, from which the index counts TTL. Ordering uses Seq alone.
type Event struct {
	Kind        EventKind
	Driver      DriverID
	Pos         geo.LatLng // carried at 1e-7 degree
	Heading     Heading
	Speed       Speed
	Status      Status // zero for a removal
	Seq         uint64
	SourceTime  time.Time // microsecond precision; zero if unknown
	ReceiveTime time.Time // microsecond precision; never zero
}

// EventVersion is the first byte of every encoded event. A decoder rejects
// versions it does not know, so a new layout needs a new version and a
// rolling upgrade of workers before gateways.
const EventVersion = 1

// Layout of version 1, little endian, fixed size header then the id:
//
//	0  version  u8
//	1  kind     u8
//	2  status   u8
//	3  id len   u8   (1..MaxDriverIDLen)
//	4  lat      i32  (1e-7 degree)
//	8  lng      i32  (1e-7 degree)
//	12 heading  u16
//	14 speed    u16
//	16 seq      u64
//	24 source   i64  (unix microseconds, 0 = unknown)
//	32 receive  i64  (unix microseconds, > 0)
//	40 id       [id len]byte
//
// The encoding is canonical: every valid event has exactly one encoding, so
// Encode(Decode(b)) == b for every b that decodes.
const eventHeaderLen = 40

// MaxEventLen bounds an encoded event.
const MaxEventLen = eventHeaderLen + MaxDriverIDLen

// Validate checks e as the decoder would.
func (e Event) Validate() error {
	if e.Kind != KindPosition && e.Kind != KindRemoval {
		return fmt.Errorf("%w: unknown kind %d", ErrBadEvent, uint8(e.Kind))
	}
	if err := e.Driver.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	if err := e.Pos.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadEvent, err)
	}
	switch {
	case e.Kind == KindPosition && !e.Status.Valid():
		return fmt.Errorf("%w: %w: %d", ErrBadEvent, ErrInvalidStatus, uint8(e.Status))
	case e.Kind == KindRemoval && e.Status != 0:
		return fmt.Errorf("%w: removal with status %d", ErrBadEvent, uint8(e.Status))
	case !e.Heading.Valid():
		return fmt.Errorf("%w: heading %d is outside [0, 3600)", ErrBadEvent, uint16(e.Heading))
	case !e.SourceTime.IsZero() && e.SourceTime.UnixMicro() <= 0:
		return fmt.Errorf("%w: source time %v is before 1970", ErrBadEvent, e.SourceTime)
	case e.ReceiveTime.IsZero() || e.ReceiveTime.UnixMicro() <= 0:
		return fmt.Errorf("%w: receive time %v is missing or before 1970", ErrBadEvent, e.ReceiveTime)
	}
	return nil
}

// AppendEvent appends the encoding of e to dst. e must be valid (see
// [Event.Validate]); the publisher validates at the boundary, so the hot path
// does not validate twice.
func AppendEvent(dst []byte, e Event) []byte {
	lat, lng := e.Pos.ToE7()
	var src int64
	if !e.SourceTime.IsZero() {
		src = e.SourceTime.UnixMicro()
	}
	var h [eventHeaderLen]byte
	h[0] = EventVersion
	h[1] = byte(e.Kind)
	h[2] = byte(e.Status)
	h[3] = byte(len(e.Driver))
	binary.LittleEndian.PutUint32(h[4:], uint32(lat))
	binary.LittleEndian.PutUint32(h[8:], uint32(lng))
	binary.LittleEndian.PutUint16(h[12:], uint16(e.Heading))
	binary.LittleEndian.PutUint16(h[14:], uint16(e.Speed))
	binary.LittleEndian.PutUint64(h[16:], e.Seq)
	binary.LittleEndian.PutUint64(h[24:], uint64(src))
	binary.LittleEndian.PutUint64(h[32:], uint64(e.ReceiveTime.UnixMicro()))
	dst = append(dst, h[:]...)
	return append(dst, e.Driver...)
}

// DecodeEvent decodes and validates one event. Every error wraps
// [ErrBadEvent] and says what is wrong; the worker puts that text in the
// dead-letter record.
func DecodeEvent(b []byte) (Event, error) {
	if len(b) == 0 {
		return Event{}, fmt.Errorf("%w: empty record", ErrBadEvent)
	}
	if b[0] != EventVersion {
		return Event{}, fmt.Errorf("%w: unknown version %d", ErrBadEvent, b[0])
	}
	if len(b) < eventHeaderLen {
		return Event{}, fmt.Errorf("%w: %d bytes, shorter than the %d byte header", ErrBadEvent, len(b), eventHeaderLen)
	}
	idLen := int(b[3])
	if want := eventHeaderLen + idLen; len(b) != want {
		return Event{}, fmt.Errorf("%w: %d bytes, want %d for a %d byte driver id", ErrBadEvent, len(b), want, idLen)
	}
	lat := geo.E7(int32(binary.LittleEndian.Uint32(b[4:])))
	lng := geo.E7(int32(binary.LittleEndian.Uint32(b[8:])))
	e := Event{
		Kind:    EventKind(b[1]),
		Status:  Status(b[2]),
		Pos:     geo.FromE7(lat, lng),
		Heading: Heading(binary.LittleEndian.Uint16(b[12:])),
		Speed:   Speed(binary.LittleEndian.Uint16(b[14:])),
		Seq:     binary.LittleEndian.Uint64(b[16:]),
		Driver:  DriverID(b[eventHeaderLen:]),
	}
	if src := int64(binary.LittleEndian.Uint64(b[24:])); src != 0 {
		if src < 0 {
			return Event{}, fmt.Errorf("%w: source time %d is before 1970", ErrBadEvent, src)
		}
		e.SourceTime = time.UnixMicro(src)
	}
	rcv := int64(binary.LittleEndian.Uint64(b[32:]))
	if rcv <= 0 {
		return Event{}, fmt.Errorf("%w: receive time %d is missing or before 1970", ErrBadEvent, rcv)
	}
	e.ReceiveTime = time.UnixMicro(rcv)
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}
