package opes

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
)

// txInput is one transaction for drive: envelope with ESMTP parameters,
// header and body.
type txInput struct {
	client netip.Addr
	auth   string
	mail   Address
	rcpts  []Address
	header [][2]string
	body   string
}

// drive runs a transaction like the milter bridge does and returns the
// MAIL, RCPT and final outcomes.
func drive(t *testing.T, proc *Processor, in txInput) (mail *Outcome, rcpts []*Outcome, final *Outcome) {
	t.Helper()
	s := proc.NewSession()
	s.Conn().Addr = in.client
	s.Conn().AuthUser = in.auth
	if o := s.Connect(ctx); o.Kind != Continue {
		return o, nil, o
	}
	mail = s.Mail(ctx, in.mail)
	if mail.Kind != Continue {
		return mail, nil, mail
	}
	ok := false
	for _, r := range in.rcpts {
		o := s.Rcpt(ctx, r)
		rcpts = append(rcpts, o)
		ok = ok || o.Kind == Continue
	}
	if !ok {
		return mail, rcpts, nil
	}
	s.Data(ctx)
	for _, h := range in.header {
		s.Header(h[0], h[1])
	}
	if o := s.EndOfHeaders(ctx); o.Kind != Continue {
		return mail, rcpts, o
	}
	if o := s.BodyChunk([]byte(in.body)); o != nil {
		return mail, rcpts, o
	}
	final = s.EndOfMessage(ctx, "4ABCD12")
	s.Finish()
	return mail, rcpts, final
}

// viaOf returns the OPES-Via value an outcome inserts.
func viaOf(t *testing.T, o *Outcome) string {
	t.Helper()
	for _, c := range o.HeaderChanges {
		if c.Name == FieldVia {
			return strings.ReplaceAll(c.Value, "\r\n\t", " ")
		}
	}
	t.Fatalf("no OPES-Via in %+v", o.HeaderChanges)
	return ""
}

// counter is a service that counts its hooks and may refuse at the end.
type counter struct {
	calls  int
	stages StageSet
	refuse bool
}

func (c *counter) Needs() Needs { return Needs{Stages: c.stages, Headers: true} }
func (c *counter) Begin(*Transaction) ServiceTx {
	return &counterTx{c: c}
}

type counterTx struct {
	BaseTx
	c *counter
}

func (x *counterTx) Mail(context.Context) (Verdict, error) {
	x.c.calls++
	return ContinueVerdict, nil
}

func (x *counterTx) EndOfMessage(context.Context) (Verdict, error) {
	x.c.calls++
	if x.c.refuse {
		return Verdict{Kind: Reject, Reason: "malware found"}, nil
	}
	return Verdict{Kind: Continue, Action: "tagged"}, nil
}

type bypassFixture struct {
	proc      *Processor
	optional  *counter // bypassable
	malware   *counter // not bypassable
	auditPath string
}

