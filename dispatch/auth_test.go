package dispatch_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
)

func newSigner(t testing.TB) *dispatch.Signer {
	t.Helper()
	s, err := dispatch.NewSigner([]byte("0123456789abcdef-test-secret"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenRoundTripAndFailures(t *testing.T) {
	s := newSigner(t)
	exp := t0.Add(time.Hour)
	tok, err := s.Mint(dispatch.Claims{Subject: "d42", Role: dispatch.RoleDriver, Expires: exp})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Verify(tok, t0)
	if err != nil || c.Subject != "d42" || c.Role != dispatch.RoleDriver || !c.Expires.Equal(exp) {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
	other, _ := dispatch.NewSigner([]byte("another-secret-of-16+"))
	payload, sig, _ := strings.Cut(tok, ".")
	forged, _ := other.Mint(dispatch.Claims{Subject: "d42", Role: dispatch.RoleOps, Expires: exp})
	forgedPayload, _, _ := strings.Cut(forged, ".")
	tests := []struct {
		name string
		tok  string
		now  time.Time
		want error
	}{
		{"expired exactly", tok, exp, dispatch.ErrTokenExpired},
		{"other secret", forged, t0, dispatch.ErrTokenSignature},
		{"role swapped in payload", forgedPayload + "." + sig, t0, dispatch.ErrTokenSignature},
		{"no dot", payload, t0, dispatch.ErrTokenMalformed},
		{"bad base64 sig", payload + ".!!", t0, dispatch.ErrTokenMalformed},
		{"truncated sig", payload + "." + sig[:10], t0, dispatch.ErrTokenSignature},
		{"huge", strings.Repeat("a", 2000), t0, dispatch.ErrTokenMalformed},
		{"empty", "", t0, dispatch.ErrTokenMalformed},
	}
	for _, tt := range tests {
		if _, err := s.Verify(tt.tok, tt.now); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestMintRejectsBadClaims(t *testing.T) {
	s := newSigner(t)
	for _, c := range []dispatch.Claims{
		{Subject: "", Role: dispatch.RoleRider},
		{Subject: "u1", Role: "admin"},
		{Subject: strings.Repeat("x", 65), Role: dispatch.RoleRider},
	} {
		if _, err := s.Mint(c); !errors.Is(err, dispatch.ErrTokenMalformed) {
			t.Errorf("Mint(%+v) err = %v", c, err)
		}
	}
	if _, err := dispatch.NewSigner([]byte("short")); err == nil {
		t.Error("short secret accepted")
	}
}

func FuzzVerify(f *testing.F) {
	s := newSigner(f)
	good, _ := s.Mint(dispatch.Claims{Subject: "u1", Role: dispatch.RoleRider, Expires: t0.Add(time.Hour)})
	for _, seed := range []string{good, "", ".", "a.b", good + "x", strings.Replace(good, "e", "f", 1)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := s.Verify(tok, t0)
		if err != nil {
			return
		}
		// Anything accepted must be what this signer minted.
		again, err := s.Mint(c)
		if err != nil || !c.Role.Valid() || c.Subject == "" {
			t.Fatalf("accepted %q -> %+v (%v)", tok, c, err)
		}
		if _, err := s.Verify(again, t0); err != nil {
			t.Fatalf("re-minted token fails: %v", err)
		}
	})
}

// TestVerifyRemembersOnlyWhatVerified: a token verified once verifies
// again (from memory) until it expires, and remembering it lets no
// altered token through.
func TestVerifyRemembersOnlyWhatVerified(t *testing.T) {
	s := newSigner(t)
	now := time.Unix(1_700_000_000, 0)
	c := dispatch.Claims{Subject: "d42", Role: dispatch.RoleDriver, Expires: now.Add(time.Minute)}
	tok, err := s.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		got, err := s.Verify(tok, now)
		if err != nil || got.Subject != "d42" || got.Role != dispatch.RoleDriver || !got.Expires.Equal(c.Expires) {
			t.Fatalf("verify %d: %+v %v", i, got, err)
		}
	}
	if _, err := s.Verify(tok, now.Add(time.Minute)); !errors.Is(err, dispatch.ErrTokenExpired) {
		t.Fatalf("remembered token past its expiry: %v, want ErrTokenExpired", err)
	}
	payload, sig, _ := strings.Cut(tok, ".")
	other, _ := s.Mint(dispatch.Claims{Subject: "d43", Role: dispatch.RoleDriver, Expires: now.Add(time.Minute)})
	otherPayload, _, _ := strings.Cut(other, ".")
	if _, err := s.Verify(otherPayload+"."+sig, now); !errors.Is(err, dispatch.ErrTokenSignature) {
		t.Fatalf("d43's claims with d42's signature: %v, want ErrTokenSignature", err)
	}
	if _, err := s.Verify(payload+"."+sig[:len(sig)-2]+"AA", now); err == nil {
		t.Fatal("altered signature verified")
	}
	foreign, _ := dispatch.NewSigner([]byte("another-secret-of-16+bytes"))
	if _, err := foreign.Verify(tok, now); !errors.Is(err, dispatch.ErrTokenSignature) {
		t.Fatalf("another secret: %v, want ErrTokenSignature", err)
	}
}
