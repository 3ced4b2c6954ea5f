// Package geo owns the geometry every other package shares: validated
// coordinates, great-circle distance, H3 cell helpers and pickup-time
// estimates.
//
// Everything here is pure and safe for concurrent use. Coordinates that come
// from outside (HTTP, WebSocket, Kafka, CSV, flags) must pass through
// [NewLatLng] or [ParseLatLng] before they reach h3-go, which silently wraps
// out-of-range input and returns garbage for it.
package geo
