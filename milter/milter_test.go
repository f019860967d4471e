package milter_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-message/textproto"

	"github.com/opesmilter/opes-milter/milter"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.test.example/opes/"

// refuser refuses the address "refuse-<stage>@..." at that stage, and at
// end of message when the Subject says "refuse".
type refuser struct{}

func (refuser) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageHelo, opes.StageMail, opes.StageRcpt, opes.StageEOM), Headers: true}
}
func (refuser) Begin(tx *opes.Transaction) opes.ServiceTx { return &refuserTx{tx: tx} }

type refuserTx struct {
	opes.BaseTx
	tx *opes.Transaction
}

func (r *refuserTx) Helo(context.Context) (opes.Verdict, error) {
	if r.tx.Conn.Helo == "refuse.example" {
		return opes.RejectVerdict("helo"), nil
	}
	return opes.ContinueVerdict, nil
}

func (r *refuserTx) Mail(context.Context) (opes.Verdict, error) {
	if strings.HasPrefix(r.tx.Sender.Addr, "refuse-mail@") {
		return opes.RejectVerdict("sender"), nil
	}
	return opes.ContinueVerdict, nil
}

func (r *refuserTx) Rcpt(_ context.Context, rc *opes.Recipient) (opes.Verdict, error) {
	if strings.HasPrefix(rc.Addr, "refuse-rcpt@") {
		return opes.RejectVerdict("recipient"), nil
	}
	return opes.ContinueVerdict, nil
}

func (r *refuserTx) EndOfMessage(context.Context) (opes.Verdict, error) {
	if strings.Contains(r.tx.Header.Get("Subject"), "refuse") {
		return opes.RejectVerdict("content"), nil
	}
	return opes.ContinueVerdict, nil
}

// vandal removes every trace field and tags the subject.
type vandal struct{}

func (vandal) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true}
}
func (vandal) Begin(tx *opes.Transaction) opes.ServiceTx { return &vandalTx{tx: tx} }

type vandalTx struct {
	opes.BaseTx
	tx *opes.Transaction
}

func (v *vandalTx) EndOfMessage(context.Context) (opes.Verdict, error) {
	v.tx.Header.Del(opes.FieldVia)
	v.tx.Header.Del(opes.FieldSystem)
	v.tx.Header.Del(opes.FieldBypass)
	return opes.Verdict{Action: "tagged"}, v.tx.Header.Set("Subject", "[x] "+v.tx.Header.Get("Subject"))
}

func startServer(t *testing.T, p *opes.Policy) (*milter.Server, string) {
	t.Helper()
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := milter.NewServer(proc, milter.Options{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return srv, ln.Addr().String()
}

func fullPolicy(services ...opes.Service) *opes.Policy {
	p := &opes.Policy{System: opes.System{URI: sysURI}}
	var specs []*opes.ServiceSpec
	for i, s := range services {
		name := []string{"refuser", "vandal"}[i]
		specs = append(specs, &opes.ServiceSpec{Name: name, URI: sysURI + "svc/" + name, Impl: s})
	}
	p.Services = specs
	p.Rules = []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: specs}}
	return p
}

