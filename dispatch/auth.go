package dispatch

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Role is what a token's holder may do.
type Role string

// Roles.
const (
	RoleDriver Role = "driver"
	RoleRider  Role = "rider"
	RoleOps    Role = "ops"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleDriver || r == RoleRider || r == RoleOps }

// canonical returns r as the package's constant when it is one (its
// bytes then live in the binary, not the heap), and r otherwise.
func (r Role) canonical() Role {
	switch r {
	case RoleDriver:
		return RoleDriver
	case RoleRider:
		return RoleRider
	case RoleOps:
		return RoleOps
	}
	return r
}

// Token errors; the API answers 401 for all of them.
var (
	ErrTokenMalformed = errors.New("malformed token")
	ErrTokenSignature = errors.New("token signature does not match")
	ErrTokenExpired   = errors.New("token expired")
)

// Claims is what a bearer token says about its holder.
type Claims struct {
	Subject string    `json:"sub"` // a driver, rider or ops user ID
	Role    Role      `json:"role"`
	Expires time.Time `json:"exp"`
}

// MaxTokenLen bounds a token so that verifying one costs little.
const MaxTokenLen = 1024

// MinSecretLen is the shortest HMAC secret accepted.
const MinSecretLen = 16

// Signer mints and verifies HMAC-SHA256 bearer tokens of the form
// base64url(claims JSON) "." base64url(mac).
//
// Verify remembers the tokens it accepted: a driver app sends the same
// token with every position post and trip step, and checking the MAC and
// decoding the claims each time was 3% of the engine's CPU at 500
// rides/s. The key is the SHA-256 of the whole token, signature included,
// so a remembered token is exactly one that verified; expiry is still
// checked on every call. Keys and values hold no pointer (the subject is
// kept in place, at most 64 bytes), so the collector marks the memory's
// arrays without scanning them: as strings and claims they were a quarter
// of what every cycle scanned.
//
// The memory has two generations of up to verifiedCap tokens each. When
// the current one is full it becomes the previous one (the one before is
// dropped), and a token found in the previous one moves back to the
// current: the tokens in use stay remembered while one-off tokens (every
// new rider's) pass through. With one generation that started again when
// full, every driver's token was checked again each time the riders'
// tokens filled it.
type Signer struct {
	secret []byte

	// verifiedMu guards the fields below.
	verifiedMu         sync.Mutex
	verified, previous map[tokenKey]remembered // the current and the previous generation
	capacity           int                     // of a generation: verifiedCap (tests change it)
	checked            int                     // tokens whose MAC and claims were checked
}

// verifiedCap bounds a generation of remembered tokens (about 120 bytes
// each).
const verifiedCap = 1 << 16

// tokenKey files a verified token in the memory: its SHA-256.
type tokenKey [sha256.Size]byte

// maxSubject bounds a token's subject (Claims.validate).
const maxSubject = 64

// remembered is a verified token's claims with no pointer: the subject
// in place, the role as its index in roles, the expiry in unix seconds.
type remembered struct {
	exp    int64
	role   uint8
	subLen uint8
	sub    [maxSubject]byte
}

// roles are the roles a remembered token can carry, by index.
var roles = [...]Role{RoleDriver, RoleRider, RoleOps}

func rememberClaims(c Claims) remembered {
	r := remembered{exp: c.Expires.Unix(), role: uint8(slices.Index(roles[:], c.Role)), subLen: uint8(len(c.Subject))}
	copy(r.sub[:], c.Subject)
	return r
}

func (r remembered) claims() Claims {
	return Claims{Subject: string(r.sub[:r.subLen]), Role: roles[r.role], Expires: time.Unix(r.exp, 0).UTC()}
}

// NewSigner returns a Signer for secret.
func NewSigner(secret []byte) (*Signer, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("token secret is %d bytes, want at least %d", len(secret), MinSecretLen)
	}
	return &Signer{secret: append([]byte(nil), secret...), capacity: verifiedCap}, nil
}

func (s *Signer) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// Mint returns a token for c.
func (s *Signer) Mint(c Claims) (string, error) {
	if err := c.validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(struct {
		Sub  string `json:"sub"`
		Role Role   `json:"role"`
		Exp  int64  `json:"exp"`
	}{c.Subject, c.Role, c.Expires.Unix()})
	if err != nil {
		return "", err
	}
	payload := base64.RawURLEncoding.EncodeToString(b)
	return payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload)), nil
}

