package opes

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

var ctx = context.Background()

// runMessage drives a session through a whole transaction the way the
// milter bridge does and returns the end-of-message outcome.
func runMessage(t *testing.T, s *Session, from string, rcpts []string, header [][2]string, body string) (*Outcome, []*Outcome) {
	t.Helper()
	var rc []*Outcome
	if o := s.Mail(ctx, Address{Addr: from}); o.Kind != Continue {
		return o, nil
	}
	for _, r := range rcpts {
		rc = append(rc, s.Rcpt(ctx, Address{Addr: r}))
	}
	s.Data(ctx)
	for _, h := range header {
		s.Header(h[0], h[1])
	}
	if o := s.EndOfHeaders(ctx); o.Kind != Continue {
		return o, rc
	}
	if o := s.BodyChunk([]byte(body)); o != nil {
		return o, rc
	}
	o := s.EndOfMessage(ctx, "4ABCD12")
	s.Finish()
	return o, rc
}

func delivered(header [][2]string, o *Outcome) []HeaderField {
	var fields []HeaderField
	for _, h := range header {
		fields = append(fields, HeaderField{Name: h[0], Value: h[1]})
	}
	return ApplyChanges(fields, o.HeaderChanges)
}

// checkReply asserts PROFILE §3 on a refusal.
func checkReply(t *testing.T, o *Outcome, code int, enhanced string) {
	t.Helper()
	if o.Reply == nil {
		t.Fatalf("outcome %v has no reply", o.Kind)
	}
	text := o.Reply.String()
	lines := strings.Split(text, "\r\n")
	if len(lines) < 4 || len(lines) > maxReplyLines {
		t.Fatalf("reply has %d lines:\n%s", len(lines), text)
	}
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		prefix := strings.TrimSpace(strings.Join([]string{itoa(code), sep, enhanced}, "")) + " "
		if !strings.HasPrefix(l, prefix) {
			t.Errorf("line %d %q lacks prefix %q", i, l, prefix)
		}
		if len(l)+2 > maxReplyLine {
			t.Errorf("line %d is %d octets", i, len(l)+2)
		}
		for _, c := range []byte(l) {
			if c < 0x20 || c > 0x7e {
				t.Errorf("line %d has byte 0x%02x", i, c)
			}
		}
	}
	if !strings.Contains(lines[1], FieldSystem+": "+testSystem+"; id=") {
		t.Errorf("second line is not the OPES-System trace: %q", lines[1])
	}
	if !strings.Contains(text, FieldVia+": ") {
		t.Errorf("no OPES-Via line:\n%s", text)
	}
	if !strings.HasSuffix(lines[len(lines)-1], "Policy, privacy and bypass: "+testSystem) {
		t.Errorf("last line does not point to the policy: %q", lines[len(lines)-1])
	}
}

func itoa(n int) string {
	return string(rune('0'+n/100)) + string(rune('0'+n/10%10)) + string(rune('0'+n%10))
}

func TestTraceOnEveryDeliveredMessage(t *testing.T) {
	p := newTestProcessor(t)
	s := p.NewSession()
	s.Connect(ctx)
	hdr := [][2]string{{"From", " a@example.org"}, {"Subject", " hi"}}
	o, _ := runMessage(t, s, "a@example.org", []string{"b@example.net"}, hdr, "body\r\n")
	if o.Kind != Continue {
		t.Fatalf("outcome %v", o.Kind)
	}
	got := FormatHeader(delivered(hdr, o))
	want := "OPES-System: https://mx1.example.net/opes/; id=4ABCD12\r\n" +
		"OPES-Via: https://mx1.example.net/opes/; id=4ABCD12\r\n" +
		"From: a@example.org\r\nSubject: hi\r\n"
	if got != want {
		t.Errorf("delivered header:\n%s\nwant:\n%s", got, want)
	}
	if o.TraceID != "4ABCD12" {
		t.Errorf("trace id %q, want the queue id", o.TraceID)
	}
}

