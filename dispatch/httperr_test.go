package dispatch_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hexdispatch/hexdispatch/dispatch"
	"github.com/hexdispatch/hexdispatch/geo"
)

type body struct {
	Name   string     `json:"name"`
	Count  int        `json:"count"`
	Pickup geo.LatLng `json:"pickup"`
}

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name, in, ctype string
		status          int
		code, field     string
	}{
		{"ok", `{"name":"a","count":2,"pickup":{"lat":1,"lng":2}}`, "application/json", 0, "", ""},
		{"empty", ``, "", 400, "invalid_json", ""},
		{"syntax", `{"name":`, "", 400, "invalid_json", ""},
		{"bad syntax", `{"name" 1}`, "", 400, "invalid_json", ""},
		{"wrong type", `{"count":"two"}`, "", 400, "invalid_field", "count"},
		{"nested wrong type", `{"pickup":{"lat":"north"}}`, "", 400, "invalid_field", "pickup.lat"},
		{"unknown field", `{"nmae":"a"}`, "", 400, "invalid_field", "nmae"},
		{"trailing", `{"name":"a"} {"name":"b"}`, "", 400, "invalid_json", ""},
		{"too large", `{"name":"` + strings.Repeat("x", 300) + `"}`, "", 413, "body_too_large", ""},
		{"media type", `{}`, "text/plain", 415, "unsupported_media_type", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/x", strings.NewReader(tt.in))
			if tt.ctype != "" {
				r.Header.Set("Content-Type", tt.ctype)
			}
			w := httptest.NewRecorder()
			var b body
			err := dispatch.DecodeJSON(w, r, 256, &b)
			if tt.status == 0 {
				if err != nil || b.Count != 2 || b.Pickup.Lng != 2 {
					t.Fatalf("decode = %+v, %v", b, err)
				}
				return
			}
			var ae *dispatch.APIError
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code || ae.Field != tt.field {
				t.Fatalf("err = %#v, want %d %s field %q", err, tt.status, tt.code, tt.field)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	dispatch.WriteError(w, &dispatch.APIError{Status: 503, Code: "unavailable", Message: "redis down", RetryAfter: 1500 * time.Millisecond})
	if w.Code != 503 || w.Header().Get("Retry-After") != "2" || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %v", w.Code, w.Header())
	}
	var got struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Error.Code != "unavailable" {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	w = httptest.NewRecorder()
	dispatch.WriteError(w, errors.New("secret internals"))
	if w.Code != http.StatusInternalServerError || strings.Contains(w.Body.String(), "secret") {
		t.Fatalf("plain error leaked: %d %q", w.Code, w.Body)
	}
}
