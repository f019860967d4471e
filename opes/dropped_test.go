package opes

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"

	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes/ndr"
)

// verdictService answers one verdict at the end of message.
type verdictService struct{ v Verdict }

func (s *verdictService) Needs() Needs                 { return Needs{Stages: StagesOf(StageEOM)} }
func (s *verdictService) Begin(*Transaction) ServiceTx { return &verdictTx{v: s.v} }

type verdictTx struct {
	BaseTx
	v Verdict
}

func (x *verdictTx) EndOfMessage(context.Context) (Verdict, error) { return x.v, nil }

func openStore(t *testing.T, max int64) *store.Store {
	t.Helper()
	st, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "store.db"), MaxQuarantineBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// unusedSender fails every send: these tests look at the outbox, not at
// delivery (opes/ndr tests delivery against a real SMTP server).
type unusedSender struct{}

func (unusedSender) Send(context.Context, string, []string, []byte) error {
	return errors.New("not sending in this test")
}

func verdictProcessor(t *testing.T, v Verdict, opts ...Option) *Processor {
	t.Helper()
	sp := spec("decider", &verdictService{v: v})
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{sp},
		Rules: []*Rule{{Name: "all", Stage: StageConnect, Run: []*ServiceSpec{sp}}}}
	proc, err := NewProcessor(p, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	proc.newID = func() string { return "01TESTTRACEID" }
	return proc
}

func TestDiscardSendsReportWithTrace(t *testing.T) {
	st := openStore(t, 0)
	w := &ndr.Worker{Outbox: st, Sender: unusedSender{}}
	proc := verdictProcessor(t, Verdict{Kind: Discard, Reason: "policy says drop"}, WithNDR(w, NDRConfig{Hostname: "mx1.example.net"}))
	in := txInput{client: localhost, mail: addr("alice@example.org", "ENVID=env+2B1"),
		rcpts:  []Address{addr("bob@example.net", "NOTIFY=FAILURE", "ORCPT=rfc822;bob@example.net"), addr("carol@example.net", "NOTIFY=NEVER")},
		header: [][2]string{{"Subject", "hello"}, {"Message-ID", "<m1@example.org>"}}, body: "body\r\n"}
	_, _, o := drive(t, proc, in)
	if o.Kind != Discard {
		t.Fatalf("outcome %v, want discard", o.Kind)
	}
	items, err := st.ListOutbox(ctx, store.Queued, 10)
	if err != nil || len(items) != 1 {
		t.Fatalf("outbox: %v %d items", err, len(items))
	}
	it := items[0]
	if it.Sender != "" || len(it.Recipients) != 1 || it.Recipients[0] != "alice@example.org" {
		t.Errorf("report envelope: from %q to %v", it.Sender, it.Recipients)
	}
	msg, err := message.Read(strings.NewReader(string(it.Data)))
	if err != nil {
		t.Fatal(err)
	}
	mr := msg.MultipartReader()
	if mr == nil {
		t.Fatal("report is not multipart")
	}
	var parts []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		parts = append(parts, string(b))
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	status := parts[1]
	for _, want := range []string{"Final-Recipient: rfc822; bob@example.net", "Action: failed", "Status: 5.7.1",
		"X-OPES-System: " + testSystem, "Final-Log-ID: 4ABCD12", "svc/decider", "Original-Envelope-Id: env+1"} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}
	if strings.Contains(status, "carol@") {
		t.Errorf("NOTIFY=NEVER recipient reported:\n%s", status)
	}
	if !strings.Contains(parts[2], "OPES-System: "+testSystem+"; id=4ABCD12") || !strings.Contains(parts[2], "Subject: hello") {
		t.Errorf("returned header lacks our trace:\n%s", parts[2])
	}

	// The null sender gets no report, and the message is still discarded
	// as the policy says (nobody can be told).
	in.mail = addr("")
	_, _, o = drive(t, proc, in)
	if o.Kind != Discard {
		t.Errorf("null sender: %v", o.Kind)
	}
	if items, _ := st.ListOutbox(ctx, store.Queued, 10); len(items) != 1 {
		t.Errorf("a report was queued for the null sender")
	}

	// The outbox unavailable: tempfail, never drop.
	st.Close()
	in.mail = addr("alice@example.org")
	_, _, o = drive(t, proc, in)
	checkReply(t, o, 451, "4.3.0")

	// Without a report relay a discard is a refusal.
	proc = verdictProcessor(t, Verdict{Kind: Discard})
	_, _, o = drive(t, proc, in)
	checkReply(t, o, 554, "5.7.1")
}

