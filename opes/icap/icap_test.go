package icap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.example.net/opes/"

func mustNew(t testing.TB, src string) *Service {
	t.Helper()
	s := servicetest.MustNew(t, New, src).(*Service)
	t.Cleanup(s.Close)
	return s
}

func opts(server string, extra ...string) string {
	return "[options]\nserver = \"" + server + "\"\n" + strings.Join(extra, "\n") + "\n"
}

// message is a test mail: header fields as the MTA passes them (value
// with its leading space) and a CRLF body.
type message struct {
	header [][2]string
	body   string
}

var baseHeader = [][2]string{
	{"From", " a@example.net"},
	{"To", " b@example.org"},
	{"Subject", " quarterly report"},
	{"Message-ID", " <1@example.net>"},
}

func withSubject(subject string) [][2]string {
	h := append([][2]string{}, baseHeader...)
	h[2][1] = " " + subject
	return h
}

var (
	msgClean  = message{header: baseHeader, body: "Hello,\r\nnothing to see here.\r\n"}
	msgSecret = message{header: withSubject("code secret-42"), body: "Hello,\r\nthe code is secret-1234, keep it.\r\nBye\r\n"}
	msgBlock  = message{header: baseHeader, body: "Hello,\r\nthis says " + blockWord + ".\r\n"}
	msgEicar  = mimeMessage([]byte(enginetest.EICAR))
)

func mimeMessage(attachment []byte) message {
	h, body := servicetest.WithAttachment(baseHeader, attachment)
	return message{header: h, body: body}
}

// newTx builds a transaction outside the processor (stage not EOM: only
// header changes and verdicts can be checked this way).
func newTx(t *testing.T, m message) *opes.Transaction {
	t.Helper()
	tx := servicetest.NewTransaction(t, m.header, m.body)
	tx.Conn = &opes.Connection{Addr: netip.MustParseAddr("203.0.113.5"), Helo: "client.example.net"}
	tx.Sender = &opes.Address{Addr: "a@example.net"}
	tx.Recipients = []*opes.Recipient{{Address: opes.Address{Addr: "b@example.org"}}}
	return tx
}

