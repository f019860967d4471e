package callout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/opes/callout/testpki"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// ruleService is an SDK service exercising every kind of answer.
type ruleService struct{}

func (ruleService) Parts() sdk.Parts {
	return sdk.Parts{Decide: []string{ocp.PartMail, ocp.PartRcpt}, Read: []string{ocp.PartHeaders, ocp.PartBody}}
}

func (ruleService) Begin(m *sdk.Message) sdk.Tx { return &ruleTx{m: m} }

type ruleTx struct{ m *sdk.Message }

func (r *ruleTx) Decide(_ context.Context, part string, rcpt *opes.Recipient) (sdk.Answer, error) {
	switch part {
	case ocp.PartMail:
		if r.m.Sender.Addr == "old@example.org" {
			v := "new@example.org"
			return sdk.Answer{Value: &v}, nil
		}
	case ocp.PartRcpt:
		if rcpt.Addr == "bad@example.net" {
			return sdk.Answer{Verdict: opes.Verdict{Kind: opes.Reject, Reply: opes.Reply{Code: 550, Enhanced: "5.1.1", Text: "No such user here"}}}, nil
		}
	}
	return sdk.Answer{}, nil
}

func (r *ruleTx) End(context.Context) (sdk.Answer, error) {
	body, _ := io.ReadAll(r.m.Body.Reader())
	return sdk.Answer{
		Verdict:  opes.Verdict{Action: "modified"},
		Header:   []opes.HeaderChange{{Kind: opes.ChangeField, Name: "Subject", Index: 1, Value: "[scanned] hello"}, {Kind: opes.AppendField, Name: "X-Scanned", Value: "yes"}, {Kind: opes.AppendField, Name: "OPES-System", Value: "https://evil.example/"}},
		Body:     strings.NewReader(strings.ToUpper(string(body))),
		AddRcpts: []opes.Address{{Addr: "audit@example.net"}},
		Trace:    []opes.TraceEntry{{URI: "https://callout.example/svc/rules", Params: []opes.TraceParam{{Name: "action", Value: "modified"}}}},
	}, nil
}

func (r *ruleTx) Close() {}

// TestAnswersOverMutualTLS runs a processor against an SDK callout over
// mutually authenticated TLS and checks that every answer becomes the
// verdict or change it stands for.
func TestAnswersOverMutualTLS(t *testing.T) {
	pki := testpki.Generate(t, t.TempDir())
	addr := startSDK(t, ruleService{}, serverTLS(t, pki.ServerCert, pki.ServerKey, pki.CA))
	svc := newCallout(t, fmt.Sprintf(`servers = [%q]
service = "svc"
stages = ["mail", "rcpt", "eom"]
timeout = "5s"
[options.tls]
ca = %q
cert = %q
key = %q
`, addr, pki.CA, pki.ClientCert, pki.ClientKey))
	proc := newProcessor(t, spec("rules", svc))
	m := plainMessage
	m.from = "old@example.org"
	m.rcpts = []string{"bob@example.net", "bad@example.net"}
	o, rc := runMessage(t, proc, m)
	if rc[0].Kind != opes.Continue {
		t.Errorf("bob refused: %v", rc[0].Reply)
	}
	if rc[1].Kind != opes.Reject || rc[1].Reply == nil || !strings.HasPrefix(rc[1].Reply.String(), "550-5.1.1 No such user here\r\n") {
		t.Fatalf("bad@ not refused with the callout's reply: %v %v", rc[1].Kind, rc[1].Reply)
	}
	if !strings.Contains(rc[1].Reply.String(), testSystem+"svc/rules; action=rejected; bypassable=no") {
		t.Errorf("refusal lacks the trace:\n%s", rc[1].Reply)
	}
	if o.Kind != opes.Continue {
		t.Fatalf("message not delivered: %v %v", o.Kind, o.Reply)
	}
	if o.Sender == nil || o.Sender.Addr != "new@example.org" {
		t.Errorf("sender = %+v, want the rewritten new@example.org", o.Sender)
	}
	if len(o.AddRcpts) != 1 || o.AddRcpts[0].Addr != "audit@example.net" {
		t.Errorf("added recipients = %+v", o.AddRcpts)
	}
	body, _ := io.ReadAll(o.Body)
	if string(body) != "HELLO BOB.\r\n" {
		t.Errorf("body = %q", body)
	}
	// The RCPT refusal fixed the trace id before the queue id was known,
	// and the service's most significant action was the refusal.
	got := delivered(m, o)
	id := o.TraceID
	want := "OPES-System: " + testSystem + "; id=" + id + "\r\n" +
		"OPES-Via: " + testSystem + "; id=" + id + ",\r\n\t" + testSystem + "svc/rules; action=rejected,\r\n\t" +
		"https://callout.example/svc/rules; action=modified\r\n" + // the callout's own entry, after ours
		"From: alice@example.org\r\nSubject: [scanned] hello\r\nReceived: from a\r\n\tby b\r\nX-Scanned: yes\r\n"
	if got != want {
		t.Errorf("delivered header:\n%s\nwant:\n%s", got, want)
	}
}

