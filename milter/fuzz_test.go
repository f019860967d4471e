package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// pkt builds one milter packet: 4-octet length, command code, payload.
func pkt(code byte, parts ...string) []byte {
	var data []byte
	for _, p := range parts {
		data = append(data, p...)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, code), data...)
}

func u32(n uint32) string { return string(binary.BigEndian.AppendUint32(nil, n)) }

// transaction is what Postfix sends for one message: negotiation,
// macros, the SMTP stages, a header, a body chunk, the end and QUIT.
func transaction() []byte {
	var b []byte
	for _, p := range [][]byte{
		pkt('O', u32(6), u32(0x1ff), u32(0x1fffff)),
		pkt('D', "C", "j\x00mx.example\x00{daemon_name}\x00smtpd\x00"),
		pkt('C', "client.example\x00", "4", "\x9c\x40", "192.0.2.1\x00"),
		pkt('H', "client.example\x00"),
		pkt('M', "<a@example.org>\x00", "SIZE=100\x00"),
		pkt('R', "<b@example.net>\x00"),
		pkt('T'),
		pkt('L', "Subject\x00", " hello\x00"),
		pkt('N'),
		pkt('B', "body line\r\n"),
		pkt('D', "E", "i\x004QX1Y2\x00"),
		pkt('E'),
		pkt('Q'),
	} {
		b = append(b, p...)
	}
	return b
}

func addSeeds(f *testing.F) {
	tx := transaction()
	f.Add(tx)
	f.Add(tx[:len(tx)-7])                                                  // cut inside a packet
	f.Add(append(pkt('O', u32(6), u32(0x1ff), u32(0x1fffff)), 0, 0, 0, 0)) // zero-length packet
	f.Add(pkt('C', "no-nul-host"))
	f.Add(pkt('C', "host\x00"))
	f.Add(pkt('C', "host\x00", "4", "\x00"))
	f.Add(pkt('C', "host\x00", "U"))
	f.Add(pkt('M', "<no-nul@example.org>"))
	f.Add(pkt('R', "<no-nul@example.net>"))
	f.Add(append(pkt('O', u32(6), u32(0x1ff), u32(0x1fffff)), pkt('M')...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 'B'})
	f.Add([]byte{})
}

// streamConn is a net.Conn that reads a fixed byte stream.
type streamConn struct {
	r      *bytes.Reader
	closed bool
}

func (c *streamConn) Read(p []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}
func (c *streamConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *streamConn) Close() error                     { c.closed = true; return nil }
func (c *streamConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *streamConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "mta", Net: "unix"} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

// safe says, independently of checkPacket, whether go-milter v0.10.1 can
// take a packet without panicking (shared/spec/milter-stack.md §1.8):
// CONNECT needs "host NUL family", and for inet, inet6 and unix families
// a port and a NUL-terminated address; MAIL and RCPT need a NUL.
func safe(code byte, data []byte) bool {
	switch code {
	case 'C':
		_, rest, ok := bytes.Cut(data, []byte{0})
		if !ok || len(rest) == 0 {
			return false
		}
		if rest[0] == '4' || rest[0] == '6' || rest[0] == 'L' {
			return len(rest) >= 3 && bytes.IndexByte(rest[3:], 0) >= 0
		}
	case 'M', 'R':
		return len(data) == 0 || bytes.IndexByte(data, 0) >= 0
	}
	return true
}

// FuzzGuard feeds an arbitrary MTA byte stream through the packet guard.
// What the guard hands on must be exactly the stream's leading whole
// packets that are safe, unaltered; it must stop with errBadPacket at the
// first unsafe packet and with an EOF error at a truncated one.
func FuzzGuard(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		sc := &streamConn{r: bytes.NewReader(in)}
		g := &guardConn{Conn: sc, log: slog.New(slog.DiscardHandler), metrics: noSessionMetrics{},
			r: bufio.NewReaderSize(ackReader{Conn: sc}, 4<<10)}
		// Read in odd-sized pieces, as go-milter's own reads may be.
		var out []byte
		var err error
		buf := make([]byte, 1+len(in)%7)
		for {
			var n int
			n, err = g.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
			if len(out) > len(in) {
				t.Fatalf("guard produced %d octets from %d", len(out), len(in))
			}
		}
		// The expected prefix, packet by packet.
		want, bad := 0, false
		for rest := in; ; {
			if len(rest) < 4 {
				break
			}
			n := binary.BigEndian.Uint32(rest)
			if n == 0 || n > maxPacket {
				bad = true
				break
			}
			if uint32(len(rest)-4) < n {
				break
			}
			if !safe(rest[4], rest[5:4+n]) {
				bad = true
				break
			}
			want += 4 + int(n)
			rest = rest[4+n:]
		}
		if !bytes.Equal(out, in[:want]) {
			t.Fatalf("guard passed %d octets %q, want the first %d", len(out), out, want)
		}
		if bad != errors.Is(err, errBadPacket) {
			t.Fatalf("stream with an unsafe packet %v, guard error %v", bad, err)
		}
		if !bad && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("clean or truncated stream ended with %v", err)
		}
		if bad && !sc.closed {
			t.Fatal("unsafe packet did not close the connection")
		}
	})
}

// FuzzServe sends an arbitrary byte stream to the real server (guard,
// go-milter, the OPES processor on the trace-only policy) over a unix
// socket. A panic anywhere in the daemon fails the fuzz run; the server
// must also close the connection once the MTA's side is closed, not hang.
func FuzzServe(f *testing.F) {
	addSeeds(f)
	proc, err := opes.NewProcessor(&opes.Policy{System: opes.System{URI: "https://mx.fuzz.example/opes/"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	sock := filepath.Join(f.TempDir(), "m.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	srv := NewServer(proc, Options{Logger: slog.New(slog.DiscardHandler)})
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(func() { _ = srv.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		// The server may close early (bad packet, QUIT): a failed write is fine.
		_, _ = c.Write(in)
		_ = c.(*net.UnixConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server neither answered nor closed within 20 s after the stream ended")
			}
		}
	})
}