func TestNewErrors(t *testing.T) {
	const ok = "icap://127.0.0.1:1344/echo"
	tests := []struct {
		name, src, field, msg string
	}{
		{"no server", "[options]\n", "server", "is required"},
		{"empty list", "[options]\nserver = []\n", "server", "empty list"},
		{"number", "[options]\nserver = 5\n", "server", "want a string"},
		{"list item", "[options]\nserver = [\"" + ok + "\", 7]\n", "server[2]", "want a string"},
		{"bad list item", "[options]\nserver = [\"" + ok + "\", \"http://x/y\"]\n", "server[2]", `want "icap://host:port/service"`},
		{"http scheme", opts("http://127.0.0.1/echo"), "server", `want "icap://host:port/service"`},
		{"icaps", opts("icaps://127.0.0.1/echo"), "server", "not supported"},
		{"no path", opts("icap://127.0.0.1:1344"), "server", "no service path"},
		{"no host", opts("icap:///echo"), "server", "no host"},
		{"bad port", opts("icap://127.0.0.1:99999/echo"), "server", "bad port"},
		{"mode", opts(ok, `mode = "filter"`), "mode", "want reqmod or respmod"},
		{"timeout", opts(ok, `timeout = "30"`), "timeout", "not a duration"},
		{"huge timeout", opts(ok, `timeout = "1h"`), "timeout", "not between"},
		{"connect timeout", opts(ok, `connect_timeout = "0s"`), "connect_timeout", "not between"},
		{"negative preview", opts(ok, `preview = -1`), "preview", "not between"},
		{"huge preview", opts(ok, `preview = 2000000`), "preview", "not between"},
		{"max_size", opts(ok, `max_size = -5`), "max_size", "negative"},
		{"on_block", opts(ok, `on_block = "tag"`), "on_block", "want reject or quarantine"},
		{"envelope name", opts(ok, "[options.envelope_headers]\nmail_from = \"X Mail\""), "envelope_headers.mail_from", "not an HTTP field name"},
		{"envelope reserved", opts(ok, "[options.envelope_headers]\nrcpt_to = \"Content-Length\""), "envelope_headers.rcpt_to", "written by the adapter"},
		{"envelope duplicate", opts(ok, "[options.envelope_headers]\nhelo = \"X-Mail-From\""), "envelope_headers.helo", "already used by envelope_headers.mail_from"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nserver = \""+ok+"\"\nmax_size = \"big\"\n", "icap")
}

func TestDefaults(t *testing.T) {
	s := mustNew(t, opts("icap://icap.example.net/srv_cfg_filter?allow204=on"))
	srv := s.client.servers[0]
	if s.method != "REQMOD" || s.timeout != DefaultTimeout || s.maxSize != DefaultMaxSize || s.onBlock != opes.Reject ||
		s.client.connectTimeout != DefaultConnectTimeout || s.client.previewCap != -1 ||
		srv.addr != "icap.example.net:1344" || srv.uri != "icap://icap.example.net:1344/srv_cfg_filter?allow204=on" ||
		s.envelope != (envelopeNames{"X-Mail-From", "X-Rcpt-To", "X-Client-IP", "X-Helo"}) {
		t.Errorf("defaults: %+v server %+v", s, srv)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if got := s.Needs(); got != want {
		t.Errorf("Needs = %+v, want %+v", got, want)
	}
	s = mustNew(t, `[options]
server = ["icap://a.example:1344/av", "icap://[2001:db8::1]/av"]
mode = "RESPMOD"
preview = 0
on_block = "quarantine"
[options.envelope_headers]
helo = ""
rcpt_to = "X-Envelope-To"
`)
	if len(s.client.servers) != 2 || s.client.servers[1].addr != "[2001:db8::1]:1344" || s.method != "RESPMOD" ||
		s.client.previewCap != 0 || s.onBlock != opes.Quarantine ||
		s.envelope != (envelopeNames{"X-Mail-From", "X-Envelope-To", "X-Client-IP", ""}) {
		t.Errorf("options: %+v", s)
	}
}

// TestEcho: c-icap's echo service returns every message as it was; in
// both modes, with and without preview, small and larger than the
// preview, that is "analyzed" and nothing changes.
func TestEcho(t *testing.T) {
	c := needCICAP(t)
	big := message{header: baseHeader, body: strings.Repeat("0123456789 abcdefghij\r\n", 3000)} // 69 KB: past any preview
	for _, mode := range []string{"reqmod", "respmod"} {
		for _, preview := range []string{"", "preview = 0", "preview = 10"} {
			for _, m := range []message{msgClean, big, {header: baseHeader}} {
				s := mustNew(t, opts(c.url("echo"), `mode = "`+mode+`"`, preview))
				tx := newTx(t, m)
				before := tx.Header.Fields()
				v, err := servicetest.EndOfMessage(t, s, tx)
				if err != nil {
					t.Fatalf("%s %q %d octets: %v", mode, preview, len(m.body), err)
				}
				if want := (opes.Verdict{Kind: opes.Continue, Action: "analyzed"}); v != want {
					t.Errorf("%s %q %d octets: verdict %+v, want %+v", mode, preview, len(m.body), v, want)
				}
				if got := tx.Header.Fields(); !equalFields(got, before) {
					t.Errorf("header changed: %v", got)
				}
				// Each pooled connection holds a c-icap thread.
				s.Close()
			}
		}
	}
}

func equalFields(a, b []opes.HeaderField) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBlock: c-icap blocks, through the content filter's block rule and
// through virus_scan with clamd, in both modes; on_block decides.
func TestBlock(t *testing.T) {
	c := needCICAP(t)
	tests := []struct {
		service string
		msg     message
		reason  string
	}{
		{"srv_cfg_filter", msgBlock, "blocked: Forbidden score=10>5"},
		{"virus_scan", msgEicar, "infection found: " + enginetest.EicarSig},
		{"virus_scan", message{header: baseHeader, body: "x " + enginetest.Token + "\r\n"}, "infection found: " + enginetest.TokenSig},
	}
	for _, tt := range tests {
		for _, mode := range []string{"reqmod", "respmod"} {
			name := tt.service + "/" + mode + "/" + tt.reason
			s := mustNew(t, opts(c.url(tt.service), `mode = "`+mode+`"`))
			v, err := servicetest.EndOfMessage(t, s, newTx(t, tt.msg))
			want := opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: tt.reason,
				Reply: opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Message refused by content filter: " + tt.reason}}
			if err != nil || v != want {
				t.Errorf("%s: %+v, %v; want %+v", name, v, err, want)
			}
			s = mustNew(t, opts(c.url(tt.service), `mode = "`+mode+`"`, `on_block = "quarantine"`))
			v, err = servicetest.EndOfMessage(t, s, newTx(t, tt.msg))
			if want := (opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: tt.reason}); err != nil || v != want {
				t.Errorf("%s quarantine: %+v, %v; want %+v", name, v, err, want)
			}
		}
	}
	// The same services let a clean message through unchanged.
	for _, svc := range []string{"srv_cfg_filter", "virus_scan"} {
		v, err := servicetest.EndOfMessage(t, mustNew(t, opts(c.url(svc))), newTx(t, msgClean))
		if want := (opes.Verdict{Kind: opes.Continue, Action: "analyzed"}); err != nil || v != want {
			t.Errorf("%s clean: %+v, %v; want %+v", svc, v, err, want)
		}
	}
}

// TestEnvelopeHeaders: what c-icap's services receive, seen through a
// peer: the request line, the envelope, the message as sent.
func TestEnvelopeHeaders(t *testing.T) {
	got := make(chan *peerRequest, 2)
	p := startPeer(t, peerOptions, func(n int, r *peerRequest) string { got <- r; return answer204 })
	for _, mode := range []string{"reqmod", "respmod"} {
		s := mustNew(t, opts(p.url(), `mode = "`+mode+`"`, "[options.envelope_headers]\nhelo = \"X-Client-Helo\""))
		tx := newTx(t, msgClean)
		tx.Recipients = append(tx.Recipients,
			&opes.Recipient{Address: opes.Address{Addr: "c@example.org"}},
			&opes.Recipient{Address: opes.Address{Addr: "refused@example.org"}, Refused: true})
		tx.Conn.Helo = "evil\r\nX-Injected: 1"
		if v, err := servicetest.EndOfMessage(t, s, tx); err != nil || v.Action != "analyzed" {
			t.Fatalf("%s: %+v, %v", mode, v, err)
		}
		r := <-got
		head := "Host: localhost\r\nX-Mail-From: <a@example.net>\r\nX-Rcpt-To: <b@example.org>\r\nX-Rcpt-To: <c@example.org>\r\n" +
			"X-Client-IP: 203.0.113.5\r\nX-Client-Helo: evil??X-Injected: 1\r\n"
		msg := "From: a@example.net\r\nTo: b@example.org\r\nSubject: quarterly report\r\nMessage-ID: <1@example.net>\r\n\r\n" + msgClean.body
		entity := "Content-Type: message/rfc822\r\nContent-Length: " + itoa(len(msg)) + "\r\n"
		want := "POST /message HTTP/1.1\r\n" + head + entity + "\r\n"
		if mode == "respmod" {
			want = "GET /message HTTP/1.1\r\n" + head + "\r\nHTTP/1.1 200 OK\r\n" + entity + "\r\n"
		}
		if r.httpHdr != want {
			t.Errorf("%s encapsulated header:\n%q\nwant\n%q", mode, r.httpHdr, want)
		}
		if string(r.body) != msg {
			t.Errorf("%s message:\n%q\nwant\n%q", mode, r.body, msg)
		}
		for _, h := range []string{"Allow: 204\r\n", "X-Client-IP: 203.0.113.5\r\n", strings.ToUpper(mode) + " "} {
			if !strings.Contains(r.method+" "+r.header, h) {
				t.Errorf("%s ICAP request lacks %q:\n%s", mode, h, r.header)
			}
		}
	}
	// Names set to "" leave the envelope out, the ICAP X-Client-IP too.
	s := mustNew(t, opts(p.url(), "[options.envelope_headers]\nmail_from = \"\"\nrcpt_to = \"\"\nclient_ip = \"\"\nhelo = \"\""))
	if _, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean)); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if strings.Contains(r.httpHdr, "X-") || strings.Contains(r.header, "X-Client-IP") {
		t.Errorf("envelope sent though switched off:\n%s%s", r.header, r.httpHdr)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestMaxSize: a message above max_size is not sent (the server does
// not even exist) and is traced as skipped.
func TestMaxSize(t *testing.T) {
	s := mustNew(t, opts("icap://127.0.0.1:1/none", "max_size = 100"))
	v, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean))
	if err != nil || v.Kind != opes.Continue || v.Status != "skipped" || !strings.Contains(v.Reason, "larger than max_size 100") {
		t.Errorf("verdict %+v, %v; want continue, status=skipped", v, err)
	}
	// An answer body above max_size is a failure, never a truncated mail.
	p := startPeer(t, peerOptions, func(int, *peerRequest) string { return reqmodAnswer(strings.Repeat("x", 5000)) })
	s = mustNew(t, opts(p.url(), "max_size = 1000"))
	if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean)); err == nil || !strings.Contains(err.Error(), "larger than max_size") {
		t.Errorf("oversized answer: %+v, %v; want an error", v, err)
	}
}