func TestTLSVerification(t *testing.T) {
	pki := testpki.Generate(t, t.TempDir())
	addr := startSDK(t, ruleService{}, serverTLS(t, pki.ServerCert, pki.ServerKey, pki.CA))
	cases := map[string]string{
		"server not trusted": fmt.Sprintf("ca = %q\ncert = %q\nkey = %q\n", pki.OtherCA, pki.ClientCert, pki.ClientKey),
		"no client cert":     fmt.Sprintf("ca = %q\n", pki.CA),
	}
	for name, tlsOpts := range cases {
		t.Run(name, func(t *testing.T) {
			svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\ntimeout = \"3s\"\n[options.tls]\n%s", addr, tlsOpts))
			tx := svc.Begin(newTx())
			defer tx.Close()
			if _, err := tx.Mail(context.Background()); err == nil {
				t.Fatal("transaction started over an unverified TLS connection")
			}
		})
	}
	// Plain TCP to a TLS server fails too (the server expects a handshake).
	svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\"\n", addr))
	tx := svc.Begin(newTx())
	defer tx.Close()
	if _, err := tx.Mail(context.Background()); err == nil {
		t.Fatal("plain TCP accepted by a TLS server")
	}
}

func newTx() *opes.Transaction {
	return &opes.Transaction{Conn: &opes.Connection{Helo: "h.example"}, Sender: &opes.Address{Addr: "a@example.org"}, Header: opes.NewHeader(), Body: opes.NewBody(opes.BodyOptions{})}
}

func TestOptions(t *testing.T) {
	bad := map[string]string{
		`service = "x"`:             "servers",
		`servers = ["127.0.0.1:1"]`: "service",
		`servers = ["192.0.2.1:1344"]` + "\nservice = \"x\"":                                       "servers[1]",
		`servers = ["nocolon"]` + "\nservice = \"x\"":                                              "servers[1]",
		`servers = ["127.0.0.1:1"]` + "\nservice = \"x\"\nstages = [\"data\"]":                     "stages[1]",
		`servers = ["127.0.0.1:1"]` + "\nservice = \"x\"\nparts = [\"attachments\"]":               "parts[1]",
		`servers = ["127.0.0.1:1"]` + "\nservice = \"x\"\nstages = [\"mail\"]\nparts = [\"body\"]": "stages",
		`servers = ["127.0.0.1:1"]` + "\nservice = \"x\"\ntimeout = \"1h\"":                        "timeout",
		`servers = ["127.0.0.1:1"]` + "\nservice = \"x\"\n[options.tls]\ncert = \"/nonexistent\"":  "tls.cert",
	}
	for src, field := range bad {
		_, err := New(optiontest.Decoder(t, "[options]\n"+src))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: err = %v, want a FieldError on %s", src, err, field)
		}
	}
	svc := newCallout(t, `servers = ["192.0.2.1:1344"]
service = "x"
insecure_off_loopback = true
parts = ["envelope", "size"]
stages = ["rcpt"]`)
	n := svc.Needs()
	if !n.Stages.Has(opes.StageRcpt) || !n.Stages.Has(opes.StageEOM) || n.Headers || !n.Body {
		t.Errorf("needs = %+v: want rcpt+eom, no headers, body (for SIZE)", n)
	}
	if !slices.Equal(svc.offer.Adaptive, []string{ocp.PartRcpt}) || !slices.Equal(svc.offer.Informative, []string{ocp.PartMail, ocp.PartSize}) {
		t.Errorf("offer = %+v", svc.offer)
	}
}

