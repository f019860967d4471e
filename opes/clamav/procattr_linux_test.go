package clamav

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel kill clamd when the test binary dies (a
// timeout panic, ^C), so no daemon outlives its test run.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