func (c Claims) validate() error {
	switch {
	case c.Subject == "" || len(c.Subject) > 64:
		return fmt.Errorf("%w: subject must be 1 to 64 bytes", ErrTokenMalformed)
	case !c.Role.Valid():
		return fmt.Errorf("%w: role %q (want driver, rider or ops)", ErrTokenMalformed, c.Role)
	}
	return nil
}

// Verify checks token's signature and expiry at now and returns its claims.
func (s *Signer) Verify(token string, now time.Time) (Claims, error) {
	if len(token) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: %d bytes, more than %d", ErrTokenMalformed, len(token), MaxTokenLen)
	}
	var buf [MaxTokenLen]byte // on the stack: hashing needs no copy on the heap
	k := tokenKey(sha256.Sum256(buf[:copy(buf[:], token)]))
	s.verifiedMu.Lock()
	r, ok := s.verified[k]
	if !ok {
		if r, ok = s.previous[k]; ok {
			s.rememberLocked(k, r)
		}
	}
	s.verifiedMu.Unlock()
	if ok {
		c := r.claims()
		if !now.Before(c.Expires) {
			return Claims{}, fmt.Errorf("%w at %s", ErrTokenExpired, c.Expires.Format(time.RFC3339))
		}
		return c, nil
	}
	c, err := s.verify(token, now)
	if err != nil {
		return Claims{}, err
	}
	s.verifiedMu.Lock()
	s.checked++
	s.rememberLocked(k, rememberClaims(c))
	s.verifiedMu.Unlock()
	return c, nil
}

// rememberLocked adds a token to the current generation, which becomes
// the previous one first when full. verifiedMu must be held.
func (s *Signer) rememberLocked(k tokenKey, r remembered) {
	if s.verified == nil || len(s.verified) >= s.capacity {
		s.previous, s.verified = s.verified, make(map[tokenKey]remembered)
	}
	s.verified[k] = r
}

// verify checks the MAC and claims of a token Verify has bounded.
func (s *Signer) verify(token string, now time.Time) (Claims, error) {
	payload, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Claims{}, fmt.Errorf("%w: no signature part", ErrTokenMalformed)
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: signature is not base64url", ErrTokenMalformed)
	}
	if !hmac.Equal(got, s.mac(payload)) {
		return Claims{}, ErrTokenSignature
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: payload is not base64url", ErrTokenMalformed)
	}
	var raw struct {
		Sub  string `json:"sub"`
		Role Role   `json:"role"`
		Exp  int64  `json:"exp"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Claims{}, fmt.Errorf("%w: payload: %v", ErrTokenMalformed, err)
	}
	// The role as the package's constant and the expiry in UTC, as the
	// memory gives them back.
	c := Claims{Subject: raw.Sub, Role: raw.Role.canonical(), Expires: time.Unix(raw.Exp, 0).UTC()}
	if err := c.validate(); err != nil {
		return Claims{}, err
	}
	if !now.Before(c.Expires) {
		return Claims{}, fmt.Errorf("%w at %s", ErrTokenExpired, c.Expires.UTC().Format(time.RFC3339))
	}
	return c, nil
}

type claimsKey struct{}

// ClaimsFrom returns the verified claims RequireRole put in ctx.
func ClaimsFrom(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok
}

// wsToken returns the bearer token of a WebSocket upgrade: the
// Authorization header, or the access_token query parameter for browsers,
// which cannot set headers on a WebSocket.
func wsToken(r *http.Request) string {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return tok
	}
	return r.URL.Query().Get("access_token")
}

// RequireRole admits requests carrying "Authorization: Bearer <token>" with
// a valid token of one of roles, and answers 401 (no or bad token) or 403
// (wrong role) with a JSON error otherwise.
func (s *Signer) RequireRole(now func() time.Time, next http.Handler, roles ...Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hexdispatch"`)
			WriteError(w, &APIError{Status: http.StatusUnauthorized, Code: "unauthenticated", Message: "missing bearer token"})
			return
		}
		c, err := s.Verify(tok, now())
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hexdispatch", error="invalid_token"`)
			WriteError(w, &APIError{Status: http.StatusUnauthorized, Code: "invalid_token", Message: err.Error()})
			return
		}
		if !slices.Contains(roles, c.Role) {
			WriteError(w, &APIError{Status: http.StatusForbidden, Code: "forbidden", Message: fmt.Sprintf("role %s may not call this endpoint", c.Role)})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
	})
}