// TestServerDown: nothing listens; the error comes at once.
func TestServerDown(t *testing.T) {
	port, err := enginetest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	url := "icap://127.0.0.1:" + itoa(port) + "/echo"
	began := time.Now()
	v, err := servicetest.EndOfMessage(t, mustNew(t, opts(url)), newTx(t, msgClean))
	if err == nil || !strings.Contains(err.Error(), "connect") || !strings.Contains(err.Error(), url) {
		t.Errorf("%+v, %v; want a connect error naming the server", v, err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("took %s", took)
	}
}

// TestFailover: the first server is down, the second answers; the dead
// one is then tried last.
func TestFailover(t *testing.T) {
	c := needCICAP(t)
	port, err := enginetest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, "[options]\nserver = [\"icap://127.0.0.1:"+itoa(port)+"/echo\", \""+c.url("srv_cfg_filter")+"\"]\n")
	for i := range 2 {
		v, err := servicetest.EndOfMessage(t, s, newTx(t, msgBlock))
		if err != nil || v.Kind != opes.Reject {
			t.Fatalf("attempt %d: %+v, %v; want the second server's block", i, v, err)
		}
	}
	if d := s.client.servers[0].downUntil; d.IsZero() || s.client.servers[1].downUntil != (time.Time{}) {
		t.Errorf("down marks: %v %v", d, s.client.servers[1].downUntil)
	}
	// A server answering garbage is passed over too.
	garbage := startPeer(t, peerOptions, func(int, *peerRequest) string { return "ICAP/1.0 503 Overloaded\r\n\r\n" })
	s = mustNew(t, "[options]\nserver = [\""+garbage.url()+"\", \""+c.url("srv_cfg_filter")+"\"]\n")
	if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgBlock)); err != nil || v.Kind != opes.Reject {
		t.Errorf("after a 503: %+v, %v; want the second server's block", v, err)
	}
	// When every server fails, the error names each.
	s = mustNew(t, "[options]\nserver = [\"icap://127.0.0.1:"+itoa(port)+"/echo\", \""+garbage.url()+"\"]\n")
	_, err = servicetest.EndOfMessage(t, s, newTx(t, msgClean))
	if err == nil || !strings.Contains(err.Error(), "all 2 ICAP servers failed") || !strings.Contains(err.Error(), "connect") ||
		!strings.Contains(err.Error(), "ICAP status 503 Overloaded") {
		t.Errorf("all down: %v", err)
	}
}

