package dispatch

import (
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