func TestQuarantineInStore(t *testing.T) {
	st := openStore(t, 0)
	proc := verdictProcessor(t, Verdict{Kind: Quarantine, Reason: "suspicious"}, WithQuarantineStore(st, QuarantineConfig{Expire: 1e12}))
	if !proc.Needs().Body {
		t.Fatal("the quarantine store needs the body")
	}
	in := txInput{client: localhost, mail: addr("alice@example.org"), rcpts: []Address{addr("bob@example.net", "NOTIFY=FAILURE")},
		header: [][2]string{{"Subject", "hello"}, {"X-Folded", "a\r\n\tb"}}, body: "line one\r\nline two\r\n"}
	_, _, o := drive(t, proc, in)
	if o.Kind != Discard || o.QuarantineID == "" {
		t.Fatalf("outcome %v id %q: the MTA must drop its copy once ours is stored", o.Kind, o.QuarantineID)
	}
	it, err := st.GetQuarantine(ctx, o.QuarantineID)
	if err != nil {
		t.Fatal(err)
	}
	if it.Sender != "alice@example.org" || len(it.Recipients) != 1 || it.Reason != "suspicious" ||
		it.Service != testSystem+"svc/decider" || it.TraceID != "4ABCD12" || it.RecipientArgs[0]["NOTIFY"] != "FAILURE" {
		t.Errorf("stored item: %+v", it)
	}
	rc, err := st.OpenQuarantine(ctx, it.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if want := "Subject: hello\r\nX-Folded: a\r\n\tb\r\n\r\nline one\r\nline two\r\n"; string(b) != want {
		t.Errorf("stored original:\n%q\nwant\n%q", b, want)
	}

	// Both: the MTA holds its copy too.
	proc = verdictProcessor(t, Verdict{Kind: Quarantine}, WithQuarantineStore(st, QuarantineConfig{KeepInMTA: true, Expire: 1e12}))
	_, _, o = drive(t, proc, in)
	if o.Kind != Continue || o.Quarantine == "" || o.QuarantineID == "" {
		t.Errorf("mode both: %v %q %q", o.Kind, o.Quarantine, o.QuarantineID)
	}

	// A full quarantine: tempfail.
	small := openStore(t, 10)
	proc = verdictProcessor(t, Verdict{Kind: Quarantine}, WithQuarantineStore(small, QuarantineConfig{Expire: 1e12}))
	_, _, o = drive(t, proc, in)
	checkReply(t, o, 451, "4.3.0")
}

// tracingService returns trace entries of agents it invoked.
type tracingService struct{ via []TraceEntry }

func (s *tracingService) Needs() Needs                 { return Needs{Stages: StagesOf(StageEOM)} }
func (s *tracingService) Begin(*Transaction) ServiceTx { return &tracingTx{via: s.via} }

type tracingTx struct {
	BaseTx
	via []TraceEntry
}

func (x *tracingTx) EndOfMessage(context.Context) (Verdict, error) {
	return Verdict{Kind: Continue, Action: "modified"}, nil
}

func (x *tracingTx) TraceEntries() []TraceEntry {
	v := x.via
	x.via = nil
	return v
}

func TestServiceTraceEntries(t *testing.T) {
	sp := spec("decider", &tracingService{via: []TraceEntry{
		{URI: "https://callout.example.org/svc/av", Params: []TraceParam{{Name: "action", Value: "analyzed"}}},
		{URI: testSystem, Params: []TraceParam{{Name: "id", Value: "forged"}}}, // speaks for us: dropped
		{URI: "not a uri"},
		{URI: "https://callout.example.org/x", Params: []TraceParam{{Name: "bad name", Value: "v"}}},
	}})
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{sp},
		Rules: []*Rule{{Name: "all", Stage: StageConnect, Run: []*ServiceSpec{sp}}}}
	proc, err := NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, o := drive(t, proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, body: "x\r\n"})
	via := viaOf(t, o)
	want := testSystem + "; id=4ABCD12, " + testSystem + "svc/decider; action=modified, https://callout.example.org/svc/av; action=analyzed"
	if via != want {
		t.Errorf("OPES-Via:\n%s\nwant\n%s", via, want)
	}
}