// hangingListener accepts connections and never answers; it reads
// everything so the client's writes complete.
func hangingListener(t *testing.T) string {
	t.Helper()
	p := startPeer(t, "", func(int, *peerRequest) string { return "" })
	return p.url()
}

// TestTimeout: a server that never answers (OPTIONS or the request)
// fails with a deadline error within the timeout.
func TestTimeout(t *testing.T) {
	silentAfterOptions := startPeer(t, peerOptions, func(int, *peerRequest) string { return "" })
	for name, url := range map[string]string{"no answer at all": hangingListener(t), "no answer to REQMOD": silentAfterOptions.url()} {
		t.Run(name, func(t *testing.T) {
			s := mustNew(t, opts(url, `timeout = "300ms"`))
			for _, m := range []message{msgClean, {header: baseHeader, body: strings.Repeat("y", 4<<20)}} {
				tx := newTx(t, m)
				began := time.Now()
				v, err := servicetest.EndOfMessage(t, s, tx)
				took := time.Since(began)
				if err == nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("%+v, %v; want a deadline error", v, err)
				}
				if took < 250*time.Millisecond || took > 2*time.Second {
					t.Errorf("failed after %s, want about 300ms", took)
				}
			}
		})
	}
	// The caller's deadline (the milter's budget) counts too.
	s := mustNew(t, opts(hangingListener(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stx := s.Begin(newTx(t, msgClean))
	defer stx.Close()
	began := time.Now()
	if _, err := stx.EndOfMessage(ctx); !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > time.Second {
		t.Errorf("caller deadline: %v after %s", err, time.Since(began))
	}
}

// TestGarbage: answers that are not ICAP, or not what was asked, are
// errors, never "clean".
func TestGarbage(t *testing.T) {
	hdr := "POST /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
	tests := []struct {
		name, options, answer, err string
	}{
		{"binary", peerOptions, "\x00\x01\x02\xff\r\n\r\n", "not ICAP/1.x"},
		{"HTTP instead of ICAP", peerOptions, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "not ICAP/1.x"},
		{"ICAP 500", peerOptions, "ICAP/1.0 500 Server Error\r\nEncapsulated: null-body=0\r\n\r\n", "ICAP status 500 Server Error"},
		{"ICAP 404", peerOptions, "ICAP/1.0 404 Service Not Found\r\n\r\n", "ICAP status 404"},
		{"no Encapsulated", peerOptions, "ICAP/1.0 200 OK\r\n\r\n", "no Encapsulated header"},
		{"null-body only", peerOptions, "ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\n\r\n", "without an encapsulated message"},
		{"bad offsets", peerOptions, "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=5\r\n\r\nPOST / HTTP/1.1\r\n\r\n", "encapsulated req-hdr"},
		{"truncated body", peerOptions, "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=" + itoa(len(hdr)) + "\r\n\r\n" + hdr + "ff\r\nFrom: x\r\n", "unexpected EOF"},
		{"bad chunk size", peerOptions, "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=" + itoa(len(hdr)) + "\r\n\r\n" + hdr + "zz\r\n\r\n", "bad chunk size"},
		{"100 after ieof", "ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nPreview: 4096\r\nEncapsulated: null-body=0\r\n\r\n", "ICAP/1.0 100 Continue\r\n\r\n", "100 Continue after a preview marked ieof"},
		{"100 without preview", peerOptions, "ICAP/1.0 100 Continue\r\n\r\n", "100 Continue where no preview"},
		{"bad returned header", peerOptions, reqmodAnswer("no colon here\r\n\r\nbody\r\n"), "has no colon"},
		{"invalid returned field", peerOptions, reqmodAnswer("Subject: a\x01b\r\n\r\nbody\r\n"), "control byte"},
		{"OPTIONS garbage", "SSH-2.0-OpenSSH\r\n\r\n", answer204, "OPTIONS"},
		{"OPTIONS 404", "ICAP/1.0 404 Not Found\r\n\r\n", answer204, "OPTIONS answered 404"},
		{"no REQMOD", "ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nEncapsulated: null-body=0\r\n\r\n", answer204, "does not offer REQMOD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPeer(t, tt.options, func(int, *peerRequest) string { return tt.answer })
			p.closeAfter.Store(true) // a truncated answer ends with the connection
			began := time.Now()
			v, err := servicetest.EndOfMessage(t, mustNew(t, opts(p.url(), `timeout = "5s"`)), newTx(t, msgClean))
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%+v, %v; want an error mentioning %q", v, err, tt.err)
			}
			if took := time.Since(began); took > 2*time.Second {
				t.Errorf("the error took %s", took)
			}
		})
	}
}