func TestRefusalAtEachStageCarriesTrace(t *testing.T) {
	refuse := func(tx *Transaction) (Verdict, error) { return RejectVerdict("test"), nil }
	cases := []struct {
		name     string
		svc      *hookService
		code     int
		enhanced string
	}{
		{"mail", &hookService{needs: Needs{Stages: StagesOf(StageMail)}, mail: refuse}, 550, "5.7.1"},
		{"rcpt", &hookService{needs: Needs{Stages: StagesOf(StageRcpt)}, rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) { return refuse(tx) }}, 550, "5.7.1"},
		{"eom", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}, eom: refuse}, 554, "5.7.1"},
		{"eom-custom", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}, eom: func(tx *Transaction) (Verdict, error) {
			return Verdict{Kind: TempFail, Reply: Reply{Code: 452, Enhanced: "4.2.2", Text: "Try later"}}, nil
		}}, 452, "4.2.2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newTestProcessor(t, spec("svc-"+c.name, c.svc))
			s := p.NewSession()
			s.Connect(ctx)
			o, rc := runMessage(t, s, "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
			if c.name == "rcpt" {
				o = rc[0]
			}
			if o.Kind == Continue {
				t.Fatal("not refused")
			}
			checkReply(t, o, c.code, c.enhanced)
			if !strings.Contains(o.Reply.String(), testSystem+"svc/svc-"+c.name+"; action=rejected; bypassable=no") {
				t.Errorf("deciding service not in the reply:\n%s", o.Reply)
			}
		})
	}
}

func TestReplyGolden(t *testing.T) {
	var specs []*ServiceSpec
	for _, n := range []string{"a", "b", "c"} {
		specs = append(specs, spec(n, &hookService{needs: Needs{Stages: StagesOf(StageRcpt)}}))
	}
	specs = append(specs, spec("trap", &hookService{needs: Needs{Stages: StagesOf(StageRcpt)}, rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
		if r.Addr == "trap@example.net" {
			return Verdict{Kind: Reject, Reason: "spam trap"}, nil
		}
		return ContinueVerdict, nil
	}}))
	p := newTestProcessor(t, specs...)
	s := p.NewSession()
	s.Connect(ctx)
	s.Mail(ctx, Address{Addr: "a@example.org"})
	o := s.Rcpt(ctx, Address{Addr: "trap@example.net"})
	golden(t, "reply-rcpt.golden", o.Reply.String()+"\r\n")
}

func TestTwoRecipientsOneRefused(t *testing.T) {
	trap := spec("trap", &hookService{needs: Needs{Stages: StagesOf(StageRcpt)}, rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
		if r.Addr == "trap@example.net" {
			return RejectVerdict("spam trap"), nil
		}
		return ContinueVerdict, nil
	}})
	p := newTestProcessor(t, trap)
	s := p.NewSession()
	s.Connect(ctx)
	o, rc := runMessage(t, s, "a@example.org", []string{"trap@example.net", "ok@example.net"}, [][2]string{{"Subject", " x"}}, "x\r\n")
	if rc[0].Kind != Reject || rc[1].Kind != Continue {
		t.Fatalf("rcpt outcomes %v, %v", rc[0].Kind, rc[1].Kind)
	}
	checkReply(t, rc[0], 550, "5.7.1")
	if o.Kind != Continue {
		t.Fatalf("message not delivered to the other recipient: %v", o.Kind)
	}
	// The RCPT refusal fixed the trace id before the queue id was known;
	// the delivered copy carries the same id.
	if !strings.Contains(rc[0].Reply.String(), "id="+o.TraceID) {
		t.Errorf("reply id and delivered id differ: %s vs %s", rc[0].Reply, o.TraceID)
	}
	via := o.HeaderChanges[0]
	if via.Name != FieldVia || !strings.Contains(via.Value, "svc/trap; action=rejected") {
		t.Errorf("OPES-Via of the delivered copy: %+v", via)
	}
}

