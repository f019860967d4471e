//go:build !linux

package clamav

import "os/exec"

func dieWithTest(*exec.Cmd) {}