// bodyRewriter replaces the body at the end of message.
type bodyRewriter struct{}

func (bodyRewriter) Needs() Needs                    { return Needs{Stages: StagesOf(StageEOM), Body: true} }
func (bodyRewriter) Begin(tx *Transaction) ServiceTx { return &bodyRewriterTx{tx: tx} }

type bodyRewriterTx struct {
	BaseTx
	tx *Transaction
}

func (x *bodyRewriterTx) EndOfMessage(context.Context) (Verdict, error) {
	// A rewrite that also changes the Content-Type must not hide that
	// the message arrived signed.
	if err := x.tx.Header.Set("Content-Type", "text/plain"); err != nil {
		return Verdict{}, err
	}
	return ContinueVerdict, x.tx.ReplaceBody(func(w *Body) error {
		_, err := w.Write([]byte("rewritten\r\n"))
		return err
	})
}

// Signed content is not modified unless the service is allowed to
// (PROFILE §6).
func TestSignedContentNotModified(t *testing.T) {
	for _, allow := range []bool{false, true} {
		sp := spec("rewriter", bodyRewriter{})
		sp.ModifySigned = allow
		p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{sp},
			Rules: []*Rule{{Name: "all", Stage: StageConnect, Run: []*ServiceSpec{sp}}}}
		proc, err := NewProcessor(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !proc.Needs().Headers {
			t.Fatal("a body-reading policy must read the Content-Type")
		}
		signed := [][2]string{{"Content-Type", `multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="b"`}}
		_, _, o := drive(t, proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, header: signed, body: "--b\r\n\r\nx\r\n--b--\r\n"})
		if allow != (o.Body != nil) {
			t.Errorf("modify_signed=%v: body replaced = %v", allow, o.Body != nil)
		}
		via := viaOf(t, o)
		if !allow && !strings.Contains(via, "svc/rewriter; action=analyzed; status=skipped; reason=signed") {
			t.Errorf("trace: %s", via)
		}
		for _, c := range o.HeaderChanges {
			if !allow && c.Name == "Content-Type" {
				t.Errorf("the Content-Type of a signed message was changed: %+v", c)
			}
		}
		// An unsigned message is modified either way.
		_, _, o = drive(t, proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")},
			header: [][2]string{{"Content-Type", "text/plain"}}, body: "x\r\n"})
		if o.Body == nil || !strings.Contains(viaOf(t, o), "svc/rewriter; action=modified") {
			t.Errorf("unsigned message not modified: %s", viaOf(t, o))
		}
	}
}

// bodyReader records the body it sees at the end of message.
type bodyReader struct{ seen *string }

func (bodyReader) Needs() Needs                      { return Needs{Stages: StagesOf(StageEOM), Body: true} }
func (r bodyReader) Begin(tx *Transaction) ServiceTx { return &bodyReaderTx{r: r, tx: tx} }

type bodyReaderTx struct {
	BaseTx
	r  bodyReader
	tx *Transaction
}

func (x *bodyReaderTx) EndOfMessage(context.Context) (Verdict, error) {
	b, err := io.ReadAll(x.tx.CurrentBody().Reader())
	*x.r.seen = string(b)
	return ContinueVerdict, err
}

// A service after one that replaced the body sees the replacement: it
// scans or signs what will be delivered.
func TestLaterServicesSeeTheCurrentBody(t *testing.T) {
	var seen string
	rw, rd := spec("rewriter", bodyRewriter{}), spec("reader", bodyReader{seen: &seen})
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{rw, rd},
		Rules: []*Rule{{Name: "all", Stage: StageConnect, Run: []*ServiceSpec{rw, rd}}}}
	proc, err := NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	drive(t, proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, body: "original\r\n"})
	if seen != "rewritten\r\n" {
		t.Errorf("the second service saw %q", seen)
	}
}