func newBypassFixture(t *testing.T, pol func(*Policy), opts ...Option) *bypassFixture {
	t.Helper()
	f := &bypassFixture{
		optional: &counter{stages: StagesOf(StageEOM)},
		malware:  &counter{stages: StagesOf(StageEOM)},
	}
	opt := spec("optional", f.optional)
	opt.Bypassable, opt.OnError = true, OnErrorContinue
	mal := spec("malware", f.malware)
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{mal, opt},
		Rules:   []*Rule{{Name: "all", Stage: StageConnect, Run: []*ServiceSpec{mal, opt}}},
		Consent: &Consent{Recipients: []string{"@example.net"}},
		Bypass:  BypassPolicy{UnknownAsAll: true, TrustAuth: true, TrustPreferences: true},
	}
	if pol != nil {
		pol(p)
	}
	f.auditPath = filepath.Join(t.TempDir(), "audit.jsonl")
	al, err := audit.Open(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	proc, err := NewProcessor(p, nil, append([]Option{WithAudit(al)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	proc.newID = func() string { return "01TESTTRACEID" }
	f.proc = proc
	return f
}

func (f *bypassFixture) auditEvents(t *testing.T) []audit.Event {
	t.Helper()
	b, err := os.ReadFile(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func addr(a string, args ...string) Address { return Address{Addr: a, Args: args} }

var localhost = netip.MustParseAddr("192.0.2.7")

func TestConsentGatesServices(t *testing.T) {
	f := newBypassFixture(t, nil)
	// Not a consenting party: traced, nothing runs.
	_, _, o := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@elsewhere.test")},
		header: [][2]string{{"Subject", "x"}}, body: "hi\r\n"})
	if o.Kind != Continue || f.optional.calls+f.malware.calls != 0 {
		t.Fatalf("services ran without consent: %v %d %d", o.Kind, f.optional.calls, f.malware.calls)
	}
	if via := viaOf(t, o); !strings.Contains(via, "consent=none") || strings.Contains(via, "svc/") {
		t.Errorf("trace should say consent=none and list no service: %s", via)
	}
	// A consenting recipient: both run.
	_, _, o = drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("B@Example.NET")},
		header: [][2]string{{"Subject", "x"}}, body: "hi\r\n"})
	if f.optional.calls != 1 || f.malware.calls != 1 || strings.Contains(viaOf(t, o), "consent=") {
		t.Fatalf("consenting recipient: calls %d %d, via %s", f.optional.calls, f.malware.calls, viaOf(t, o))
	}
	// Mixed recipients: the second is deferred, never processed under
	// the first one's consent.
	_, rc, _ := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"),
		rcpts: []Address{addr("b@example.net"), addr("c@elsewhere.test"), addr("d@example.net")}, body: "hi\r\n"})
	if rc[0].Kind != Continue || rc[2].Kind != Continue {
		t.Fatalf("consenting recipients refused: %v %v", rc[0].Kind, rc[2].Kind)
	}
	checkReply(t, rc[1], 452, "4.5.3")
	// A consenting sender (outbound) covers every recipient.
	f2 := newBypassFixture(t, func(p *Policy) { p.Consent = &Consent{Senders: []string{"@example.net"}} })
	drive(t, f2.proc, txInput{client: localhost, mail: addr("joe@example.net"), rcpts: []Address{addr("x@elsewhere.test")}, body: "hi\r\n"})
	if f2.optional.calls != 1 {
		t.Errorf("outbound consent: optional ran %d times", f2.optional.calls)
	}
}

func TestDialogBypass(t *testing.T) {
	trusted := func(p *Policy) { p.Bypass.TrustNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }
	f := newBypassFixture(t, trusted)
	in := txInput{client: localhost, mail: addr("a@example.org", "X-OPES-BYPASS=*"), rcpts: []Address{addr("b@example.net")}, body: "hi\r\n"}
	_, _, o := drive(t, f.proc, in)
	if o.Kind != Continue || f.optional.calls != 0 || f.malware.calls != 1 {
		t.Fatalf("MAIL bypass *: %v optional %d malware %d", o.Kind, f.optional.calls, f.malware.calls)
	}
	via := viaOf(t, o)
	for _, want := range []string{
		testSystem + "svc/malware; action=tagged; bypass=refused; reason=non-bypassable",
		testSystem + "svc/optional; bypass=honored; status=skipped",
	} {
		if !strings.Contains(via, want) {
			t.Errorf("trace lacks %q:\n%s", want, via)
		}
	}
	// The same request from an untrusted client is refused.
	f = newBypassFixture(t, nil)
	in.client = netip.MustParseAddr("198.51.100.1")
	_, _, o = drive(t, f.proc, in)
	if f.optional.calls != 1 || !strings.Contains(viaOf(t, o), "svc/optional; action=tagged; bypass=refused; reason=unauthenticated") {
		t.Errorf("untrusted request honoured: calls %d via %s", f.optional.calls, viaOf(t, o))
	}
	// ...unless the client authenticated.
	in.auth = "joe"
	f = newBypassFixture(t, nil)
	drive(t, f.proc, in)
	if f.optional.calls != 0 {
		t.Errorf("authenticated request not honoured")
	}
	// Per recipient: a RCPT request by a service URI (xtext-encoded) for
	// one recipient; a second recipient without it is deferred.
	f = newBypassFixture(t, trusted)
	in = txInput{client: localhost, mail: addr("a@example.org"),
		rcpts: []Address{addr("b@example.net", "X-OPES-BYPASS="+testSystem+"svc/optional"), addr("c@example.net")}, body: "hi\r\n"}
	_, rc, o := drive(t, f.proc, in)
	if rc[0].Kind != Continue || f.optional.calls != 0 {
		t.Fatalf("RCPT bypass not honoured: %v, calls %d", rc[0].Kind, f.optional.calls)
	}
	checkReply(t, rc[1], 452, "4.5.3")
	if !strings.Contains(viaOf(t, o), "svc/optional; bypass=honored") {
		t.Errorf("trace: %s", viaOf(t, o))
	}
}

