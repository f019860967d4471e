//go:build !linux

package enginetest

import "os/exec"

func dieWithParent(*exec.Cmd) {}

func ownPIDNamespace(*exec.Cmd) {}

func hasCloneflags(*exec.Cmd) bool { return false }