// TestOptionsCache: OPTIONS is asked once per Options-TTL; connections
// are reused; a pooled connection the server closed is replaced.
func TestOptionsCache(t *testing.T) {
	for _, tt := range []struct {
		name       string
		options    string
		closeAfter bool
		wantOpts   int32
		wantConns  int32
	}{
		{"ttl 3600", peerOptions, false, 1, 1},
		{"ttl 0", strings.Replace(peerOptions, "Options-TTL: 3600", "Options-TTL: 0", 1), false, 3, 1},
		{"server closes idle connections", peerOptions, true, 1, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startPeer(t, tt.options, func(int, *peerRequest) string { return answer204 })
			p.closeAfter.Store(tt.closeAfter)
			s := mustNew(t, opts(p.url()))
			for i := range 3 {
				if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean)); err != nil || v.Action != "analyzed" {
					t.Fatalf("request %d: %+v, %v", i, v, err)
				}
			}
			if p.options.Load() != tt.wantOpts || p.requests.Load() != 3 || p.accepts.Load() != tt.wantConns {
				t.Errorf("OPTIONS %d, requests %d, connections %d; want %d, 3, %d",
					p.options.Load(), p.requests.Load(), p.accepts.Load(), tt.wantOpts, tt.wantConns)
			}
		})
	}
	// Transfer-Ignore: * — the server wants nothing: skipped.
	p := startPeer(t, strings.Replace(peerOptions, "Allow: 204", "Transfer-Ignore: *", 1), func(int, *peerRequest) string { return answer204 })
	v, err := servicetest.EndOfMessage(t, mustNew(t, opts(p.url())), newTx(t, msgClean))
	if err != nil || v.Status != "skipped" || p.requests.Load() != 0 {
		t.Errorf("Transfer-Ignore: %+v, %v, %d requests", v, err, p.requests.Load())
	}
}

// TestPreview: the preview the server asks for is sent with the right
// end marker, and a server's final answer after the preview is used.
func TestPreview(t *testing.T) {
	opt := "ICAP/1.0 200 OK\r\nMethods: REQMOD\r\nPreview: 20\r\nTransfer-Preview: *\r\nEncapsulated: null-body=0\r\n\r\n"
	got := make(chan string, 4)
	p := startPeer(t, opt, func(_ int, r *peerRequest) string {
		got <- r.header + "|" + string(r.body)
		return answer204
	})
	for _, tt := range []struct {
		cfg, preview string
		size         int
	}{
		{"", "Preview: 20", 20},
		{"preview = 5", "Preview: 5", 5},
		{"preview = 0", "", -1},
	} {
		s := mustNew(t, opts(p.url(), tt.cfg))
		if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean)); err != nil || v.Action != "analyzed" {
			t.Fatalf("%q: %+v, %v", tt.cfg, v, err)
		}
		r := <-got
		head, body, _ := strings.Cut(r, "|")
		if tt.preview == "" {
			if strings.Contains(head, "Preview") || len(body) < 100 {
				t.Errorf("%q: header %q, %d octets; want no preview, the whole message", tt.cfg, head, len(body))
			}
			continue
		}
		if !strings.Contains(head, tt.preview+"\r\n") || len(body) != tt.size {
			t.Errorf("%q: header %q, body %d octets; want %s and %d octets", tt.cfg, head, len(body), tt.preview, tt.size)
		}
	}
}

// TestLargeMessage streams a 20 MB spooled message through c-icap's echo
// without preview, so that all of it goes out and comes back while the
// adapter writes and reads at once; it is compared, found unchanged, and
// never held in memory.
func TestLargeMessage(t *testing.T) {
	c := needCICAP(t)
	const size = 20 << 20
	tx := servicetest.NewTransaction(t, baseHeader, "")
	line := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2) + "\r\n")
	chunk := bytes.Repeat(line, (64<<10)/len(line))
	for tx.Size() < size {
		if _, err := tx.Body.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	s := mustNew(t, opts(c.url("echo"), "preview = 0", "max_size = "+itoa(64<<20), `timeout = "60s"`))
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	began := time.Now()
	v, err := servicetest.EndOfMessage(t, s, tx)
	took := time.Since(began)
	runtime.ReadMemStats(&m1)
	if err != nil || v.Action != "analyzed" {
		t.Fatalf("verdict %+v, %v", v, err)
	}
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("%d MB out and back in %s, %d KiB allocated", tx.Size()>>20, took.Round(time.Millisecond), alloc>>10)
	if alloc > 8<<20 {
		t.Errorf("exchange allocated %d KiB: the message was buffered", alloc>>10)
	}
}

// process runs one message through a processor whose only service is s.
func process(t *testing.T, s *Service, m message) *opes.Outcome {
	t.Helper()
	return processSpec(t, &opes.ServiceSpec{Name: "icap", Kind: "icap", URI: sysURI + "svc/icap", Impl: s}, m)
}

func processSpec(t *testing.T, spec *opes.ServiceSpec, m message) *opes.Outcome {
	t.Helper()
	p := servicetest.NewProcessor(t, sysURI, opes.StageMail, servicetest.SpoolingLimits(t), spec)
	return servicetest.Deliver(t, p, m.header, m.body)
}

// delivered is the message the MTA would deliver after the outcome.
func delivered(t *testing.T, m message, o *opes.Outcome) string {
	t.Helper()
	var fields []opes.HeaderField
	for _, f := range m.header {
		fields = append(fields, opes.HeaderField{Name: f[0], Value: f[1]})
	}
	body := servicetest.DeliveredBody(t, o, m.body)
	return opes.FormatHeader(opes.ApplyChanges(fields, o.HeaderChanges)) + "\r\n" + body
}

func hasChange(o *opes.Outcome, name, value string) bool {
	for _, c := range o.HeaderChanges {
		if strings.EqualFold(c.Name, name) && strings.Contains(c.Value, value) {
			return true
		}
	}
	return false
}

