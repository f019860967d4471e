package reroute

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

const testSystem = "https://mx1.example.net/opes/"

var ctx = context.Background()

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newProcessor runs svc for every transaction from the stage given.
func newProcessor(t *testing.T, svc opes.Service, st opes.Stage, onError opes.OnError) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "reroute", Kind: "reroute", URI: testSystem + "svc/reroute", Impl: svc, OnError: onError}
	pol := &opes.Policy{
		System:   opes.System{URI: testSystem},
		Services: []*opes.ServiceSpec{spec},
		Rules:    []*opes.Rule{{Name: "all", Stage: st, Run: []*opes.ServiceSpec{spec}}},
	}
	p, err := opes.NewProcessor(pol, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type result struct {
	eom   *opes.Outcome   // nil when the message did not get that far
	rcpts []*opes.Outcome // one per RCPT
	hdr   []opes.HeaderField
}

// runMessage drives a session the way the milter bridge does (as
// opes/processor_test.go's runMessage) and returns every outcome and the
// header as the MTA would deliver it.
func runMessage(t *testing.T, p *opes.Processor, from string, rcpts []string, header [][2]string) result {
	t.Helper()
	s := p.NewSession()
	defer s.Close()
	s.Connect(ctx)
	var res result
	if o := s.Mail(ctx, opes.Address{Addr: from}); o.Kind != opes.Continue {
		t.Fatalf("MAIL refused: %v", o.Reply)
	}
	accepted := 0
	for _, r := range rcpts {
		o := s.Rcpt(ctx, opes.Address{Addr: r, Args: []string{"NOTIFY=FAILURE"}})
		res.rcpts = append(res.rcpts, o)
		if o.Kind == opes.Continue {
			accepted++
		}
	}
	if accepted == 0 {
		return res
	}
	s.Data(ctx)
	var fields []opes.HeaderField
	for _, h := range header {
		s.Header(h[0], h[1])
		fields = append(fields, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	if o := s.EndOfHeaders(ctx); o.Kind != opes.Continue {
		res.eom = o
		return res
	}
	if o := s.BodyChunk([]byte("Hello\r\n")); o != nil {
		res.eom = o
		return res
	}
	res.eom = s.EndOfMessage(ctx, "4ABCD12")
	s.Finish()
	if res.eom.Kind == opes.Continue {
		res.hdr = opes.ApplyChanges(fields, res.eom.HeaderChanges)
	}
	return res
}

func field(hdr []opes.HeaderField, name string) string {
	for _, f := range hdr {
		if strings.EqualFold(f.Name, name) {
			return strings.TrimSpace(f.Value)
		}
	}
	return ""
}

func count(hdr []opes.HeaderField, name string) int {
	n := 0
	for _, f := range hdr {
		if strings.EqualFold(f.Name, name) {
			n++
		}
	}
	return n
}

// checkRefusal asserts the codes and that the processor added the trace
// (PROFILE §3).
func checkRefusal(t *testing.T, o *opes.Outcome, code int, enhanced, text string) {
	t.Helper()
	if o == nil || o.Reply == nil {
		t.Fatalf("no refusal: %+v", o)
	}
	r := o.Reply.String()
	if o.Reply.Code != code || o.Reply.Enhanced != enhanced {
		t.Errorf("reply %d %s, want %d %s:\n%s", o.Reply.Code, o.Reply.Enhanced, code, enhanced, r)
	}
	if !strings.Contains(r, text) {
		t.Errorf("reply lacks %q:\n%s", text, r)
	}
	if !strings.Contains(r, opes.FieldSystem+": "+testSystem) || !strings.Contains(r, opes.FieldVia+": ") {
		t.Errorf("reply lacks the trace:\n%s", r)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func writeFileAt(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
