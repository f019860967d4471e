package milter

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// writeCounter is a net.Conn that records each Write.
type writeCounter struct {
	net.Conn
	writes [][]byte
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

// packet writes one milter packet the way go-milter does: the 5-byte
// length and code, then the payload.
func packet(t *testing.T, c *guardConn, code byte, payload string) []byte {
	t.Helper()
	hdr := make([]byte, 5)
	binary.BigEndian.PutUint32(hdr, uint32(len(payload)+1))
	hdr[4] = code
	if _, err := c.Write(hdr); err != nil {
		t.Fatal(err)
	}
	if payload != "" {
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	return append(hdr, payload...)
}

// The trace's header insertions and the accept leave in one write, in
// order; a progress packet is not held; held bytes stay bounded.
func TestWritesJoinedUntilTheFinalAnswer(t *testing.T) {
	wc := &writeCounter{}
	c := &guardConn{Conn: wc}
	var want []byte
	want = append(want, packet(t, c, 'i', "\x00\x00\x00\x00OPES-System\x00https://x/; id=1\x00")...)
	want = append(want, packet(t, c, 'i', "\x00\x00\x00\x00OPES-Via\x00https://x/; id=1\x00")...)
	if len(wc.writes) != 0 {
		t.Fatalf("modifications written before the final answer: %d writes", len(wc.writes))
	}
	want = append(want, packet(t, c, 'a', "")...)
	if len(wc.writes) != 1 || !bytes.Equal(wc.writes[0], want) {
		t.Fatalf("%d writes; first %q, want %q", len(wc.writes), wc.writes, want)
	}

	// Progress goes out at once, with what was held before it.
	wc.writes = nil
	packet(t, c, 'h', "X-A\x00b\x00")
	packet(t, c, 'p', "")
	if len(wc.writes) != 1 {
		t.Fatalf("progress held: %d writes", len(wc.writes))
	}

	// A large replaced body is not held whole.
	wc.writes = nil
	chunk := string(bytes.Repeat([]byte("x"), 60<<10))
	for range 5 {
		packet(t, c, 'b', chunk)
	}
	packet(t, c, 'c', "")
	total := 0
	for _, w := range wc.writes {
		if len(w) > maxHeldWrites+len(chunk)+10 {
			t.Errorf("a write of %d octets", len(w))
		}
		total += len(w)
	}
	if len(wc.writes) < 3 || total != 5*(len(chunk)+5)+5 {
		t.Errorf("%d writes, %d octets", len(wc.writes), total)
	}
}

// A closed connection hands its read buffer to the next one; a Read
// blocked when the connection is closed returns, and a Read after Close
// fails instead of using the buffer another connection now owns. Run
// with -race, this also shows the handover is ordered.
func TestReadBufferReusedAfterClose(t *testing.T) {
	ln, err := net.Listen("unix", t.TempDir()+"/g.sock")
	if err != nil {
		t.Fatal(err)
	}
	gl := &guardListener{Listener: ln, log: slog.New(slog.DiscardHandler), metrics: noSessionMetrics{}}
	defer gl.Close()
	accept := func() (*guardConn, net.Conn) {
		t.Helper()
		cc, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		sc, err := gl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return sc.(*guardConn), cc
	}
	g1, _ := accept()
	r1 := g1.r
	done := make(chan error, 1)
	go func() {
		_, err := g1.Read(make([]byte, 16)) // blocks: the client sends nothing
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = g1.Close()
	if err := <-done; err == nil {
		t.Fatal("a Read blocked at Close returned no error")
	}
	if _, err := g1.Read(make([]byte, 16)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	g2, c2 := accept()
	if g2.r != r1 {
		t.Log("the pool did not return the closed connection's buffer (allowed, e.g. after a GC)")
	}
	// The reused buffer must not leak bytes of the old connection.
	pkt := []byte{0, 0, 0, 2, 'A', 0}
	if _, err := c2.Write(pkt); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pkt))
	if _, err := io.ReadFull(g2, got); err != nil || !bytes.Equal(got, pkt) {
		t.Fatalf("read %q, %v; want %q", got, err, pkt)
	}
}

// deadlineCounter counts the deadlines set on the socket.
type deadlineCounter struct {
	net.Conn
	set []time.Time
}

func (d *deadlineCounter) SetWriteDeadline(t time.Time) error {
	d.set = append(d.set, t)
	return d.Conn.SetWriteDeadline(t)
}

// go-milter sets and clears a write deadline around every packet; the
// socket gets one only before a write that reaches it, and a write that
// blocks past it still fails.
func TestWriteDeadlineOnlyForRealWrites(t *testing.T) {
	a, b := net.Pipe() // b is never read: writes block
	defer a.Close()
	defer b.Close()
	dc := &deadlineCounter{Conn: a}
	c := &guardConn{Conn: dc}
	for _, code := range []byte{'i', 'i'} { // held modification packets
		_ = c.SetWriteDeadline(time.Now().Add(time.Hour))
		packet(t, c, code, "\x00\x00\x00\x00X\x00y\x00")
		_ = c.SetWriteDeadline(time.Time{})
	}
	if len(dc.set) != 0 {
		t.Fatalf("held packets set %d deadlines on the socket", len(dc.set))
	}
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	hdr := []byte{0, 0, 0, 1, 'a'} // accept: the final answer goes out
	start := time.Now()
	_, err := c.Write(hdr)
	if err == nil {
		t.Fatal("write to a peer that never reads succeeded")
	}
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the deadline did not apply")
	}
	if len(dc.set) != 1 {
		t.Fatalf("%d deadlines set on the socket, want 1", len(dc.set))
	}
}