// TestProcessor runs the adapter in the real pipeline against c-icap and
// checks the trace and the message as the MTA will deliver it.
func TestProcessor(t *testing.T) {
	c := needCICAP(t)
	for _, mode := range []string{"reqmod", "respmod"} {
		t.Run(mode+"/echo analyzed", func(t *testing.T) {
			o := process(t, mustNew(t, opts(c.url("echo"), `mode = "`+mode+`"`)), msgClean)
			if o.Kind != opes.Continue || o.Body != nil || len(o.HeaderChanges) != 2 {
				t.Fatalf("outcome %+v, want a delivery with the trace only", o)
			}
			if !hasChange(o, "OPES-Via", "svc/icap; action=analyzed") {
				t.Errorf("trace: %+v", o.HeaderChanges)
			}
		})
		t.Run(mode+"/content filter modified", func(t *testing.T) {
			o := process(t, mustNew(t, opts(c.url("srv_cfg_filter"), `mode = "`+mode+`"`)), msgSecret)
			if o.Kind != opes.Continue || o.Body == nil {
				t.Fatalf("outcome %+v, want a delivery with a new body", o)
			}
			if !hasChange(o, "OPES-Via", "svc/icap; action=modified") {
				t.Errorf("trace: %+v", o.HeaderChanges)
			}
			out := delivered(t, msgSecret, o)
			m, err := mail.ReadMessage(strings.NewReader(out))
			if err != nil {
				t.Fatalf("delivered message does not parse: %v\n%s", err, out)
			}
			body, _ := io.ReadAll(m.Body)
			if got := m.Header.Get("Subject"); got != "code "+redacted {
				t.Errorf("Subject %q", got)
			}
			if want := "Hello,\r\nthe code is " + redacted + ", keep it.\r\nBye\r\n"; string(body) != want {
				t.Errorf("body %q, want %q", body, want)
			}
			if m.Header.Get("From") != "a@example.net" || m.Header.Get("Message-ID") != "<1@example.net>" ||
				!strings.Contains(m.Header.Get("OPES-System"), "id=4XyZ1Q") {
				t.Errorf("header damaged:\n%s", out)
			}
		})
		t.Run(mode+"/content filter rejected", func(t *testing.T) {
			o := process(t, mustNew(t, opts(c.url("srv_cfg_filter"), `mode = "`+mode+`"`)), msgBlock)
			if o.Kind != opes.Reject || o.Reply == nil {
				t.Fatalf("outcome %+v, want reject", o)
			}
			for _, w := range []string{"554-5.7.1 Message refused by content filter: blocked: Forbidden score=10>5\r\n", "svc/icap; action=rejected; bypassable=no"} {
				if !strings.Contains(o.Reply.String(), w) {
					t.Errorf("reply lacks %q:\n%s", w, o.Reply)
				}
			}
		})
		t.Run(mode+"/virus quarantined", func(t *testing.T) {
			o := process(t, mustNew(t, opts(c.url("virus_scan"), `mode = "`+mode+`"`, `on_block = "quarantine"`)), msgEicar)
			if o.Kind != opes.Continue || o.Quarantine != "infection found: "+enginetest.EicarSig {
				t.Fatalf("outcome %v quarantine %q", o.Kind, o.Quarantine)
			}
			if !hasChange(o, "OPES-Via", "svc/icap; action=quarantined") {
				t.Errorf("trace: %+v", o.HeaderChanges)
			}
		})
	}
	t.Run("server down tempfails", func(t *testing.T) {
		port, _ := enginetest.FreePort()
		o := process(t, mustNew(t, opts("icap://127.0.0.1:"+itoa(port)+"/echo")), msgClean)
		if o.Kind != opes.TempFail || o.Reply == nil || !strings.Contains(o.Reply.String(), "451-4.3.0 ") ||
			!strings.Contains(o.Reply.String(), "svc/icap; action=analyzed; status=failed; bypassable=no") {
			t.Fatalf("outcome %+v reply %v, want 451 4.3.0 with status=failed", o, o.Reply)
		}
	})
	t.Run("hanging server, optional service", func(t *testing.T) {
		spec := &opes.ServiceSpec{Name: "icap", Kind: "icap", URI: sysURI + "svc/icap", Bypassable: true,
			OnError: opes.OnErrorContinue, Impl: mustNew(t, opts(hangingListener(t), `timeout = "300ms"`))}
		o := processSpec(t, spec, msgClean)
		if o.Kind != opes.Continue || o.Body != nil || !hasChange(o, "OPES-Via", "svc/icap; action=analyzed; status=timeout") {
			t.Fatalf("outcome %+v, want a delivery traced status=timeout", o)
		}
	})
	t.Run("header only modified", func(t *testing.T) {
		m := message{header: withSubject("about secret-7"), body: "nothing secret here\r\n"}
		o := process(t, mustNew(t, opts(c.url("srv_cfg_filter"))), m)
		if o.Kind != opes.Continue || o.Body != nil || !hasChange(o, "Subject", "about "+redacted) ||
			!hasChange(o, "OPES-Via", "svc/icap; action=modified") {
			t.Fatalf("outcome %+v, want the Subject changed and the body kept", o)
		}
	})
	t.Run("large message modified", func(t *testing.T) {
		// 5 MB, the secret at the very end: the replaced body is
		// streamed from c-icap into the processor's spool.
		body := strings.Repeat("The quick brown fox jumps over the lazy dog.\r\n", 5<<20/46) + "end secret-99\r\n"
		m := message{header: baseHeader, body: body}
		o := process(t, mustNew(t, opts(c.url("srv_cfg_filter"), `timeout = "60s"`)), m)
		if o.Kind != opes.Continue || o.Body == nil {
			t.Fatalf("outcome %+v, want a new body", o)
		}
		got, err := io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSuffix(body, "secret-99\r\n") + redacted + "\r\n"; string(got) != want {
			t.Errorf("body of %d octets, want %d ending in %q; ends %q", len(got), len(want), redacted, got[max(0, len(got)-40):])
		}
	})
	t.Run("oversize skipped", func(t *testing.T) {
		o := process(t, mustNew(t, opts(c.url("srv_cfg_filter"), "max_size = 50")), msgSecret)
		if o.Kind != opes.Continue || o.Body != nil || !hasChange(o, "OPES-Via", "svc/icap; action=analyzed; status=skipped") {
			t.Fatalf("outcome %+v, want a delivery traced status=skipped", o)
		}
	})
}

