package dispatch

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestVerifiedMemoryHoldsNoPointer: the remembered tokens' keys and
// claims hold no pointer, so the collector never scans the memory; and
// nothing of the token string is kept (a token cut from a request's
// header block would keep the whole block alive).
func TestVerifiedMemoryHoldsNoPointer(t *testing.T) {
	var hasPointers func(reflect.Type) bool
	hasPointers = func(t reflect.Type) bool {
		switch t.Kind() {
		case reflect.Array:
			return hasPointers(t.Elem())
		case reflect.Struct:
			for i := range t.NumField() {
				if hasPointers(t.Field(i).Type) {
					return true
				}
			}
			return false
		case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return false
		}
		return true
	}
	m := reflect.TypeOf(Signer{}.verified)
	if hasPointers(m.Key()) || hasPointers(m.Elem()) {
		t.Fatalf("the memory %v holds pointers", m)
	}
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sub := strings.Repeat("s", maxSubject) // the longest subject fits in place
	tok, err := s.Mint(Claims{Subject: sub, Role: RoleOps, Expires: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c, err := s.Verify(tok, now)
		if err != nil || c.Subject != sub || c.Role != RoleOps {
			t.Fatalf("verify: %+v, %v", c, err)
		}
	}
	if s.checked != 1 {
		t.Fatalf("%d MAC checks for one token verified twice, want 1", s.checked)
	}
}

// TestVerifiedTokensInUseOutliveTurnover: one-off tokens fill the
// remembered generations over and over, and a token in use all along is
// checked once, not again after every turnover; a token not used for two
// generations is forgotten and checked again.
func TestVerifiedTokensInUseOutliveTurnover(t *testing.T) {
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	s.capacity = 4
	now := time.Now()
	mint := func(sub string, role Role) string {
		tok, err := s.Mint(Claims{Subject: sub, Role: role, Expires: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	verify := func(tok string) {
		if _, err := s.Verify(tok, now); err != nil {
			t.Fatal(err)
		}
	}
	driver, idle := mint("d1", RoleDriver), mint("d2", RoleDriver)
	verify(driver)
	verify(idle)
	const riders = 40 // ten generations' worth
	for i := range riders {
		verify(mint("u"+strconv.Itoa(i), RoleRider))
		verify(driver)
	}
	if want := 2 + riders; s.checked != want {
		t.Fatalf("%d tokens checked, want %d: the driver's token in use was checked again", s.checked, want)
	}
	verify(idle)
	if want := 3 + riders; s.checked != want {
		t.Fatalf("%d tokens checked, want %d: a token unused for ten generations was still remembered", s.checked, want)
	}
	if n := len(s.verified) + len(s.previous); n > 2*s.capacity {
		t.Fatalf("%d tokens remembered, more than two generations of %d", n, s.capacity)
	}
}

// TestVerifiedClaimsShareTheRole: the claims of a verified token, which
// stay remembered, carry the package's role constant (no string of their
// own) and a UTC expiry (no pointer to the local zone), fresh from the
// MAC check or from the memory.
func TestVerifiedClaimsShareTheRole(t *testing.T) {
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, role := range []Role{RoleDriver, RoleRider, RoleOps} {
		tok, err := s.Mint(Claims{Subject: "u1", Role: role, Expires: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		for _, from := range []string{"the MAC check", "the memory"} {
			c, err := s.Verify(tok, now)
			if err != nil {
				t.Fatal(err)
			}
			if c.Role != role || unsafe.StringData(string(c.Role)) != unsafe.StringData(string(role)) {
				t.Errorf("%s from %s: role %q is a string of its own, want the package's constant", role, from, c.Role)
			}
			if c.Expires.Location() != time.UTC || c.Expires.Unix() != now.Add(time.Hour).Unix() {
				t.Errorf("%s from %s: expires %v, want %v in UTC", role, from, c.Expires, now.Add(time.Hour).Unix())
			}
		}
	}
}

// BenchmarkVerifyRemembered is Verify of a token it remembers: what every
// request of a driver app pays.
func BenchmarkVerifyRemembered(b *testing.B) {
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	tok, err := s.Mint(Claims{Subject: "d12345", Role: RoleDriver, Expires: now.Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Verify(tok, now); err != nil {
			b.Fatal(err)
		}
	}
}