// recorder is an SDK service that reads some parts and decides nothing;
// it records what arrived.
type recorder struct {
	read []string
	mu   sync.Mutex
	got  []*sdk.Message
}

func (r *recorder) Parts() sdk.Parts { return sdk.Parts{Read: r.read} }
func (r *recorder) Begin(m *sdk.Message) sdk.Tx {
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	return recorderTx{}
}

type recorderTx struct{}

func (recorderTx) Decide(context.Context, string, *opes.Recipient) (sdk.Answer, error) {
	return sdk.Answer{}, nil
}
func (recorderTx) End(context.Context) (sdk.Answer, error) { return sdk.Answer{}, nil }
func (recorderTx) Close()                                  {}

// TestOnlyNegotiatedPartsTravel: the processor offers everything; a
// metadata-only service never receives the header or the body, a
// headers-only one only the header (RFC 4496 §4.3).
func TestOnlyNegotiatedPartsTravel(t *testing.T) {
	m := plainMessage
	m.body = strings.Repeat("body line\r\n", 20000) // several BODY chunks when sent
	headerSize := len(opes.FormatHeader([]opes.HeaderField{{Name: "From", Value: " alice@example.org"}, {Name: "Subject", Value: " hello"}, {Name: "Received", Value: " from a\r\n\tby b"}}))
	cases := []struct {
		read []string
		want []string
	}{
		{[]string{ocp.PartMail, ocp.PartRcpt, ocp.PartSize}, []string{ocp.PartMail, ocp.PartRcpt, ocp.PartSize}},
		{[]string{ocp.PartHeaders}, []string{ocp.PartHeaders}},
		{[]string{ocp.PartConnect, ocp.PartHelo}, []string{ocp.PartConnect, ocp.PartHelo}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.read, ","), func(t *testing.T) {
			rec := &recorder{read: c.read}
			addr := startSDK(t, rec, nil)
			svc := newCallout(t, fmt.Sprintf(`servers = [%q]
service = "svc"
parts = ["connect", "helo", "envelope", "headers", "body", "size"]`, addr))
			o, _ := runMessage(t, newProcessor(t, spec("rec", svc)), m)
			if o.Kind != opes.Continue {
				t.Fatalf("outcome %v %v", o.Kind, o.Reply)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.got) != 1 {
				t.Fatalf("%d transactions at the callout", len(rec.got))
			}
			got := rec.got[0]
			if !slices.Equal(got.Received, c.want) {
				t.Errorf("parts received %v, want %v", got.Received, c.want)
			}
			if got.Body != nil {
				t.Error("the body reached a service that did not ask for it")
			}
			if slices.Contains(c.want, ocp.PartSize) && got.Size != int64(headerSize+2+len(m.body)) {
				t.Errorf("SIZE = %d, want %d", got.Size, headerSize+2+len(m.body))
			}
			if slices.Contains(c.want, ocp.PartHeaders) && len(got.Header) != 3 {
				t.Errorf("header = %+v", got.Header)
			}
			if slices.Contains(c.want, ocp.PartConnect) && (got.Conn.Hostname != "client.example.org" || got.Conn.Helo != "client.example.org") {
				t.Errorf("connection = %+v", got.Conn)
			}
		})
	}
}

