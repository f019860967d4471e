package opes

import (
	"sync"
	"testing"
)

type recordingReporter struct {
	mu   sync.Mutex
	recs []*TransactionRecord
}

func (r *recordingReporter) Report(rec *TransactionRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func TestTransactionRecords(t *testing.T) {
	rep := &recordingReporter{}
	trap := spec("trap", &hookService{needs: Needs{Stages: StagesOf(StageMail, StageRcpt)},
		mail: func(tx *Transaction) (Verdict, error) {
			if tx.Sender.Addr == "blocked@example.org" {
				return RejectVerdict("blocked"), nil
			}
			return ContinueVerdict, nil
		},
		rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
			if r.Addr == "trap@example.net" {
				return RejectVerdict("trap"), nil
			}
			return ContinueVerdict, nil
		}})
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{trap}, Rules: []*Rule{{Name: "all", Run: []*ServiceSpec{trap}}}}
	proc, err := NewProcessor(p, nil, WithReporter(rep, true))
	if err != nil {
		t.Fatal(err)
	}
	proc.newID = func() string { return "01TESTTRACEID" }
	if n := proc.Needs(); !n.Body || proc.storeBody || !n.Stages.Has(StageMail) || !n.Stages.Has(StageHelo) {
		t.Fatalf("measuring size must ask for the body without storing it: needs %+v store %v", proc.Needs(), proc.storeBody)
	}
	s := proc.NewSession()
	s.Conn().Helo = "client.example\r\nX: y"
	// 1: delivered to one of two recipients; size counted.
	runMessage(t, s, "alice@example.org", []string{"trap@example.net", "bob@example.net"}, [][2]string{{"Subject", " hi"}}, "0123456789")
	// 2: refused at MAIL.
	if o := s.Mail(ctx, Address{Addr: "blocked@example.org"}); o.Kind != Reject {
		t.Fatalf("MAIL: %v", o.Kind)
	}
	s.Abort()
	// 3: the client gives up after RCPT.
	s.Mail(ctx, Address{Addr: "alice@example.org"})
	s.Rcpt(ctx, Address{Addr: "bob@example.net"})
	s.Abort()
	s.Abort() // a second ABORT must not report twice
	s.Close()

	if len(rep.recs) != 3 {
		t.Fatalf("%d records, want 3", len(rep.recs))
	}
	r := rep.recs[0]
	if r.Outcome.Verdict != "accept" || r.Outcome.Stage != "eom" || r.Size != 10 || r.TraceID != "01TESTTRACEID" || r.QueueID != "4ABCD12" ||
		len(r.Recipients) != 2 || !r.Recipients[0].Refused || r.Recipients[1].Refused || r.Helo != "client.example X: y" {
		t.Errorf("delivered record %+v", r)
	}
	if len(r.Services) != 1 || r.Services[0].Action != "rejected" || r.Services[0].URI != testSystem+"svc/trap" {
		t.Errorf("services %+v", r.Services)
	}
	if r := rep.recs[1]; r.Outcome != (OutcomeInfo{Stage: "mail", Verdict: "reject", Code: 550}) || r.Sender != "blocked@example.org" || r.Size != -1 {
		t.Errorf("MAIL refusal record %+v", r)
	}
	if r := rep.recs[2]; r.Outcome.Verdict != "aborted" || r.Outcome.Stage != "rcpt" {
		t.Errorf("aborted record %+v", r)
	}
}