func TestUpstreamTraceFieldsUntouchedAndProtected(t *testing.T) {
	upstream := [][2]string{
		{"OPES-System", " https://upstream.example/opes/; id=UP1"},
		{"OPES-Via", " https://upstream.example/opes/; id=UP1,\r\n\thttps://upstream.example/opes/svc/x; action=analyzed"},
		{"OPES-Bypass", " *"},
		{"Subject", " hello"},
	}
	vandal := spec("vandal", &hookService{needs: Needs{Stages: StagesOf(StageEOM), Headers: true}, eom: func(tx *Transaction) (Verdict, error) {
		tx.Header.Del("OPES-Via")
		tx.Header.Del("OPES-System") // also ours, added before services run
		if err := tx.Header.Add("OPES-System", "https://evil.example/; id=1"); err != nil {
			return ContinueVerdict, err
		}
		if err := tx.Header.Set("Subject", "[tagged] hello"); err != nil {
			return ContinueVerdict, err
		}
		return ContinueVerdict, nil
	}})
	p := newTestProcessor(t, vandal)
	s := p.NewSession()
	s.Connect(ctx)
	o, _ := runMessage(t, s, "a@example.org", []string{"b@example.net"}, upstream, "x\r\n")
	if o.Kind != Continue {
		t.Fatal(o.Kind)
	}
	for _, c := range o.HeaderChanges {
		if c.Kind != InsertField && isTraceField(c.Name) {
			t.Errorf("change touches a trace field: %+v", c)
		}
		if strings.Contains(c.Value, "evil.example") {
			t.Errorf("service-added OPES-System survived: %+v", c)
		}
	}
	got := FormatHeader(delivered(upstream, o))
	for _, h := range upstream[:3] {
		if !strings.Contains(got, h[0]+":"+h[1]+"\r\n") {
			t.Errorf("upstream %s not byte-identical in:\n%s", h[0], got)
		}
	}
	if !strings.HasPrefix(got, "OPES-System: "+testSystem+"; id=4ABCD12\r\nOPES-Via: ") {
		t.Errorf("our trace block is not on top:\n%s", got)
	}
	if !strings.Contains(got, "Subject: [tagged] hello\r\n") {
		t.Errorf("the legitimate change was lost:\n%s", got)
	}
	if !strings.Contains(got, "svc/vandal; action=modified") {
		t.Errorf("the modifying service is not traced as modified:\n%s", got)
	}
}

func TestTraceDetail(t *testing.T) {
	quiet := spec("quiet", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}})
	tagger := spec("tagger", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}, eom: func(tx *Transaction) (Verdict, error) {
		return Verdict{Kind: Continue, Action: "tagged"}, tx.Header.Add("X-Tag", "yes")
	}})
	want := map[TraceDetail]string{
		TraceFull:    testSystem + "; id=4ABCD12, " + testSystem + "svc/quiet; action=analyzed, " + testSystem + "svc/tagger; action=tagged",
		TraceActions: testSystem + "; id=4ABCD12, " + testSystem + "svc/tagger; action=tagged",
		TraceMinimal: testSystem + "; id=4ABCD12",
	}
	for detail, w := range want {
		p := newTestProcessor(t, quiet, tagger)
		p.policy.System.TraceDetail = detail
		s := p.NewSession()
		o, _ := runMessage(t, s, "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
		if got := unfold(strings.ReplaceAll(o.HeaderChanges[0].Value, "\r\n\t", " ")); got != w {
			t.Errorf("detail %d: OPES-Via %q, want %q", detail, got, w)
		}
	}
}