func TestDialogBypassMalformed(t *testing.T) {
	for _, args := range [][]string{
		{"X-OPES-BYPASS=not+20a+20uri"},
		{"X-OPES-BYPASS=*", "X-OPES-BYPASS=*"},
		{"X-OPES-BYPASS=" + strings.Repeat("x", 9000)},
		{"X-OPES-BYPASS=http://a/\x00"},
	} {
		f := newBypassFixture(t, nil)
		m, _, _ := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org", args...), rcpts: []Address{addr("b@example.net")}})
		checkReply(t, m, 501, "5.5.4")
		// and at RCPT, for that recipient only
		_, rc, _ := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"),
			rcpts: []Address{addr("b@example.net", args...), addr("c@example.net")}, body: "x\r\n"})
		checkReply(t, rc[0], 501, "5.5.4")
		if rc[1].Kind != Continue {
			t.Errorf("%q: the other recipient was refused", args)
		}
	}
}

func TestMessageBypass(t *testing.T) {
	hdr := [][2]string{{"Subject", "x"}, {"OPES-Bypass", " *"}, {"OPES-Bypass", " not a uri ,,"}}
	f := newBypassFixture(t, nil)
	_, _, o := drive(t, f.proc, txInput{client: localhost, auth: "joe", mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, header: hdr, body: "x\r\n"})
	if f.optional.calls != 0 || f.malware.calls != 1 {
		t.Fatalf("in-message * with AUTH: optional %d malware %d", f.optional.calls, f.malware.calls)
	}
	// The field stays in the message: no change deletes it.
	for _, c := range o.HeaderChanges {
		if strings.EqualFold(c.Name, FieldBypass) {
			t.Errorf("OPES-Bypass changed: %+v", c)
		}
	}
	// A non-bypassable service that refuses says the bypass did not help.
	f = newBypassFixture(t, nil)
	f.malware.refuse = true
	_, _, o = drive(t, f.proc, txInput{client: localhost, auth: "joe", mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, header: hdr, body: "x\r\n"})
	checkReply(t, o, 554, "5.7.1")
	if s := o.Reply.String(); !strings.Contains(s, "bypass refused: non-bypassable") || !strings.Contains(s, "bypass=refused") {
		t.Errorf("reply does not say the bypass was refused:\n%s", s)
	}
	// An unauthenticated request: the service runs, the trace says why.
	f = newBypassFixture(t, nil)
	_, _, o = drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, header: hdr, body: "x\r\n"})
	if f.optional.calls != 1 || !strings.Contains(viaOf(t, o), "reason=unauthenticated") {
		t.Errorf("unauthenticated: calls %d via %s", f.optional.calls, viaOf(t, o))
	}
	evs := f.auditEvents(t)
	var kinds []string
	for _, ev := range evs {
		if ev.TraceID != "4ABCD12" && ev.TraceID != "01TESTTRACEID" {
			t.Errorf("audit event without the trace id: %+v", ev)
		}
		kinds = append(kinds, ev.Kind+"/"+ev.Decision+"/"+ev.Reason)
	}
	if !strings.Contains(strings.Join(kinds, " "), "bypass-request//") || !strings.Contains(strings.Join(kinds, " "), "bypass-decision/refused/unauthenticated") {
		t.Errorf("audit log: %v", kinds)
	}
}

// A service that ran before DATA is not affected by an in-message
// request (RFC 4902 §3.2), while a dialog request from MAIL on is.
func TestMessageBypassNeverReachesBack(t *testing.T) {
	f := newBypassFixture(t, nil)
	f.optional.stages = StagesOf(StageMail, StageEOM)
	drive(t, f.proc, txInput{client: localhost, auth: "joe", mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")},
		header: [][2]string{{"OPES-Bypass", "*"}}, body: "x\r\n"})
	if f.optional.calls != 2 {
		t.Errorf("a service that ran at MAIL was bypassed by the message: %d calls", f.optional.calls)
	}
}