// TestFailures: each broken callout has its defined outcome: an error from
// the hook (a timeout distinguishable as such), which the processor turns
// into 451 4.3.0 with the trace for a service that is not bypassable, and
// into delivery with status=failed for an optional one.
func TestFailures(t *testing.T) {
	answerAME := func(params string) func(m *ocp.Message, w io.Writer) bool {
		return func(m *ocp.Message, w io.Writer) bool {
			if m.Name == ocp.MsgAME {
				fmt.Fprintf(w, "AMS %s;\r\nAME %s\r\n%s\r\n;\r\n", m.Anon[0].(ocp.Atom), m.Anon[0].(ocp.Atom), params)
			}
			return false
		}
	}
	cases := []struct {
		name    string
		onData  func(m *ocp.Message, w io.Writer) bool
		timeout bool
		te400   bool // the processor ended the transaction with a failure
	}{
		{name: "hangs", onData: func(*ocp.Message, io.Writer) bool { return false }, timeout: true, te400: true},
		{name: "closes mid-message", onData: func(m *ocp.Message, w io.Writer) bool {
			return m.Name == ocp.MsgDUM && m.Param(ocp.ParamAMPart) == ocp.Atom(ocp.PartBody)
		}},
		{name: "answers garbage", onData: func(m *ocp.Message, w io.Writer) bool {
			if m.Name == ocp.MsgAME {
				_, _ = io.WriteString(w, "250 OK, sure\r\n")
			}
			return false
		}},
		{name: "2xx SMTP-Error", onData: answerAME(q("SMTP-Error", "250 2.0.0 all fine")), te400: true},
		{name: "class mismatch", onData: answerAME(q("SMTP-Error", "550 4.7.1 mixed classes")), te400: true},
		{name: "control characters", onData: answerAME(q("SMTP-Error", "550 5.7.1 bad\r\nline")), te400: true},
		{name: "unknown advice", onData: answerAME(`Advice: maybe`), te400: true},
		{name: "DUM with a gap", onData: func(m *ocp.Message, w io.Writer) bool {
			if m.Name == ocp.MsgAME {
				x := m.Anon[0].(ocp.Atom)
				fmt.Fprintf(w, "AMS %s;\r\nDUM %s 7\r\nAM-Part: BODY\r\n\r\n1:x\r\n;\r\n", x, x)
			}
			return false
		}, te400: true},
		{name: "TE 400", onData: func(m *ocp.Message, w io.Writer) bool {
			if m.Name == ocp.MsgAME {
				fmt.Fprintf(w, "TE %s {400 \"4:busy\"};\r\n", m.Anon[0].(ocp.Atom))
			}
			return false
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := startScripted(t, c.onData)
			opts := fmt.Sprintf("servers = [%q]\nservice = \"svc\"\ntimeout = \"400ms\"\n", srv.addr())

			// The hook's error.
			svc := newCallout(t, opts)
			tx := newTx()
			st := svc.Begin(tx)
			_, err := eom(st, tx)
			st.Close()
			if err == nil {
				t.Fatal("no error")
			}
			if isTimeout(err) != c.timeout {
				t.Errorf("errors.Is(err, DeadlineExceeded) = %v: %v", !c.timeout, err)
			}
			if c.timeout && !slices.Contains(srv.messages(), "PQ") {
				t.Errorf("the hung callout was not probed with PQ: %v", srv.messages())
			}
			if c.te400 {
				waitFor(t, func() bool {
					return slices.ContainsFunc(srv.messages(), func(s string) bool { return strings.HasPrefix(s, "TE 400") })
				},
					"the processor to end the transaction with TE 400")
			}

			// Through the processor: required service.
			o, _ := runMessage(t, newProcessor(t, spec("remote", newCallout(t, opts))), plainMessage)
			if o.Kind != opes.TempFail || o.Reply == nil || o.Reply.Code != 451 || o.Reply.Enhanced != "4.3.0" {
				t.Fatalf("required service: outcome %v %v, want 451 4.3.0", o.Kind, o.Reply)
			}
			status := "status=failed"
			if c.timeout {
				status = "status=timeout"
			}
			if !strings.Contains(o.Reply.String(), testSystem+"svc/remote; action=analyzed; "+status) {
				t.Errorf("reply lacks the failed service with %s:\n%s", status, o.Reply)
			}

			// Optional service: delivered, traced as failed.
			opt := spec("remote", newCallout(t, opts))
			opt.Bypassable, opt.OnError = true, opes.OnErrorContinue
			o, _ = runMessage(t, newProcessor(t, opt), plainMessage)
			if o.Kind != opes.Continue {
				t.Fatalf("optional service: outcome %v", o.Kind)
			}
			if h := delivered(plainMessage, o); !strings.Contains(h, "svc/remote; action=analyzed;\r\n\t"+status) && !strings.Contains(h, "svc/remote; action=analyzed; "+status) {
				t.Errorf("trace lacks %s:\n%s", status, h)
			}
		})
	}
}