func TestServiceFailurePolicies(t *testing.T) {
	boom := func(tx *Transaction) (Verdict, error) { return ContinueVerdict, errors.New("backend down") }
	panics := func(tx *Transaction) (Verdict, error) { panic("bug") }
	cases := []struct {
		name       string
		eom        func(tx *Transaction) (Verdict, error)
		bypassable bool
		onError    OnError
		kind       VerdictKind
		code       int
	}{
		{"required-default", boom, false, OnErrorDefault, TempFail, 451},
		{"optional-default", boom, true, OnErrorDefault, Continue, 0},
		{"explicit-reject", boom, true, OnErrorReject, Reject, 554},
		{"panic", panics, false, OnErrorDefault, TempFail, 451},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp := spec("flaky", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}, eom: c.eom})
			sp.Bypassable, sp.OnError = c.bypassable, c.onError
			p := newTestProcessor(t, sp)
			o, _ := runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
			if o.Kind != c.kind {
				t.Fatalf("outcome %v, want %v", o.Kind, c.kind)
			}
			switch c.kind {
			case Continue:
				if !strings.Contains(o.HeaderChanges[0].Value, "svc/flaky; action=analyzed;") || !strings.Contains(o.HeaderChanges[0].Value, "status=failed") {
					t.Errorf("failure not traced: %q", o.HeaderChanges[0].Value)
				}
			case TempFail:
				checkReply(t, o, 451, "4.3.0")
				if !strings.Contains(o.Reply.String(), "status=failed") {
					t.Errorf("reply lacks status=failed:\n%s", o.Reply)
				}
			default:
				checkReply(t, o, c.code, "5.7.1")
			}
		})
	}
}

func TestAcceptStopsLaterServices(t *testing.T) {
	ran := false
	allow := spec("allow", &hookService{needs: Needs{Stages: StagesOf(StageMail)}, mail: func(tx *Transaction) (Verdict, error) { return Verdict{Kind: Accept}, nil }})
	later := spec("later", &hookService{needs: Needs{Stages: StagesOf(StageRcpt)}, rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
		ran = true
		return RejectVerdict("x"), nil
	}})
	p := newTestProcessor(t, allow, later)
	o, rc := runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
	if ran || rc[0].Kind != Continue || o.Kind != Continue {
		t.Fatalf("accept did not stop later services: ran=%v rcpt=%v eom=%v", ran, rc[0].Kind, o.Kind)
	}
}

func TestRuleVerdictAndDiscardNeverDropsSilently(t *testing.T) {
	p := &Policy{System: System{URI: testSystem}, Rules: []*Rule{
		{Name: "drop", Stage: StageEOM, Verdict: &Verdict{Kind: Discard, Reason: "policy"}, URI: testSystem + "rule/drop"},
	}}
	proc, err := NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := runMessage(t, proc.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
	if o.Kind != Reject {
		t.Fatalf("discard became %v, want a refusal with trace", o.Kind)
	}
	checkReply(t, o, 554, "5.7.1")
	if !strings.Contains(o.Reply.String(), testSystem+"rule/drop; action=rejected") {
		t.Errorf("rule not traced:\n%s", o.Reply)
	}
}

func TestQuarantineAndChanges(t *testing.T) {
	svc := spec("q", &hookService{needs: Needs{Stages: StagesOf(StageEOM)}, eom: func(tx *Transaction) (Verdict, error) {
		if err := tx.AddRecipient(Address{Addr: "archive@example.net"}); err != nil {
			return ContinueVerdict, err
		}
		if err := tx.ReplaceBody(func(b *Body) error { _, err := io.WriteString(b, "new body\r\n"); return err }); err != nil {
			return ContinueVerdict, err
		}
		return Verdict{Kind: Quarantine, Reason: "held\r\nfor review"}, nil
	}})
	p := newTestProcessor(t, svc)
	o, _ := runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "old\r\n")
	if o.Kind != Continue || o.Quarantine != "held for review" {
		t.Fatalf("kind %v quarantine %q", o.Kind, o.Quarantine)
	}
	if len(o.AddRcpts) != 1 || o.AddRcpts[0].Addr != "archive@example.net" {
		t.Errorf("added recipients %+v", o.AddRcpts)
	}
	b, _ := io.ReadAll(o.Body)
	if string(b) != "new body\r\n" {
		t.Errorf("body %q", b)
	}
	if !strings.Contains(o.HeaderChanges[0].Value, "svc/q; action=quarantined") {
		t.Errorf("via %q", o.HeaderChanges[0].Value)
	}
}