func TestPreferenceBypass(t *testing.T) {
	st, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "store.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AddPreference(ctx, store.Preference{Recipient: "b@example.net", Sender: "@example.org", Kind: store.NonOPESVersion}); err != nil {
		t.Fatal(err)
	}
	f := newBypassFixture(t, nil, WithPreferences(st))
	_, _, o := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, body: "x\r\n"})
	if f.optional.calls != 0 || f.malware.calls != 1 {
		t.Fatalf("preference: optional %d malware %d", f.optional.calls, f.malware.calls)
	}
	if !strings.Contains(viaOf(t, o), "svc/optional; bypass=honored") {
		t.Errorf("trace: %s", viaOf(t, o))
	}
	// Another sender: not covered.
	drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.com"), rcpts: []Address{addr("b@example.net")}, body: "x\r\n"})
	if f.optional.calls != 1 {
		t.Errorf("preference applied to another sender")
	}
	// A recipient with the preference and one without: deferred.
	_, rc, _ := drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net"), addr("c@example.net")}, body: "x\r\n"})
	checkReply(t, rc[1], 452, "4.5.3")
	// A preference naming one service (written with another case of the
	// host: URIs are compared normalised) covers that service only.
	if _, err := st.AddPreference(ctx, store.Preference{Recipient: "d@example.net", Kind: store.NoOptional,
		Services: []string{"https://MX1.example.net/opes/svc/optional"}}); err != nil {
		t.Fatal(err)
	}
	before := f.optional.calls
	_, _, o = drive(t, f.proc, txInput{client: localhost, mail: addr("x@example.com"), rcpts: []Address{addr("d@example.net")}, body: "x\r\n"})
	if f.optional.calls != before || !strings.Contains(viaOf(t, o), "svc/optional; bypass=honored") {
		t.Errorf("per-service preference: calls %d→%d, trace %s", before, f.optional.calls, viaOf(t, o))
	}
	// A store that fails: tempfail the recipient, never guess.
	st.Close()
	_, rc, _ = drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, body: "x\r\n"})
	checkReply(t, rc[0], 451, "4.3.0")
}

func TestDKIMSignedBypass(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw := "From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\nOPES-Bypass: *\r\n\r\nhello\r\n"
	sign := func(keys []string) [][2]string {
		var out bytes.Buffer
		if err := dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: "example.org", Selector: "s1", Signer: priv,
			HeaderKeys: keys, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}); err != nil {
			t.Fatal(err)
		}
		var hdr [][2]string
		head, _, _ := strings.Cut(out.String(), "\r\n\r\n")
		for _, l := range strings.Split(head, "\r\n") {
			if l[0] == ' ' || l[0] == '\t' { // a folded continuation, as the MTA passes it
				hdr[len(hdr)-1][1] += "\r\n" + l
				continue
			}
			k, v, _ := strings.Cut(l, ":")
			hdr = append(hdr, [2]string{k, strings.TrimPrefix(v, " ")})
		}
		return hdr
	}
	lookup := func(_ context.Context, domain string) ([]string, error) {
		if domain != "s1._domainkey.example.org" {
			return nil, errors.New("no such record")
		}
		return []string{"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}, nil
	}
	trustDKIM := func(p *Policy) { p.Bypass.DKIMDomains = []string{"sender"} }
	for _, tc := range []struct {
		name   string
		keys   []string
		honour bool
	}{
		{"covers the field", []string{"From", "To", "Subject", "OPES-Bypass"}, true},
		{"does not cover it", []string{"From", "To", "Subject"}, false},
	} {
		f := newBypassFixture(t, trustDKIM, WithLookupTXT(lookup))
		if !f.proc.Needs().Body {
			t.Fatal("DKIM trust needs the body")
		}
		drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")}, header: sign(tc.keys), body: "hello\r\n"})
		if got := f.optional.calls == 0; got != tc.honour {
			t.Errorf("%s: honoured %v, want %v", tc.name, got, tc.honour)
		}
	}
	// A valid signature by a domain that is not trusted.
	f := newBypassFixture(t, func(p *Policy) { p.Bypass.DKIMDomains = []string{"example.com"} }, WithLookupTXT(lookup))
	drive(t, f.proc, txInput{client: localhost, mail: addr("a@example.org"), rcpts: []Address{addr("b@example.net")},
		header: sign([]string{"From", "OPES-Bypass"}), body: "hello\r\n"})
	if f.optional.calls != 1 {
		t.Errorf("untrusted signing domain honoured")
	}
	_ = time.Now
}