// mta opens a client session that offers what Postfix offers.
func mta(t *testing.T, addr string) *gomilter.ClientSession {
	t.Helper()
	cl := gomilter.NewClient("tcp", addr, gomilter.WithActions(gomilter.AllClientSupportedActionMasks), gomilter.WithReadTimeout(5*time.Second))
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroMTAFQDN, "mx.test.example")
	macros.Set(gomilter.MacroQueueId, "4QX1Y2")
	s, err := cl.Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustFn(t *testing.T) func(*gomilter.Action, error) *gomilter.Action {
	return func(a *gomilter.Action, err error) *gomilter.Action {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

func header(t *testing.T, raw string) textproto.Header {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(raw + "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// checkTraceReply asserts the PROFILE §3 shape on a reply from the milter.
func checkTraceReply(t *testing.T, a *gomilter.Action, code int, service string) {
	t.Helper()
	if a.Type != gomilter.ActionRejectWithCode || int(a.SMTPCode) != code {
		t.Fatalf("action %+v, want reply code %d", a, code)
	}
	lines := strings.Split(a.SMTPReply, "\r\n")
	if len(lines) < 4 {
		t.Fatalf("reply has %d lines: %q", len(lines), a.SMTPReply)
	}
	want := []string{"-5.7.1 ", "-5.7.1 OPES-System: " + sysURI + "; id=", "-5.7.1 OPES-Via: ", " 5.7.1 Policy, privacy and bypass: " + sysURI}
	got := []string{lines[0], lines[1], lines[2], lines[len(lines)-1]}
	for i := range want {
		if !strings.HasPrefix(got[i], itoa(code)+want[i]) {
			t.Errorf("line %q does not start with %q", got[i], itoa(code)+want[i])
		}
	}
	if !strings.Contains(a.SMTPReply, sysURI+"svc/"+service+"; action=rejected; bypassable=no") {
		t.Errorf("deciding service missing: %q", a.SMTPReply)
	}
}

func itoa(n int) string {
	return strings.TrimSpace(strings.Repeat(" ", 0) + string(rune('0'+n/100)) + string(rune('0'+n/10%10)) + string(rune('0'+n%10)))
}

func TestEveryStageAndTrace(t *testing.T) {
	_, addr := startServer(t, fullPolicy(refuser{}))
	s := mta(t, addr)
	must := mustFn(t)
	must(s.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.10"))
	if a := must(s.Helo("client.example")); a.Type != gomilter.ActionContinue {
		t.Fatalf("helo: %+v", a)
	}
	// Refusal at MAIL carries the trace.
	checkTraceReply(t, must(s.Mail("refuse-mail@example.org", "")), 550, "refuser")
	if err := s.Abort(nil); err != nil {
		t.Fatal(err)
	}
	must(s.Mail("ok@example.org", "BODY=8BITMIME"))
	// Two recipients: one refused with trace, the other accepted.
	checkTraceReply(t, must(s.Rcpt("refuse-rcpt@example.net", "")), 550, "refuser")
	if a := must(s.Rcpt("ok@example.net", "")); a.Type != gomilter.ActionContinue {
		t.Fatalf("second rcpt: %+v", a)
	}
	must(s.DataStart())
	must(s.Header(header(t, "OPES-System: https://up.example/opes/; id=U1\r\nOPES-Via: https://up.example/opes/; id=U1,\r\n\thttps://up.example/opes/svc/a; action=analyzed\r\nSubject: hello")))
	mods, act, err := s.BodyReadFrom(strings.NewReader("body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if act.Type != gomilter.ActionAccept {
		t.Fatalf("eom: %+v", act)
	}
	if len(mods) != 2 || mods[0].Type != gomilter.ActionInsertHeader || mods[1].Type != gomilter.ActionInsertHeader {
		t.Fatalf("modifications %+v, want exactly the two trace inserts (upstream fields untouched)", mods)
	}
	via, sys := mods[0], mods[1]
	if sys.HeaderName != opes.FieldSystem || sys.HeaderIndex != 0 || sys.HeaderValue != " "+sysURI+"; id=4QX1Y2" {
		t.Errorf("OPES-System insert %+v", sys)
	}
	if via.HeaderName != opes.FieldVia || !strings.HasPrefix(via.HeaderValue, " "+sysURI+"; id=4QX1Y2,") || !strings.Contains(via.HeaderValue, "svc/refuser; action=rejected") {
		t.Errorf("OPES-Via insert %+v", via)
	}
	// Refusal at end of data on the next transaction of the connection.
	must(s.Mail("ok@example.org", ""))
	must(s.Rcpt("ok@example.net", ""))
	must(s.Header(header(t, "Subject: please refuse this")))
	_, act, err = s.BodyReadFrom(strings.NewReader("body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	checkTraceReply(t, act, 554, "refuser")
}

func TestTraceFieldsRestoredAfterVandal(t *testing.T) {
	_, addr := startServer(t, fullPolicy(refuser{}, vandal{}))
	s := mta(t, addr)
	must := mustFn(t)
	must(s.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.10"))
	must(s.Helo("client.example"))
	must(s.Mail("ok@example.org", ""))
	must(s.Rcpt("ok@example.net", ""))
	must(s.Header(header(t, "OPES-Via: https://up.example/opes/; id=U1\r\nOPES-Bypass: *\r\nSubject: hello")))
	mods, _, err := s.BodyReadFrom(strings.NewReader("b\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var changedSubject bool
	for _, m := range mods {
		switch {
		case m.Type == gomilter.ActionChangeHeader && strings.HasPrefix(strings.ToLower(m.HeaderName), "opes-"):
			t.Errorf("trace field changed or deleted: %+v", m)
		case m.Type == gomilter.ActionChangeHeader && m.HeaderName == "Subject":
			changedSubject = m.HeaderValue == " [x] hello"
		}
	}
	if !changedSubject {
		t.Errorf("the vandal's legitimate change is missing: %+v", mods)
	}
}

func TestDefaultPolicyNegotiatesEndOfMessageOnly(t *testing.T) {
	_, addr := startServer(t, &opes.Policy{System: opes.System{URI: sysURI}})
	s := mta(t, addr)
	must := mustFn(t)
	for _, opt := range []gomilter.OptProtocol{gomilter.OptNoConnect, gomilter.OptNoHelo, gomilter.OptNoMailFrom, gomilter.OptNoRcptTo, gomilter.OptNoData, gomilter.OptNoHeaders, gomilter.OptNoEOH, gomilter.OptNoBody, gomilter.OptNoUnknown} {
		if !s.ProtocolOption(opt) {
			t.Errorf("trace-only policy did not switch off %v", opt)
		}
	}
	must(s.Conn("c", gomilter.FamilyInet, 1, "192.0.2.1"))
	must(s.Helo("c"))
	must(s.Mail("a@example.org", ""))
	must(s.Rcpt("b@example.net", ""))
	must(s.Header(header(t, "Subject: x")))
	mods, act, err := s.BodyReadFrom(strings.NewReader("x\r\n"))
	if err != nil || act.Type != gomilter.ActionAccept || len(mods) != 2 {
		t.Fatalf("err %v act %+v mods %+v", err, act, mods)
	}
}

func TestReloadAffectsNewConnections(t *testing.T) {
	srv, addr := startServer(t, &opes.Policy{System: opes.System{URI: sysURI}})
	old := mta(t, addr)
	proc, err := opes.NewProcessor(fullPolicy(refuser{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetProcessor(proc)
	if !old.ProtocolOption(gomilter.OptNoMailFrom) {
		t.Fatal("old session renegotiated")
	}
	s := mta(t, addr)
	must := mustFn(t)
	must(s.Conn("c", gomilter.FamilyInet, 1, "192.0.2.1"))
	must(s.Helo("c"))
	checkTraceReply(t, must(s.Mail("refuse-mail@example.org", "")), 550, "refuser")
}

// TestGarbageDoesNotKillTheDaemon writes what crashes go-milter v0.10.1
// and random bytes to the socket, then runs a normal session.
func TestGarbageDoesNotKillTheDaemon(t *testing.T) {
	_, addr := startServer(t, fullPolicy(refuser{}))
	optneg := []byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff}
	connectNoNUL := append([]byte{0, 0, 0, 10, 'C'}, []byte("hostname!")...)
	mailNoNUL := append([]byte{0, 0, 0, 5, 'M'}, []byte("a@b")...)
	random := make([]byte, 4096)
	_, _ = rand.Read(random)
	payloads := map[string][]byte{
		"zero-length":      {0, 0, 0, 0},
		"zero-after-neg":   append(append([]byte{}, optneg...), 0, 0, 0, 0),
		"connect-no-nul":   append(append([]byte{}, optneg...), connectNoNUL...),
		"mail-no-nul":      append(append([]byte{}, optneg...), mailNoNUL...),
		"huge-length":      append(append([]byte{}, optneg...), 0x7f, 0xff, 0xff, 0xff, 'B'),
		"random":           random,
		"random-after-neg": append(append([]byte{}, optneg...), random...),
	}
	for name, p := range payloads {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s: daemon gone: %v", name, err)
		}
		_, _ = c.Write(p)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}
	s := mta(t, addr)
	must := mustFn(t)
	must(s.Conn("c", gomilter.FamilyInet, 1, "192.0.2.1"))
	must(s.Helo("c"))
	must(s.Mail("a@example.org", ""))
	must(s.Rcpt("b@example.net", ""))
	must(s.Header(header(t, "Subject: x")))
	_, act, err := s.BodyReadFrom(strings.NewReader("x\r\n"))
	if err != nil || act.Type != gomilter.ActionAccept {
		t.Fatalf("normal session after garbage: %v %+v", err, act)
	}
}
