package geo

import "errors"

var (
	// ErrInvalidLatLng is wrapped by every coordinate validation error. The
	// wrapping error names the field and the value.
	ErrInvalidLatLng = errors.New("invalid coordinate")
	// ErrInvalidResolution is returned for an H3 resolution outside 0..15.
	ErrInvalidResolution = errors.New("invalid H3 resolution")
	// ErrInvalidCell is returned for an H3 index that is not a valid cell.
	ErrInvalidCell = errors.New("invalid H3 cell")
	// ErrInvalidBBox is returned for a malformed bounding box.
	ErrInvalidBBox = errors.New("invalid bounding box")
)