// q renders a named parameter with a quoted value of the right size.
func q(name, value string) string { return fmt.Sprintf("%s: \"%d:%s\"", name, len(value), value) }

// eom runs the hooks of a whole message on a bare transaction.
func eom(st opes.ServiceTx, tx *opes.Transaction) (opes.Verdict, error) {
	ctx := context.Background()
	rt := opes.NewRemoteTransaction(tx.Conn, opes.BodyOptions{})
	defer rt.Close()
	rt.Tx.Sender, rt.Tx.Header, rt.Tx.Body = tx.Sender, tx.Header, tx.Body
	_, _ = rt.Tx.Body.Write([]byte("body\r\n"))
	rt.SetStage(opes.StageEOM)
	*tx = *rt.Tx
	return st.EndOfMessage(ctx)
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("timed out waiting for %s", what)
}

// TestFailoverAndBreaker: a dead first server is skipped in favour of the
// next; with only dead servers the breaker opens after `failures`
// attempts and later calls fail at once without connecting.
func TestFailoverAndBreaker(t *testing.T) {
	dead := startScripted(t, nil)
	deadAddr := dead.addr()
	_ = dead.ln.Close() // nothing listens there any more

	good := startSDK(t, &recorder{read: []string{ocp.PartMail}}, nil)
	svc := newCallout(t, fmt.Sprintf("servers = [%q, %q]\nservice = \"svc\"\n", deadAddr, good))
	if o, _ := runMessage(t, newProcessor(t, spec("fo", svc)), plainMessage); o.Kind != opes.Continue {
		t.Fatalf("failover: outcome %v %v", o.Kind, o.Reply)
	}

	svc = newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\n[options.breaker]\nfailures = 2\ncool_down = \"300ms\"\n", deadAddr))
	attempt := func(wantOpen bool) {
		t.Helper()
		tx := newTx()
		st := svc.Begin(tx)
		_, err := st.Mail(context.Background())
		st.Close()
		if err == nil {
			t.Fatal("a dead server answered")
		}
		if open := errors.Is(err, ErrBreakerOpen); open != wantOpen {
			t.Errorf("breaker open = %v: %v", open, err)
		}
	}
	attempt(false)
	attempt(false)
	attempt(true) // two failures opened it
	attempt(true)
	time.Sleep(400 * time.Millisecond)
	attempt(false) // after the cool-down one trial goes through...
	attempt(true)  // ...and its failure opens the breaker again at once
}

// TestUnknownService: the server refuses the service group, which ends
// the connection; the hook fails.
func TestUnknownService(t *testing.T) {
	addr := startSDK(t, &recorder{}, nil)
	svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"nosuch\"\n", addr))
	st := svc.Begin(newTx())
	defer st.Close()
	_, err := st.Mail(context.Background())
	var pe *ocp.PeerError
	if !errors.As(err, &pe) || !strings.Contains(pe.Result.Reason, "unknown service") {
		t.Fatalf("err = %v, want the server's CE naming the unknown service", err)
	}
}

