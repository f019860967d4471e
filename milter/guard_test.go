package milter

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
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
