package milter

import (
	"net"

	"golang.org/x/sys/unix"
)

// quickAcker returns a function that re-arms TCP_QUICKACK. Linux clears
// the flag after it has sent an ACK, so it must be set before every read.
func quickAcker(c *net.TCPConn) func() {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return func() {
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
}