// SetAt and DelAt change and remove a later field of a name in place:
// the MTA gets a change or a deletion of that occurrence, not a re-added
// field at the end.
func TestHeaderPositionedChanges(t *testing.T) {
	h := NewHeader()
	for _, f := range [][2]string{{"To", "a@x"}, {"Received", "one"}, {"To", "b@x"}, {"X-Tag", "1"}, {"X-Tag", "2"}} {
		h.received(f[0], f[1])
	}
	h.sent = h.Fields()
	if ok, err := h.SetAt("to", 2, "c@x"); !ok || err != nil {
		t.Fatalf("SetAt: %v %v", ok, err)
	}
	if ok, err := h.DelAt("X-Tag", 1); !ok || err != nil {
		t.Fatalf("DelAt: %v %v", ok, err)
	}
	if ok, _ := h.SetAt("To", 3, "d@x"); ok {
		t.Error("SetAt of a field that does not exist")
	}
	if _, err := h.SetAt("OPES-Via", 1, "x"); err == nil {
		t.Error("a trace field was changed")
	}
	changes, appends := h.diff()
	want := []HeaderChange{{Kind: ChangeField, Name: "To", Value: "c@x", Index: 2}, {Kind: DeleteField, Name: "X-Tag", Index: 1}}
	if len(changes) != len(want) || changes[0] != want[0] || changes[1] != want[1] || len(appends) != 0 {
		t.Errorf("changes %+v, appends %+v, want %+v", changes, appends, want)
	}
}

// Prepended fields go to the top of the delivered header, below the OPES
// trace, the later one above; a deletion of a field of the same name still
// removes the field it named (the insertions come after the deletions);
// appended fields go to the end.
func TestHeaderPrepend(t *testing.T) {
	svc := &hookService{needs: Needs{Stages: StagesOf(StageEOM), Headers: true}, eom: func(tx *Transaction) (Verdict, error) {
		if ok, err := tx.Header.DelAt("Authentication-Results", 1); !ok || err != nil {
			t.Errorf("DelAt: %v %v", ok, err)
		}
		for _, f := range [][3]string{{"p", "Authentication-Results", "mx.example.net; dkim=pass"}, {"p", "DKIM-Signature", "v=1; d=example.net"}, {"a", "X-Tag", "1"}} {
			var err error
			if f[0] == "p" {
				err = tx.Header.Prepend(f[1], f[2])
			} else {
				err = tx.Header.Add(f[1], f[2])
			}
			if err != nil {
				t.Error(err)
			}
		}
		return Verdict{Kind: Continue, Action: "modified"}, nil
	}}
	proc := newTestProcessor(t, spec("p", svc))
	proc.policy.Consent = &Consent{All: true}
	header := [][2]string{{"Received", " from a by b"}, {"Authentication-Results", " mx.example.net; dkim=pass (forged)"}, {"Subject", " hi"}}
	o, _ := runMessage(t, proc.NewSession(), "a@example.org", []string{"b@example.net"}, header, "x\r\n")
	if o.Kind != Continue {
		t.Fatalf("outcome %v", o.Kind)
	}
	var names []string
	for _, f := range delivered(header, o) {
		names = append(names, f.Name+":"+strings.Join(strings.Fields(f.Value), " ")) // unfolded
	}
	got := strings.Join(names, "\n")
	want := strings.Join([]string{
		"OPES-System:" + testSystem + "; id=4ABCD12",
		"OPES-Via:" + testSystem + "; id=4ABCD12, " + testSystem + "svc/p; action=modified",
		"DKIM-Signature:v=1; d=example.net",
		"Authentication-Results:mx.example.net; dkim=pass",
		"Received:from a by b",
		"Subject:hi",
		"X-Tag:1",
	}, "\n")
	if got != want {
		t.Errorf("delivered header:\n%s\nwant:\n%s", got, want)
	}
}

// closingService counts Close calls.
type closingService struct {
	hookService
	closed chan struct{}
}

func (c *closingService) Close() { close(c.closed) }

// Retire closes the services that hold resources, after the delay, and
// leaves the others alone.
func TestRetire(t *testing.T) {
	c := &closingService{closed: make(chan struct{})}
	specs := []*ServiceSpec{spec("pool", c), spec("plain", &hookService{})}
	start := time.Now()
	if n := Retire(specs, 50*time.Millisecond); n != 1 {
		t.Fatalf("Retire will close %d services, want 1", n)
	}
	select {
	case <-c.closed:
		if took := time.Since(start); took < 50*time.Millisecond {
			t.Errorf("closed after %v, before the delay", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the service was not closed")
	}
}
