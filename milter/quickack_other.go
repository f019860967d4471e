//go:build !linux

package milter

import "net"

// quickAcker is a no-op where TCP_QUICKACK does not exist.
func quickAcker(*net.TCPConn) func() { return nil }
