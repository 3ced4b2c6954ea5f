package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal has the kernel SIGKILL the child if the soak itself dies
// (kill -9 of make chaos), so no worker or broker outlives it.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
