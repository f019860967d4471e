package childmilter

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

const (
	testSystem = "https://mx1.example.net/opes/"
	svcURI     = testSystem + "svc/child"
	queueID    = "4XQ7Z2N1"
)

var bg = context.Background()

// newService builds the service from a TOML options table.
func newService(t *testing.T, toml string) *Service {
	t.Helper()
	svc, err := New(optiontest.Decoder(t, "[options]\n"+toml))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return svc.(*Service)
}

// newProcessor runs svc from the connect stage on, as a service that is
// not bypassable (so a failure tempfails) unless onError says otherwise.
func newProcessor(t *testing.T, svc opes.Service, onError opes.OnError) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "child", Kind: "milter", URI: svcURI, Impl: svc, OnError: onError}
	p := &opes.Policy{
		System:   opes.System{URI: testSystem},
		Services: []*opes.ServiceSpec{spec},
		Rules:    []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: []*opes.ServiceSpec{spec}}},
	}
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return proc
}

// message is one SMTP transaction to drive through a session.
type message struct {
	from   string
	rcpts  []string
	header [][2]string // values as the bridge passes them: with the space after the colon
	body   string      // CRLF line ends
}

func testMessage() message {
	return message{
		from:  "alice@example.org",
		rcpts: []string{"bob@example.net"},
		header: [][2]string{
			{"From", " Alice <alice@example.org>"},
			{"To", " Bob <bob@example.net>"},
			{"Subject", " Quarterly figures"},
			{"Date", " Wed, 26 Nov 2025 10:00:00 +0000"},
			{"Message-ID", " <20251126100000.1@example.org>"},
		},
		body: "Hello Bob,\r\n\r\nthe figures are attached.\r\n\r\nAlice\r\n",
	}
}

// result is what the MTA would be told at each stage.
type result struct {
	stage   string // stage of the final outcome
	outcome *opes.Outcome
	rcpts   []*opes.Outcome
}

// drive runs m through a new session of proc the way the milter bridge
// does, from connect to the end of data, stopping at the first refusal.
func drive(t *testing.T, proc *opes.Processor, m message) result {
	t.Helper()
	s := proc.NewSession()
	defer s.Close()
	c := s.Conn()
	c.Hostname, c.Family, c.Port = "localhost", "tcp4", 41234
	c.Addr = netip.MustParseAddr("127.0.0.1")
	c.MTAName, c.DaemonName = "mx1.example.net", "smtpd"
	if o := s.Connect(bg); o.Kind != opes.Continue {
		return result{stage: "connect", outcome: o}
	}
	if o := s.Helo(bg, "client.example.org"); o.Kind != opes.Continue {
		return result{stage: "helo", outcome: o}
	}
	s.StartTransaction()
	s.SetQueueID(queueID)
	if o := s.Mail(bg, opes.Address{Addr: m.from}); o.Kind != opes.Continue {
		return result{stage: "mail", outcome: o}
	}
	var r result
	accepted := 0
	for _, rc := range m.rcpts {
		o := s.Rcpt(bg, opes.Address{Addr: rc})
		r.rcpts = append(r.rcpts, o)
		if o.Kind == opes.Continue {
			accepted++
		}
	}
	if accepted == 0 {
		r.stage = "rcpt"
		return r
	}
	if o := s.Data(bg); o.Kind != opes.Continue {
		r.stage, r.outcome = "data", o
		return r
	}
	for _, h := range m.header {
		s.Header(h[0], h[1])
	}
	if o := s.EndOfHeaders(bg); o.Kind != opes.Continue {
		r.stage, r.outcome = "headers", o
		return r
	}
	if m.body != "" {
		if o := s.BodyChunk([]byte(m.body)); o != nil {
			r.stage, r.outcome = "body", o
			return r
		}
	}
	r.stage, r.outcome = "eom", s.EndOfMessage(bg, queueID)
	s.Finish()
	return r
}

// delivered is the header as the MTA will deliver it.
func delivered(m message, o *opes.Outcome) []opes.HeaderField {
	var fields []opes.HeaderField
	for _, h := range m.header {
		fields = append(fields, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	return opes.ApplyChanges(fields, o.HeaderChanges)
}

// via returns the value of the OPES-Via field the outcome adds.
func via(t *testing.T, o *opes.Outcome) string {
	t.Helper()
	for _, c := range o.HeaderChanges {
		if c.Name == opes.FieldVia {
			return strings.Join(strings.Fields(c.Value), " ")
		}
	}
	t.Fatalf("no %s among the header changes %+v", opes.FieldVia, o.HeaderChanges)
	return ""
}

// wantTrace checks that the trace lists the child with action.
func wantTrace(t *testing.T, trace, action string) {
	t.Helper()
	if want := svcURI + "; action=" + action; !strings.Contains(trace, want) {
		t.Errorf("trace %q does not contain %q", trace, want)
	}
}
