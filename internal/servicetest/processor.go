package servicetest

import (
	"io"
	"net/netip"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

// NewProcessor builds a processor for the system systemURI whose one rule
// runs specs, in order, from stage on. limits are the policy's (the zero
// value: the processor's defaults).
func NewProcessor(t testing.TB, systemURI string, stage opes.Stage, limits opes.Limits, specs ...*opes.ServiceSpec) *opes.Processor {
	t.Helper()
	p, err := opes.NewProcessor(&opes.Policy{
		System:   opes.System{URI: systemURI},
		Services: specs,
		Rules:    []*opes.Rule{{Name: "all", Stage: stage, Run: specs}},
		Limits:   limits,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// SpoolingLimits are limits under which the processor keeps at most
// 4 KiB of a body in memory and spools the rest to t.TempDir().
func SpoolingLimits(t testing.TB) opes.Limits {
	return opes.Limits{Body: opes.BodyOptions{MaxMemory: 4096, TempDir: t.TempDir()}}
}

// Deliver drives one transaction through a session of p as an MTA does:
// from 203.0.113.5, a@example.net to b@example.org, the header fields as
// given (values with their leading space), the body in 1000-octet
// chunks. It returns the end-of-message outcome; the session stays open
// until the test ends, so the outcome's body can still be read.
func Deliver(t testing.TB, p *opes.Processor, header [][2]string, body string) *opes.Outcome {
	t.Helper()
	m := Message{Conn: opes.Connection{Addr: netip.MustParseAddr("203.0.113.5")},
		Sender: "a@example.net", Rcpts: []string{"b@example.org"}, Header: header, Body: body}
	o, _ := m.Deliver(t, p)
	return o
}

// DeliveredBody is the body the MTA delivers after the outcome o of a
// message sent with body sent: the replacement o carries, or sent.
func DeliveredBody(t testing.TB, o *opes.Outcome, sent string) string {
	t.Helper()
	if o.Body == nil {
		return sent
	}
	b, err := io.ReadAll(o.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
