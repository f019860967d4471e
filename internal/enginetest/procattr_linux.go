package enginetest

import (
	"os"
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the process when the test binary dies
// (a timeout panic, ^C), so no daemon outlives its test run. It does not
// survive a change of user: spamd, which drops root, is not covered.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// ownPIDNamespace starts the daemon as the first process of a PID
// namespace of its own, as root. rspamd's main process dies with the test
// binary (dieWithParent), but its workers do not: they would be left
// running, holding the port. Every process of a namespace is killed when
// its first process dies, so nothing outlives the test run.
func ownPIDNamespace(cmd *exec.Cmd) {
	if os.Geteuid() != 0 || cmd.SysProcAttr == nil {
		return
	}
	cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWPID
}

func hasCloneflags(cmd *exec.Cmd) bool {
	return cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags&syscall.CLONE_NEWPID != 0
}