// TestHeaderMapping: a server that rewrites the header — adds, deletes,
// changes one of several same-name fields, re-folds, and tampers with
// the trace — seen in the delivered message.
func TestHeaderMapping(t *testing.T) {
	m := message{
		header: [][2]string{
			{"Received", " from a by b; Mon, 1 Jan 2024 00:00:00 +0000"},
			{"Received", " from c by d; Mon, 1 Jan 2024 00:00:00 +0000"},
			{"From", " a@example.net"},
			{"Subject", " a long\r\n subject"},
			{"X-Spam", " old"},
			{"X-Drop", " me"},
		},
		body: "same body\r\n",
	}
	answer := "OPES-System: https://evil.example/; id=1\r\n" + // tampered trace, ignored
		"OPES-Via: https://evil.example/\r\n" + // added trace, ignored
		"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"Received: from c by d; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"Received: from icap by icap; Mon, 1 Jan 2024 00:00:01 +0000\r\n" + // appended to its name
		"From: a@example.net\r\n" +
		"Subject: a long subject\r\n" + // only re-folded: unchanged
		"X-Spam: new\r\n" + // changed in place
		"X-Scanned: yes\r\n" + // new
		"\r\n" + "same body\r\n"
	p := startPeer(t, peerOptions, func(int, *peerRequest) string { return reqmodAnswer(answer) })
	o := process(t, mustNew(t, opts(p.url())), m)
	if o.Kind != opes.Continue || o.Body != nil {
		t.Fatalf("outcome %+v, want header changes only", o)
	}
	out := delivered(t, m, o)
	want := "OPES-System: " + sysURI + "; id=4XyZ1Q\r\n" +
		"OPES-Via: " + sysURI + "; id=4XyZ1Q,\r\n\t" + sysURI + "svc/icap; action=modified\r\n" +
		"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"Received: from c by d; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"From: a@example.net\r\n" +
		"Subject: a long\r\n subject\r\n" +
		"X-Spam: new\r\n" +
		"Received: from icap by icap; Mon, 1 Jan 2024 00:00:01 +0000\r\n" +
		"X-Scanned: yes\r\n" +
		"\r\nsame body\r\n"
	if out != want {
		t.Errorf("delivered:\n%s\nwant:\n%s", out, want)
	}
}

func TestDiffHeader(t *testing.T) {
	f := func(kv ...string) []opes.HeaderField {
		var out []opes.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, opes.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	g := func(kv ...string) []returnedField {
		var out []returnedField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, returnedField{name: kv[i], value: kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name string
		sent []opes.HeaderField
		got  []returnedField
		want []headerOp
	}{
		{"same", f("A", " 1", "B", " 2"), g("A", " 1", "B", " 2"), nil},
		{"refolded", f("A", " x\r\n y"), g("A", " x y"), nil},
		{"name case", f("Subject", " x"), g("subject", " x"), nil},
		{"order of names", f("A", " 1", "B", " 2"), g("B", " 2", "A", " 1"), nil},
		{"changed", f("A", " 1"), g("A", " 2"), []headerOp{{'s', "A", " 2", 0}}},
		{"added", f("A", " 1"), g("A", " 1", "N", " v"), []headerOp{{'a', "N", " v", 0}}},
		{"appended same name", f("R", " 1"), g("R", " 1", "R", " 2"), []headerOp{{'a', "R", " 2", 0}}},
		{"prepended same name", f("R", " 1", "R", " 2"), g("R", " 0", "R", " 1", "R", " 2"), []headerOp{{'a', "R", " 0", 0}}},
		{"deleted", f("A", " 1", "D", " x", "D", " y"), g("A", " 1"), []headerOp{{'d', "D", "", 0}}},
		{"second of two changed in place", f("R", " 1", "R", " 2"), g("R", " 1", "R", " 3"), []headerOp{{'n', "R", " 3", 2}}},
		{"one of three dropped", f("R", " 1", "R", " 2", "R", " 3"), g("R", " 1", "R", " 3"), []headerOp{{'d', "R", "", 0}, {'a', "R", " 1", 0}, {'a', "R", " 3", 0}}},
		{"trace ignored", f("OPES-System", " a", "A", " 1"), g("OPES-Via", " x", "A", " 1"), nil},
	}
	for _, tt := range tests {
		got := diffHeader(tt.sent, tt.got)
		if len(got) != len(tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
			}
		}
	}
}

// TestReadMessageHeader covers the returned message's header parser.
func TestReadMessageHeader(t *testing.T) {
	tests := []struct {
		in, rest string
		n        int
		err      string
	}{
		{"A: 1\r\nB: 2\r\n\r\nbody", "body", 2, ""},
		{"A: 1\nB: 2\n folded\n\nbody\n", "body\n", 2, ""},
		{"A: 1\r\n", "", 1, ""},
		{"A: 1", "", 1, ""},
		{"\r\nbody", "body", 0, ""},
		{" leading\r\n\r\n", "", 0, "continuation"},
		{"no colon\r\n\r\n", "", 0, "no colon"},
		{"A: " + strings.Repeat("x", 70<<10) + "\r\n\r\n", "", 0, "longer than"},
	}
	for _, tt := range tests {
		br := bufioReader(tt.in)
		fields, err := readMessageHeader(br)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %v, want %q", clip(tt.in), err, tt.err)
			}
			continue
		}
		rest, _ := io.ReadAll(br)
		if err != nil || len(fields) != tt.n || string(rest) != tt.rest {
			t.Errorf("%q: %d fields, rest %q, %v; want %d, %q", tt.in, len(fields), rest, err, tt.n, tt.rest)
		}
	}
}

