package servicetest

import (
	"context"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

// QueueID is the queue id the MTA gives every message of these helpers.
const QueueID = "4XyZ1Q"

// Message is one message as an MTA hands it to the processor: the
// client's connection, the envelope, the header fields (values as the MTA
// sends them, with their leading space) and the body.
type Message struct {
	Conn   opes.Connection
	Sender string
	Rcpts  []string
	Header [][2]string
	Body   string
}

// Transaction builds m's transaction in a new session of p as the
// processor holds it at the end of the message — connection, envelope,
// queue id, header, stored body — without running any stage, for a test
// that calls one service's hooks itself. The session closes when the test
// ends.
func (m Message) Transaction(t testing.TB, p *opes.Processor) *opes.Transaction {
	t.Helper()
	s := p.NewSession()
	t.Cleanup(s.Close)
	*s.Conn() = m.Conn
	tx := s.Transaction()
	tx.Sender = &opes.Address{Addr: m.Sender}
	tx.QueueID = QueueID
	for _, r := range m.Rcpts {
		tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}})
	}
	for _, f := range m.Header {
		s.Header(f[0], f[1])
	}
	if o := s.BodyChunk([]byte(m.Body)); o != nil {
		t.Fatalf("BodyChunk: %+v", o)
	}
	return tx
}

// Deliver drives m through a new session of p as an MTA does: connect,
// HELO (when the connection has one), MAIL, every RCPT, DATA, the header
// fields, the body in 1000-octet chunks and the end of message with
// QueueID. It returns the end-of-message outcome and the header fields as
// sent; the session stays open until the test ends, so the outcome's body
// can still be read.
func (m Message) Deliver(t testing.TB, p *opes.Processor) (*opes.Outcome, []opes.HeaderField) {
	t.Helper()
	ctx := context.Background()
	s := p.NewSession()
	t.Cleanup(s.Close)
	*s.Conn() = m.Conn
	s.Connect(ctx)
	if m.Conn.Helo != "" {
		s.Helo(ctx, m.Conn.Helo)
	}
	s.Mail(ctx, opes.Address{Addr: m.Sender})
	for _, r := range m.Rcpts {
		s.Rcpt(ctx, opes.Address{Addr: r})
	}
	s.Data(ctx)
	sent := make([]opes.HeaderField, 0, len(m.Header))
	for _, f := range m.Header {
		s.Header(f[0], f[1])
		sent = append(sent, opes.HeaderField{Name: f[0], Value: f[1]})
	}
	s.EndOfHeaders(ctx)
	for rest := []byte(m.Body); len(rest) > 0; {
		n := min(len(rest), 1000)
		if o := s.BodyChunk(rest[:n]); o != nil {
			t.Fatalf("BodyChunk: %+v", o)
		}
		rest = rest[n:]
	}
	return s.EndOfMessage(ctx, QueueID), sent
}
