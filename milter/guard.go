package milter

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// maxPacket bounds one milter packet. The MTAs negotiate 64 KiB body
// chunks; go-milter itself would allocate up to 512 MiB on request.
const maxPacket = 1<<20 + 64

// errBadPacket is returned to go-milter when the guard drops a connection.
var errBadPacket = errors.New("milter: malformed packet from MTA")

// guardListener wraps the listener go-milter serves on. Its connections
// hand go-milter only packets that cannot crash it: go-milter v0.10.1
// panics (taking the whole daemon down) on a zero-length packet and on
// CONNECT/MAIL/RCPT payloads without a NUL (shared/spec/milter-stack.md
// §1.8). A malformed packet closes that one connection, is logged, and the
// daemon keeps serving the others. On TCP it also re-arms TCP_QUICKACK
// before every read, which removes a ~40 ms delayed-ACK stall per message
// (shared/PERFORMANCE.md).
type guardListener struct {
	net.Listener
	log     *slog.Logger
	metrics SessionMetrics
	readers sync.Pool // *bufio.Reader of closed connections
}

func (l *guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	src := ackReader{Conn: c}
	if tc, ok := c.(*net.TCPConn); ok {
		src.quickAck = quickAcker(tc)
	}
	// Buffered: the MTA's macro and command packets usually arrive
	// together, and one read syscall then serves both. They are small;
	// body chunks are larger than the buffer and bypass it, so 1 KiB
	// serves as well as more. The buffers are reused across connections:
	// with one connection per message, a new one each time was a fifth of
	// the bytes allocated per message.
	r, _ := l.readers.Get().(*bufio.Reader)
	if r == nil {
		r = bufio.NewReaderSize(src, readBufSize)
	} else {
		r.Reset(src)
	}
	return &guardConn{Conn: c, log: l.log, metrics: l.metrics, r: r, pool: &l.readers}, nil
}

// readBufSize is the per-connection read buffer.
const readBufSize = 1 << 10

// ackReader re-arms TCP_QUICKACK before every read from the socket.
type ackReader struct {
	net.Conn
	quickAck func()
}

func (a ackReader) Read(p []byte) (int, error) {
	if a.quickAck != nil {
		a.quickAck()
	}
	return a.Conn.Read(p)
}

type guardConn struct {
	net.Conn
	log     *slog.Logger
	metrics SessionMetrics
	pool    *sync.Pool

	mu      sync.Mutex
	r       *bufio.Reader // nil once closed
	pending []byte        // validated bytes not yet handed to go-milter
	hdr     [4]byte
	rbuf    []byte // reused for packets up to maxReusedPacket

	wmu sync.Mutex
	// wdl is the write deadline go-milter asked for; wdlSet the one the
	// socket has. go-milter sets a deadline before and clears it after
	// every packet, including the modification packets held here that
	// never touch the socket: each is a timer update in the runtime, so
	// the socket gets the deadline asked for only when a write happens.
	wdl, wdlSet time.Time
	held        []byte // a packet header waiting for its payload
	hbuf        []byte // reused storage for held
	out         []byte // whole modification packets waiting for the final answer
}

// maxReusedPacket bounds the packet buffers a connection keeps between
// packets: a connection that once saw a 1 MiB body chunk should not pin
// it, small packets (commands, macros, headers) are the common case.
const maxReusedPacket = 4 << 10