func TestCRLFWriter(t *testing.T) {
	var b bytes.Buffer
	w := &crlfWriter{w: &b}
	for _, p := range []string{"a\nb\r", "\nc\r\n", "\n"} {
		_, _ = w.Write([]byte(p))
	}
	if b.String() != "a\r\nb\r\nc\r\n\r\n" {
		t.Errorf("%q", b.String())
	}
}

// TestReplacedPage: a filter that puts a notice page of its own in place
// of the message (status 200, text/html) has blocked it; the page never
// becomes the mail.
func TestReplacedPage(t *testing.T) {
	page := "<html><body>Blocked by policy</body></html>"
	for _, mode := range []string{"reqmod", "respmod"} {
		p := startPeer(t, peerOptions, func(int, *peerRequest) string {
			var hdr, enc string
			if mode == "reqmod" {
				hdr = "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/html\r\n\r\n"
				enc = "req-hdr=0, req-body="
			} else {
				hdr = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
				enc = "res-hdr=0, res-body="
			}
			return "ICAP/1.0 200 OK\r\nEncapsulated: " + enc + itoa(len(hdr)) + "\r\n\r\n" + hdr +
				strconv.FormatInt(int64(len(page)), 16) + "\r\n" + page + "\r\n0\r\n\r\n"
		})
		v, err := servicetest.EndOfMessage(t, mustNew(t, opts(p.url(), `mode = "`+mode+`"`)), newTx(t, msgClean))
		if err != nil || v.Kind != opes.Reject || !strings.HasPrefix(v.Reason, "blocked: message replaced by text/html") {
			t.Errorf("%s: %+v, %v; want a block", mode, v, err)
		}
	}
}

// TestEarlyAnswer: a server that answers after the ICAP header, without
// reading the 32 MB message, and then neither reads nor closes: the
// adapter takes the answer and does not wait for its own writes until
// the timeout.
func TestEarlyAnswer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				method, err := readPeerHead(br)
				if err == nil && method == "OPTIONS" {
					_, _ = io.WriteString(c, peerOptions)
					method, err = readPeerHead(br) // the REQMOD's ICAP header, nothing more
				}
				if err != nil || method != "REQMOD" {
					return
				}
				hdr := "HTTP/1.1 403 Forbidden\r\n\r\n"
				_, _ = io.WriteString(c, "ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2; Threat=Early;\r\nEncapsulated: res-hdr=0, null-body="+itoa(len(hdr))+"\r\n\r\n"+hdr)
				<-done
			}()
		}
	}()
	m := message{header: baseHeader, body: strings.Repeat("z", 32<<20)}
	s := mustNew(t, opts("icap://"+l.Addr().String()+"/svc", `timeout = "10s"`, "max_size = "+itoa(64<<20)))
	tx := newTx(t, m)
	began := time.Now()
	v, err := servicetest.EndOfMessage(t, s, tx)
	if err != nil || v.Kind != opes.Reject || v.Reason != "infection found: Early" {
		t.Fatalf("%+v, %v; want the early block", v, err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("took %s: the adapter waited for its writes", took)
	}
}

// readPeerHead reads an ICAP request line and header only.
func readPeerHead(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if l == "\r\n" {
			return strings.Fields(line)[0], nil
		}
	}
}

// BenchmarkEcho is one small message through c-icap's echo service, on a
// pooled connection (OPTIONS cached).
func BenchmarkEcho(b *testing.B) {
	c := needCICAP(b)
	s := mustNew(b, opts(c.url("echo")))
	tx := servicetest.NewTransaction(b, msgClean.header, msgClean.body)
	for b.Loop() {
		stx := s.Begin(tx)
		if _, err := stx.EndOfMessage(context.Background()); err != nil {
			b.Fatal(err)
		}
		stx.Close()
	}
}
