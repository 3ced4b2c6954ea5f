package dispatch

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestVerifiedTokenIsACopy: the remembered token is a copy, so a token
// cut from a larger string (a request's header block) does not keep that
// string alive for as long as the token is remembered.
func TestVerifiedTokenIsACopy(t *testing.T) {
	s, err := NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := s.Mint(Claims{Subject: "d1", Role: RoleDriver, Expires: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	block := "Host: 127.0.0.1\r\nAuthorization: Bearer " + tok + "\r\n" + strings.Repeat("X-Pad: x\r\n", 400)
	i := strings.Index(block, tok)
	in := block[i : i+len(tok)]
	if _, err := s.Verify(in, now); err != nil {
		t.Fatal(err)
	}
	start := uintptr(unsafe.Pointer(unsafe.StringData(block)))
	end := start + uintptr(len(block))
	s.verifiedMu.Lock()
	defer s.verifiedMu.Unlock()
	if len(s.verified) != 1 {
		t.Fatalf("%d tokens remembered, want 1", len(s.verified))
	}
	for k := range s.verified {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(k))); p >= start && p < end {
			t.Fatalf("the remembered token points into the %d-byte string it was cut from", len(block))
		}
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
