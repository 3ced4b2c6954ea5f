// Package sim owns city simulation: where simulated drivers and riders
// appear, how they move, and the demand that drives a run.
package sim
