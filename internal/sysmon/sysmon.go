// Package sysmon keeps the Go runtime's monitor thread from sleeping
// deeply whenever every goroutine is idle.
//
// A milter behind an MTA is woken for each packet — a dozen times per
// message, a few milliseconds apart — and idle in between. The runtime's
// monitor thread (sysmon) parks when all processors are idle and is woken
// again by the next system call, then polls every 20 µs until it parks
// again: two or three more context switches per packet, which measured
// behind Postfix were about a third of the daemon's CPU
// (docs/performance.md). The runtime has no setting for this
// (golang/go#18236); the one switch that keeps sysmon polling — backing
// off to every 10 ms when nothing happens — is the scheduler trace: with a
// period of 2^31-1 ms (24.8 days) its only other effect is one "SCHED"
// line on standard error per period (and at a fatal error). GODEBUG is
// read once at start, so the daemon re-executes itself with the setting.
package sysmon

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Setting is the GODEBUG entry that keeps sysmon polling.
const Setting = "schedtrace=2147483647"

// Env returns env with Setting added to GODEBUG, and false when GODEBUG
// already sets schedtrace: an operator's choice stands, and
// GODEBUG=schedtrace=0 keeps the runtime's default.
func Env(env []string) ([]string, bool) {
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		for _, s := range strings.Split(v, ",") {
			if strings.HasPrefix(strings.TrimSpace(s), "schedtrace=") {
				return env, false
			}
		}
		found = true
		if v == "" {
			out = append(out, "GODEBUG="+Setting)
		} else {
			out = append(out, "GODEBUG="+v+","+Setting)
		}
	}
	if !found {
		out = append(out, "GODEBUG="+Setting)
	}
	return out, true
}

// Exec re-executes the running program, same arguments and process id,
// with Setting added to GODEBUG, unless GODEBUG already sets schedtrace.
// It returns only when it did not: nil when nothing was needed, else why
// the exec failed (the caller goes on without the setting).
func Exec() error {
	env, needed := Env(os.Environ())
	if !needed {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("sysmon: find own executable: %w", err)
	}
	if err := syscall.Exec(self, os.Args, env); err != nil {
		return fmt.Errorf("sysmon: re-execute %s: %w", self, err)
	}
	return nil // not reached
}
