//go:build !linux

package main

import "os/exec"

// setDeathSignal: only Linux has a parent-death signal; elsewhere the
// children are killed by closeAll on every normal exit path.
func setDeathSignal(*exec.Cmd) {}