func TestChangesOnlyAtEOM(t *testing.T) {
	var errs []error
	svc := spec("early", &hookService{needs: Needs{Stages: StagesOf(StageMail)}, mail: func(tx *Transaction) (Verdict, error) {
		errs = append(errs, tx.AddRecipient(Address{Addr: "x@example.net"}), tx.ChangeSender(Address{Addr: "y@example.net"}))
		return ContinueVerdict, nil
	}})
	p := newTestProcessor(t, svc)
	runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "x\r\n")
	for _, err := range errs {
		if !errors.Is(err, ErrNotAtEOM) {
			t.Errorf("got %v, want ErrNotAtEOM", err)
		}
	}
}

func TestHostileWireValues(t *testing.T) {
	hostile := strings.Repeat("h", 10000) + "\r\nX-Injected: 1\x00\xff"
	echo := spec("echo", &hookService{needs: Needs{Stages: StagesOf(StageHelo, StageRcpt)},
		helo: func(tx *Transaction) (Verdict, error) {
			// A careless service copies the HELO into its reason.
			return ContinueVerdict, nil
		},
		rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
			return Verdict{Kind: Reject, Reason: "bad helo " + tx.Conn.Helo, Reply: Reply{Text: "refused " + r.Addr}}, nil
		}})
	p := newTestProcessor(t, echo)
	s := p.NewSession()
	s.Connect(ctx)
	s.Helo(ctx, hostile)
	s.Mail(ctx, Address{Addr: "a\xe9@example.org"})
	s.SetQueueID("Q1\r\nX-Evil: 1")
	o := s.Rcpt(ctx, Address{Addr: "r\r\n250 ok\x00@example.net"})
	checkReply(t, o, 550, "5.7.1")
	text := o.Reply.String()
	if strings.Contains(text, "X-Evil") || strings.Contains(text, "\x00") || strings.Count(text, "\r\n") != len(o.Reply.Lines)-1 {
		t.Errorf("hostile bytes reached the reply:\n%q", text)
	}
	if strings.Contains(text, "Q1") {
		t.Errorf("malformed queue id used as trace id:\n%s", text)
	}
	// The same transaction delivered: the trace carries only our values.
	s.Abort()
	s.Mail(ctx, Address{Addr: "a@example.org"})
	s.Header("Subject", " "+hostile)
	eom := s.EndOfMessage(ctx, "bad id\r\n")
	for _, c := range eom.HeaderChanges {
		v := strings.ReplaceAll(c.Value, "\r\n\t", "")
		if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 || strings.Contains(c.Value, "hhhh") {
			t.Errorf("hostile value in %s: %q", c.Name, c.Value)
		}
	}
}

func TestLimits(t *testing.T) {
	p := newTestProcessor(t)
	p.policy.Limits.MaxMessageSize = 10
	o, _ := runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, nil, "more than ten octets\r\n")
	if o.Kind != Reject {
		t.Fatalf("oversize message: %v", o.Kind)
	}
	checkReply(t, o, 552, "5.3.4")

	p = newTestProcessor(t)
	p.policy.Limits.MaxHeaderFields = 2
	hdr := [][2]string{{"A", " 1"}, {"B", " 2"}, {"C", " 3"}}
	o, _ = runMessage(t, p.NewSession(), "a@example.org", []string{"b@example.net"}, hdr, "x\r\n")
	if o.Kind != Reject {
		t.Fatalf("header over limit: %v", o.Kind)
	}
	checkReply(t, o, 552, "5.3.4")
}

func TestBodySpoolsAboveThreshold(t *testing.T) {
	b := NewBody(BodyOptions{MaxMemory: 16, TempDir: t.TempDir()})
	defer b.Close()
	chunk := strings.Repeat("x", 10)
	for range 5 {
		if _, err := io.WriteString(b, chunk); err != nil {
			t.Fatal(err)
		}
	}
	if !b.Spooled() || b.Size() != 50 {
		t.Fatalf("spooled=%v size=%d", b.Spooled(), b.Size())
	}
	got, _ := io.ReadAll(b.Reader())
	if string(got) != strings.Repeat(chunk, 5) {
		t.Fatalf("content %q", got)
	}
}
