// Package dispatch owns the product surface: the ride lifecycle, and (as it
// grows) the HTTP and WebSocket API for riders, drivers and ops.
package dispatch