// Write joins go-milter's two writes per packet (5-byte length+code, then
// the payload) into one, and holds modification actions (header, envelope
// and body changes at the end of message) until the final answer, so that
// a message's changes and its accept leave in one write: the trace alone
// is two header insertions, and every write is a system call on the mail
// path. Held bytes are bounded; a progress packet is sent at once.
func (c *guardConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.held == nil && len(p) == 5 && binary.BigEndian.Uint32(p) > 1 {
		if need := 5 + min(int(binary.BigEndian.Uint32(p)), maxPacket); need > cap(c.hbuf) {
			c.hbuf = make([]byte, 0, need)
		}
		c.held = append(c.hbuf[:0], p...)
		return len(p), nil
	}
	if c.held != nil {
		pkt := append(c.held, p...)
		c.held = nil
		err := c.emit(pkt)
		if cap(c.hbuf) > maxReusedPacket {
			c.hbuf = nil
		}
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if err := c.emit(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline records the deadline for the next write to the
// socket (see wdl).
func (c *guardConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	c.wdl = t
	c.wmu.Unlock()
	return nil
}

// SetDeadline sets the read deadline now and the write deadline for the
// next write.
func (c *guardConn) SetDeadline(t time.Time) error {
	_ = c.SetWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

// maxHeldWrites bounds the modification actions held for one write; a
// replaced body is sent in chunks past it.
const maxHeldWrites = 64 << 10

// emit sends one whole packet, or holds it while it is a modification
// action and the held bytes stay under maxHeldWrites.
func (c *guardConn) emit(pkt []byte) error {
	if len(pkt) >= 5 && isModification(pkt[4]) && len(c.out)+len(pkt) <= maxHeldWrites {
		c.out = append(c.out, pkt...)
		return nil
	}
	buf := pkt
	if len(c.out) > 0 {
		buf = append(c.out, pkt...)
	}
	if !c.wdl.Equal(c.wdlSet) {
		if err := c.Conn.SetWriteDeadline(c.wdl); err != nil {
			return err
		}
		c.wdlSet = c.wdl
	}
	_, err := c.Conn.Write(buf)
	if len(c.out) > 0 && cap(buf) <= 2*maxHeldWrites {
		c.out = buf[:0] // keep the grown array for the next message
	} else {
		c.out = c.out[:0]
	}
	return err
}

// isModification reports the milter reply codes that are end-of-message
// modification actions (never a final answer): add, delete and change
// recipients, header fields, sender, body, and quarantine.
func isModification(code byte) bool {
	switch code {
	case '+', '-', '2', 'b', 'e', 'h', 'i', 'm', 'q':
		return true
	}
	return false
}

// Close closes the connection and returns its read buffer for reuse. The
// socket is closed first, so that a Read blocked in another goroutine
// returns and releases the buffer before it is handed on.
func (c *guardConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	if c.r != nil && c.pool != nil {
		c.r.Reset(nil)
		c.pool.Put(c.r)
	}
	c.r = nil
	c.mu.Unlock()
	return err
}

// Read returns bytes of whole, validated packets only.
func (c *guardConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r == nil {
		return 0, net.ErrClosed
	}
	if len(c.pending) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *guardConn) readFull(b []byte) error {
	_, err := io.ReadFull(c.r, b)
	return err
}

func (c *guardConn) next() error {
	if err := c.readFull(c.hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(c.hdr[:])
	if n == 0 || n > maxPacket {
		return c.reject(fmt.Sprintf("packet length %d", n))
	}
	// One buffer per connection, reused while packets stay small: go-milter
	// copies what Read returns before it asks for more, and a buffer per
	// packet was a measurable share of the per-message allocations.
	var buf []byte
	if need := 4 + int(n); need <= cap(c.rbuf) {
		buf = c.rbuf[:need]
	} else {
		buf = make([]byte, need)
		if need <= maxReusedPacket {
			c.rbuf = buf
		}
	}
	copy(buf, c.hdr[:])
	if err := c.readFull(buf[4:]); err != nil {
		return err
	}
	if why := checkPacket(buf[4], buf[5:]); why != "" {
		return c.reject(why)
	}
	c.pending = buf
	return nil
}

func (c *guardConn) reject(why string) error {
	c.log.Warn("milter: dropping connection with malformed packet", "remote", c.RemoteAddr().String(), "why", why)
	c.metrics.MalformedPacket()
	_ = c.Conn.Close()
	return errBadPacket
}

// checkPacket returns why a packet would crash or confuse go-milter, or "".
func checkPacket(code byte, data []byte) string {
	switch code {
	case 'C': // SMFIC_CONNECT: host NUL family [port(2) addr NUL]
		i := indexNUL(data)
		if i < 0 {
			return "CONNECT without NUL after host name"
		}
		rest := data[i+1:]
		if len(rest) < 1 {
			return "CONNECT without protocol family"
		}
		switch rest[0] {
		case 'L', '4', '6':
			if len(rest) < 3 || indexNUL(rest[3:]) < 0 {
				return "CONNECT with truncated port or address"
			}
		}
	case 'M', 'R': // SMFIC_MAIL, SMFIC_RCPT: addr NUL args...
		if len(data) > 0 && indexNUL(data) < 0 {
			return fmt.Sprintf("%c packet without NUL", code)
		}
	}
	return ""
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
