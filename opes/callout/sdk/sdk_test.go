package sdk_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/acl"
	"github.com/opesmilter/opes-milter/opes/callout"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
)

const system = "https://mx1.example.net/opes/"

func serve(t *testing.T, h sdk.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sdk.Serve(ctx, ln, h) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return ln.Addr().String()
}

func processor(t *testing.T, svc opes.Service) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "remote", URI: system + "svc/remote", Impl: svc}
	p, err := opes.NewProcessor(&opes.Policy{System: opes.System{URI: system}, Services: []*opes.ServiceSpec{spec},
		Rules: []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: []*opes.ServiceSpec{spec}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// run drives one message to bob@ and trap@ and returns the RCPT and the
// final outcomes.
func run(t *testing.T, p *opes.Processor) ([]*opes.Outcome, *opes.Outcome) {
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Connect(ctx)
	s.Helo(ctx, "client.example.org")
	s.Mail(ctx, opes.Address{Addr: "alice@example.org"})
	rc := []*opes.Outcome{s.Rcpt(ctx, opes.Address{Addr: "bob@example.net"}), s.Rcpt(ctx, opes.Address{Addr: "trap@example.net"})}
	s.Data(ctx)
	s.Header("Subject", " hi")
	s.EndOfHeaders(ctx)
	s.BodyChunk([]byte("x\r\n"))
	o := s.EndOfMessage(ctx, "Q1")
	s.Finish()
	return rc, o
}

func hostedACL(t *testing.T) sdk.Service {
	t.Helper()
	svc, err := acl.New(optiontest.Decoder(t, "[[options.entry]]\nstage = \"rcpt\"\naction = \"deny\"\nrecipient = [\"trap@example.net\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return sdk.Host(svc, opes.BodyOptions{}, nil)
}

func callout_(t *testing.T, addr, stages string) opes.Service {
	t.Helper()
	svc, err := callout.New(optiontest.Decoder(t, fmt.Sprintf("[options]\nservers = [%q]\nservice = \"acl\"\nstages = %s\n", addr, stages)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.(*callout.Service).Close)
	return svc
}

// TestHostedRecipientRefusal: a hosted service that refuses at RCPT does
// so for that recipient when rcpt is a decision stage of the callout, and
// tempfails the whole message (never loses it) when it is not.
func TestHostedRecipientRefusal(t *testing.T) {
	addr := serve(t, sdk.Mux{"acl": hostedACL(t)})

	rc, o := run(t, processor(t, callout_(t, addr, `["rcpt"]`)))
	if rc[0].Kind != opes.Continue || rc[1].Kind != opes.Reject || !strings.HasPrefix(rc[1].Reply.String(), "550-5.7.1 ") {
		t.Errorf("rcpt outcomes: %v, %v", rc[0].Kind, rc[1].Reply)
	}
	if o.Kind != opes.Continue {
		t.Errorf("message: %v %v", o.Kind, o.Reply)
	}

	rc, o = run(t, processor(t, callout_(t, addr, `["eom"]`)))
	if rc[0].Kind != opes.Continue || rc[1].Kind != opes.Continue {
		t.Errorf("rcpt outcomes without rcpt stage: %v, %v", rc[0].Kind, rc[1].Kind)
	}
	if o.Kind != opes.TempFail || !strings.Contains(o.Reply.String(), "recipient refused after RCPT") {
		t.Errorf("message: %v %v, want a tempfail", o.Kind, o.Reply)
	}
}

type panicky struct{}

func (panicky) Needs() opes.Needs                      { return opes.Needs{Stages: opes.StagesOf(opes.StageEOM)} }
func (panicky) Begin(*opes.Transaction) opes.ServiceTx { return panickyTx{} }

type panickyTx struct{ opes.BaseTx }

func (panickyTx) EndOfMessage(context.Context) (opes.Verdict, error) { panic("boom") }

// TestHostedPanic: a panic in a hosted service fails the transaction (TE
// 400), which the processor handles by the service's failure policy.
func TestHostedPanic(t *testing.T) {
	addr := serve(t, sdk.Mux{"acl": sdk.Host(panicky{}, opes.BodyOptions{}, nil)})
	_, o := run(t, processor(t, callout_(t, addr, `["eom"]`)))
	if o.Kind != opes.TempFail || o.Reply.Code != 451 || o.Reply.Enhanced != "4.3.0" {
		t.Errorf("outcome %v %v, want 451 4.3.0", o.Kind, o.Reply)
	}
}

// rewriter changes everything a service may change at the end of the
// message.
type rewriter struct{}

func (rewriter) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}
func (rewriter) Begin(tx *opes.Transaction) opes.ServiceTx { return &rewriterTx{tx: tx} }

type rewriterTx struct {
	opes.BaseTx
	tx *opes.Transaction
}

func (r *rewriterTx) EndOfMessage(context.Context) (opes.Verdict, error) {
	tx := r.tx
	body, _ := io.ReadAll(tx.Body.Reader())
	if err := tx.ReplaceBody(func(w *opes.Body) error {
		_, err := w.Write([]byte(strings.ReplaceAll(string(body), "secret", "******")))
		return err
	}); err != nil {
		return opes.Verdict{}, err
	}
	tx.Header.Del("X-Internal")
	if err := tx.Header.Set("Subject", "[redacted] "+tx.Header.Get("Subject")); err != nil {
		return opes.Verdict{}, err
	}
	if err := tx.Header.Add("X-Redacted", "1"); err != nil {
		return opes.Verdict{}, err
	}
	if err := tx.ChangeSender(opes.Address{Addr: "bounces@example.org"}); err != nil {
		return opes.Verdict{}, err
	}
	if err := tx.AddRecipient(opes.Address{Addr: "archive@example.net"}); err != nil {
		return opes.Verdict{}, err
	}
	if err := tx.DeleteRecipient("bob@example.net"); err != nil {
		return opes.Verdict{}, err
	}
	return opes.Verdict{Kind: opes.Quarantine, Reason: "redacted, held for review"}, nil
}

// TestHostedChangesMatchLocal: header, body and envelope changes made by
// a hosted service reach the processor exactly as a local run makes them.
func TestHostedChangesMatchLocal(t *testing.T) {
	addr := serve(t, sdk.Mux{"acl": sdk.Host(rewriter{}, opes.BodyOptions{}, nil)})
	outcome := func(p *opes.Processor) string {
		ctx := context.Background()
		s := p.NewSession()
		defer s.Close()
		s.Connect(ctx)
		s.Mail(ctx, opes.Address{Addr: "alice@example.org"})
		s.Rcpt(ctx, opes.Address{Addr: "bob@example.net"})
		s.Data(ctx)
		hdr := [][2]string{{"Subject", " plans"}, {"X-Internal", " yes"}, {"To", " bob@example.net"}, {"X-Internal", " again\r\n\tfolded"}}
		for _, h := range hdr {
			s.Header(h[0], h[1])
		}
		s.EndOfHeaders(ctx)
		s.BodyChunk([]byte("the secret is out\r\n"))
		o := s.EndOfMessage(ctx, "Q2")
		var b strings.Builder
		fmt.Fprintf(&b, "%v quarantine=%q sender=%+v add=%+v del=%v\n", o.Kind, o.Quarantine, o.Sender, o.AddRcpts, o.DelRcpts)
		for _, c := range o.HeaderChanges {
			fmt.Fprintf(&b, "%+v\n", c)
		}
		if o.Body != nil {
			body, _ := io.ReadAll(o.Body)
			b.Write(body)
		}
		s.Finish()
		return b.String()
	}
	want := outcome(processor(t, rewriter{}))
	got := outcome(processor(t, callout_(t, addr, `["eom"]`)))
	if got != want {
		t.Errorf("through the callout:\n%s\nlocally:\n%s", got, want)
	}
	if !strings.Contains(want, "the ****** is out") || !strings.Contains(want, "quarantine") {
		t.Errorf("the local run did not change the message:\n%s", want)
	}
}
