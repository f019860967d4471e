package opes

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden %s (run go test -update once): %v", path, err)
	}
	if string(want) != got {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// hookService is a test service whose hooks are plain functions.
type hookService struct {
	needs Needs
	rcpt  func(tx *Transaction, r *Recipient) (Verdict, error)
	mail  func(tx *Transaction) (Verdict, error)
	eom   func(tx *Transaction) (Verdict, error)
	helo  func(tx *Transaction) (Verdict, error)
}

func (s *hookService) Needs() Needs { return s.needs }

func (s *hookService) Begin(tx *Transaction) ServiceTx { return &hookTx{s: s, tx: tx} }

type hookTx struct {
	BaseTx
	s  *hookService
	tx *Transaction
}

func (h *hookTx) Helo(context.Context) (Verdict, error) {
	if h.s.helo == nil {
		return ContinueVerdict, nil
	}
	return h.s.helo(h.tx)
}

func (h *hookTx) Mail(context.Context) (Verdict, error) {
	if h.s.mail == nil {
		return ContinueVerdict, nil
	}
	return h.s.mail(h.tx)
}

func (h *hookTx) Rcpt(_ context.Context, r *Recipient) (Verdict, error) {
	if h.s.rcpt == nil {
		return ContinueVerdict, nil
	}
	return h.s.rcpt(h.tx, r)
}

func (h *hookTx) EndOfMessage(context.Context) (Verdict, error) {
	if h.s.eom == nil {
		return ContinueVerdict, nil
	}
	return h.s.eom(h.tx)
}

const testSystem = "https://mx1.example.net/opes/"

func spec(name string, impl Service) *ServiceSpec {
	return &ServiceSpec{Name: name, Kind: "test", URI: testSystem + "svc/" + name, Impl: impl}
}

// newTestProcessor builds a processor whose rule "all" runs the services
// from connect on.
func newTestProcessor(t *testing.T, specs ...*ServiceSpec) *Processor {
	t.Helper()
	p := &Policy{System: System{URI: testSystem}, Services: specs}
	if len(specs) > 0 {
		p.Rules = []*Rule{{Name: "all", Stage: StageConnect, Run: specs}}
	}
	proc, err := NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	proc.newID = func() string { return "01TESTTRACEID" }
	return proc
}
