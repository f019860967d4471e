package enginetest

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the process when the test binary dies
// (a timeout panic, ^C), so no daemon outlives its test run. It does not
// survive a change of user: spamd, which drops root, is not covered.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
