package dispatch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// APIError is the JSON body of every 4xx and 5xx answer:
//
//	{"error": {"code": "invalid_field", "message": "...", "field": "pickup.lat"}}
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// RetryAfter, when set, is sent as the Retry-After header (whole
	// seconds, rounded up).
	RetryAfter time.Duration `json:"-"`
}

func (e *APIError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s (%s)", e.Code, e.Message, e.Field)
	}
	return e.Code + ": " + e.Message
}

// WriteError writes err as a JSON error body. An *APIError keeps its status
// and code; anything else is a 500 whose message is not leaked.
func WriteError(w http.ResponseWriter, err error) {
	var ae *APIError
	if !errors.As(err, &ae) {
		ae = &APIError{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error"}
	}
	if ae.RetryAfter > 0 {
		secs := int((ae.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	w.WriteHeader(ae.Status)
	json.NewEncoder(w).Encode(struct {
		Error *APIError `json:"error"`
	}{ae})
}

// BadField is a 400 naming the offending field.
func BadField(field, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusBadRequest, Code: "invalid_field", Field: field, Message: fmt.Sprintf(format, args...)}
}

// DecodeJSON reads one JSON object of at most maxBytes from r's body into v,
// rejecting unknown fields, trailing data and wrong types with a 4xx
// *APIError that names the field where it can.
func DecodeJSON(w http.ResponseWriter, r *http.Request, maxBytes int64, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &APIError{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type",
			Message: fmt.Sprintf("Content-Type %q: want application/json", ct)}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, maxBytes)
	}
	if dec.More() {
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_json", Message: "body has data after the JSON object"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_json", Message: "body has data after the JSON object"}
	}
	return nil
}

func jsonError(err error, maxBytes int64) *APIError {
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return &APIError{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
			Message: fmt.Sprintf("body is larger than %d bytes", maxBytes)}
	case errors.Is(err, io.EOF):
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_json", Message: "body is empty"}
	case errors.As(err, &se):
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_json", Message: fmt.Sprintf("malformed JSON at byte %d", se.Offset)}
	case errors.As(err, &ute):
		return BadField(ute.Field, "want a JSON %s, got %s", ute.Type.Kind(), ute.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &APIError{Status: http.StatusBadRequest, Code: "invalid_json", Message: "body ends in the middle of the JSON"}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return BadField(field, "unknown field")
	}
	// Errors from a field's UnmarshalText/UnmarshalJSON (a bad enum, an
	// invalid coordinate) carry their own message.
	return &APIError{Status: http.StatusBadRequest, Code: "invalid_field", Message: err.Error()}
}