func TestParseSMTPError(t *testing.T) {
	good := map[string]opes.Reply{
		"550 5.7.1 Go away": {Code: 550, Enhanced: "5.7.1", Text: "Go away"},
		"451 4.3.0":         {Code: 451, Enhanced: "4.3.0"},
		"554 5.7.0 a  b":    {Code: 554, Enhanced: "5.7.0", Text: "a  b"},
	}
	for s, want := range good {
		r, _, err := ParseSMTPError(s)
		if err != nil || r != want {
			t.Errorf("%q: %+v, %v", s, r, err)
		}
	}
	for _, s := range []string{"250 2.0.0 ok", "550 4.7.1 x", "550 5.7 x", "550", "55O 5.7.1 x", "550 5.7.1 caf\xc3\xa9", "550-5.7.1 x", strings.Repeat("x", 600), "650 6.0.0 x"} {
		if _, _, err := ParseSMTPError(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// TestPoolKeepAliveAndReconnect: PQ keep-alive holds an idle pooled
// connection open past the server's idle timeout; without keep-alive the
// server ends it, and the next message gets a new connection.
func TestPoolKeepAliveAndReconnect(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = (&sdk.Server{Handler: sdk.Mux{"svc": &recorder{read: []string{ocp.PartMail}}}, IdleTimeout: 300 * time.Millisecond}).Serve(ctx, ln)
	}()
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()

	alive := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nkeepalive = \"100ms\"\n", addr))
	proc := newProcessor(t, spec("ka", alive))
	for i := 0; i < 2; i++ {
		if o, _ := runMessage(t, proc, plainMessage); o.Kind != opes.Continue {
			t.Fatalf("message %d: %v %v", i+1, o.Kind, o.Reply)
		}
		time.Sleep(700 * time.Millisecond)
	}
	if n := ln.count(); n != 1 {
		t.Errorf("%d connections with keep-alive, want 1", n)
	}

	idle := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nkeepalive = \"0s\"\n", addr))
	proc = newProcessor(t, spec("idle", idle))
	for i := 0; i < 2; i++ {
		if o, _ := runMessage(t, proc, plainMessage); o.Kind != opes.Continue {
			t.Fatalf("message %d after the server dropped the connection: %v %v", i+1, o.Kind, o.Reply)
		}
		time.Sleep(700 * time.Millisecond)
	}
	if n := ln.count(); n != 3 {
		t.Errorf("%d connections in all, want 1 + 2 (the idle one was replaced)", n)
	}
}

// TestFlowControl drives the processor's side of RFC 4037 §7–8 with a
// scripted server: a DPI, a DWSS (answered by DSS), a DWP (answered by
// DPM; data resumes after DWM), a DWSR (the original flow ends early with
// AME 206) and a DUY answer referring to preserved data.
func TestFlowControl(t *testing.T) {
	srv := startScripted(t, func(m *ocp.Message, w io.Writer) bool {
		x := string(m.Anon[0].(ocp.Atom))
		switch {
		case m.Name == ocp.MsgDUM && m.Param(ocp.ParamAMPart) == ocp.Atom(ocp.PartMail):
			off, _ := ocp.Uni(m.Anon[1])
			size := len(m.Payload)
			// 70000 original octets: the header and the first 64 KiB
			// BODY chunk are below, the second chunk reaches it.
			fmt.Fprintf(w, "AMS %s;\r\nDPI %s 0 2147483647;\r\nDWSS %s;\r\nDWP %s 0;\r\nDWSR %s 70000;\r\n", x, x, x, x, x)
			fmt.Fprintf(w, "DUY %s %d %d\r\nAM-Part: MAIL\r\nAction: analyzed\r\n;\r\n", x, off, size)
		case m.Name == ocp.MsgDPM:
			fmt.Fprintf(w, "DWM %s;\r\n", x)
		case m.Name == ocp.MsgAME:
			fmt.Fprintf(w, "AME %s;\r\nTE %s;\r\n", x, x)
		}
		return false
	})
	svc := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nstages = [\"mail\", \"eom\"]\ntimeout = \"5s\"\n", srv.addr()))
	m := plainMessage
	m.body = strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB: four BODY chunks if all were sent
	o, _ := runMessage(t, newProcessor(t, spec("fc", svc)), m)
	if o.Kind != opes.Continue {
		t.Fatalf("outcome %v %v", o.Kind, o.Reply)
	}
	got := strings.Join(srv.messages(), "|")
	for _, want := range []string{"DSS", "DPM", "DUM BODY|AME 206 server needs no more"} {
		if !strings.Contains(got, want) {
			t.Errorf("processor sent %s; want %q in it", got, want)
		}
	}
	if strings.Count(got, "DUM BODY") != 2 {
		t.Errorf("%d BODY chunks sent after DWSR, want 2: %s", strings.Count(got, "DUM BODY"), got)
	}
}
