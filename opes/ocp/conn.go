package ocp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// wire is one side's transport: the decoder and a serialised writer.
// Messages are atomic on the wire (RFC 4037 §2.1: no interleaving inside
// a message), so one mutex guards every write.
type wire struct {
	nc  net.Conn
	r   *Reader
	wmu sync.Mutex
	bw  *bufio.Writer
	// writeTimeout bounds one message write, so a peer that stops reading
	// cannot block the agent forever.
	writeTimeout time.Duration
	buf          []byte
}

func newWire(nc net.Conn, lim Limits, writeTimeout time.Duration) *wire {
	if writeTimeout <= 0 {
		writeTimeout = 30 * time.Second
	}
	return &wire{nc: nc, r: NewReader(nc, lim), bw: bufio.NewWriterSize(nc, 32<<10), writeTimeout: writeTimeout}
}

func (w *wire) send(m *Message) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	var err error
	w.buf, err = m.Append(w.buf[:0])
	if err != nil {
		return err
	}
	if err := w.nc.SetWriteDeadline(time.Now().Add(w.writeTimeout)); err != nil {
		return fmt.Errorf("ocp: send %s: %w", m.Name, err)
	}
	if _, err := w.bw.Write(w.buf); err != nil {
		return fmt.Errorf("ocp: send %s: %w", m.Name, err)
	}
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("ocp: send %s: %w", m.Name, err)
	}
	if cap(w.buf) > 256<<10 {
		w.buf = nil // do not keep a large payload buffer per idle connection
	}
	return nil
}

// Message names of OCP Core (RFC 4037 §11).
const (
	MsgCS   = "CS"
	MsgCE   = "CE"
	MsgSGC  = "SGC"
	MsgSGD  = "SGD"
	MsgTS   = "TS"
	MsgTE   = "TE"
	MsgAMS  = "AMS"
	MsgAME  = "AME"
	MsgDUM  = "DUM"
	MsgDUY  = "DUY"
	MsgDPI  = "DPI"
	MsgDWSR = "DWSR"
	MsgDWSS = "DWSS"
	MsgDSS  = "DSS"
	MsgDWP  = "DWP"
	MsgDPM  = "DPM"
	MsgDWM  = "DWM"
	MsgNO   = "NO"
	MsgNR   = "NR"
	MsgAQ   = "AQ"
	MsgAA   = "AA"
	MsgPQ   = "PQ"
	MsgPA   = "PA"
	MsgPR   = "PR"
)

// xidMessages are the transaction-scoped messages: their first anonymous
// parameter is the xid.
var xidMessages = map[string]bool{
	MsgTE: true, MsgAMS: true, MsgAME: true, MsgDUM: true, MsgDUY: true, MsgDPI: true,
	MsgDWSR: true, MsgDWSS: true, MsgDSS: true, MsgDWP: true, MsgDPM: true, MsgDWM: true,
}

// PeerError is a connection ended by the peer: a CE message, or a close
// without one (which counts as CE with a failure, §11.2).
type PeerError struct {
	Result Result
}

func (e *PeerError) Error() string { return "ocp: connection ended by peer: " + e.Result.String() }

// ErrClosed is returned for operations on a connection this side ended.
var ErrClosed = errors.New("ocp: connection closed")

// TxError is a transaction ended by the peer with a failure (TE 400).
type TxError struct {
	Xid    uint32
	Result Result
}

func (e *TxError) Error() string {
	return fmt.Sprintf("ocp: transaction %d ended by peer: %s", e.Xid, e.Result)
}

// recentlyEnded remembers the last xids ended on a connection: messages
// the peer sent before it saw our TE are dropped, not treated as
// referring to an unknown transaction.
type recentlyEnded struct {
	ring [64]uint32
	n    int
}

func (r *recentlyEnded) add(x uint32) {
	r.ring[r.n%len(r.ring)] = x
	r.n++
}

func (r *recentlyEnded) has(x uint32) bool {
	for i := 0; i < min(r.n, len(r.ring)); i++ {
		if r.ring[i] == x {
			return true
		}
	}
	return false
}

// xidOf returns the xid of a transaction-scoped message.
func xidOf(m *Message) (uint32, error) {
	if len(m.Anon) == 0 {
		return 0, fmt.Errorf("ocp: %s without xid", m.Name)
	}
	x, err := Uni(m.Anon[0])
	if err != nil {
		return 0, fmt.Errorf("ocp: %s xid: %w", m.Name, err)
	}
	return x, nil
}

// featureURI returns the URI of a feature structure.
func featureURI(v Value) (string, error) {
	s, err := StructOf(v)
	if err != nil {
		return "", fmt.Errorf("feature: %w", err)
	}
	if len(s.Anon) == 0 {
		return "", fmt.Errorf("feature without URI: %w", ErrMissing)
	}
	a, err := AtomOf(s.Anon[0])
	if err != nil {
		return "", fmt.Errorf("feature URI: %w", err)
	}
	return string(a), nil
}

// FeatureURI returns the URI (first member) of a feature or service
// structure.
func FeatureURI(v Value) (string, error) { return featureURI(v) }
