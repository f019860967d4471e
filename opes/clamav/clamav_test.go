package clamav

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/internal/scanheader"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.example.net/opes/"

func mustNew(t *testing.T, src string) *Service {
	t.Helper()
	return servicetest.MustNew(t, New, src).(*Service)
}

func opts(socket string, extra ...string) string {
	return "[options]\nsocket = \"" + socket + "\"\n" + strings.Join(extra, "\n") + "\n"
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
	{"Subject", " test"},
	{"Message-ID", " <1@example.net>"},
}

func mimeMessage(attachment []byte) message {
	h, body := servicetest.WithAttachment(baseHeader, attachment)
	return message{header: h, body: body}
}

var (
	msgClean = message{header: baseHeader, body: "Hello,\r\nnothing to see here.\r\n"}
	msgToken = message{header: baseHeader, body: "Hello,\r\nthe body carries " + token + " in plain text.\r\n"}
	msgEicar = mimeMessage([]byte(eicar))
)

func newTx(t *testing.T, m message) *opes.Transaction {
	t.Helper()
	return servicetest.NewTransaction(t, m.header, m.body)
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name, src, field, msg string
	}{
		{"no socket", "[options]\n", "socket", "is required"},
		{"socket without type", opts("/run/clamav/clamd.ctl"), "socket", `want "unix:/path" or "tcp:host:port"`},
		{"unknown type", opts("udp:127.0.0.1:3310"), "socket", "unknown type"},
		{"relative unix path", opts("unix:clamd.ctl"), "socket", "must be absolute"},
		{"tcp without port", opts("tcp:127.0.0.1"), "socket", `want "tcp:host:port"`},
		{"bad timeout", opts("tcp:127.0.0.1:3310", `timeout = "30"`), "timeout", "not a duration"},
		{"zero timeout", opts("tcp:127.0.0.1:3310", `timeout = "0s"`), "timeout", "not between"},
		{"huge timeout", opts("tcp:127.0.0.1:3310", `timeout = "30m"`), "timeout", "not between"},
		{"bad connect timeout", opts("tcp:127.0.0.1:3310", `connect_timeout = "-1s"`), "connect_timeout", "not between"},
		{"bad action", opts("tcp:127.0.0.1:3310", `action = "discard"`), "action", "want reject, quarantine or tag"},
		{"negative size", opts("tcp:127.0.0.1:3310", `max_scan_size = -1`), "max_scan_size", "negative"},
		{"bad oversize", opts("tcp:127.0.0.1:3310", `oversize = "accept"`), "oversize", "want reject, tempfail or skip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nsocket = 5\n", "clamav")
}

func TestDefaults(t *testing.T) {
	s := mustNew(t, opts("unix:/run/clamav/clamd.ctl"))
	if s.timeout != DefaultTimeout || s.maxSize != DefaultMaxScanSize || s.action != actReject || s.oversize != overReject ||
		s.client.connectTimeout != DefaultConnectTimeout || s.client.network != "unix" || s.client.addr != "/run/clamav/clamd.ctl" {
		t.Errorf("defaults: %+v client %+v", s, s.client)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if got := s.Needs(); got != want {
		t.Errorf("Needs = %+v, want %+v", got, want)
	}
}

func TestParseScanReply(t *testing.T) {
	tests := []struct {
		reply string
		want  Result
		err   string
	}{
		{"stream: OK", Result{}, ""},
		{"stream: Win.Test.EICAR_HDB-1 FOUND", Result{Infected: true, Signature: "Win.Test.EICAR_HDB-1"}, ""},
		{"stream:  FOUND", Result{}, "names no signature"},
		{"INSTREAM size limit exceeded. ERROR", Result{}, "size limit exceeded"},
		{"stream: Can't allocate memory ERROR", Result{}, "clamd error"},
		{"UNKNOWN COMMAND", Result{}, "unexpected clamd reply"},
		{"", Result{}, "unexpected clamd reply"},
	}
	for _, tt := range tests {
		got, err := parseScanReply(tt.reply)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("parseScanReply(%q) = %+v, %v; want %+v, %q", tt.reply, got, err, tt.want, tt.err)
		}
	}
}

func TestSanitizeSignature(t *testing.T) {
	for in, want := range map[string]string{
		"Win.Test.EICAR_HDB-1":       "Win.Test.EICAR_HDB-1",
		"Evil\r\n554 5.7.1 injected": "Evil??554 5.7.1 injected",
		"Vírus\x00":                  "V??rus?",
		"":                           "unknown",
		" \t ":                       "?",
		strings.Repeat("A", 300):     strings.Repeat("A", maxSignature),
		"  Padded.Name  ":            "Padded.Name",
	} {
		if got := SanitizeSignature(in); got != want {
			t.Errorf("SanitizeSignature(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestClient talks to the real clamd over both socket types.
func TestClient(t *testing.T) {
	for _, socket := range []string{shared.Unix(), shared.TCP()} {
		t.Run(strings.Split(socket, ":")[0], func(t *testing.T) {
			c, err := NewClient(socket)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Ping(ctx); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			for _, tt := range []struct {
				name, data string
				want       Result
			}{
				{"eicar file", eicar, Result{Infected: true, Signature: eicarSig}},
				{"token", "xx " + token + " xx\n", Result{Infected: true, Signature: tokenSig}},
				{"clean", "nothing\n", Result{}},
				{"empty", "", Result{}},
			} {
				got, err := c.Scan(ctx, strings.NewReader(tt.data))
				if err != nil || got != tt.want {
					t.Errorf("%s: Scan = %+v, %v; want %+v", tt.name, got, err, tt.want)
				}
			}
		})
	}
}

// TestEndOfMessage runs every action on a virus and a clean message.
func TestEndOfMessage(t *testing.T) {
	tests := []struct {
		name   string
		action string
		msg    message
		want   opes.Verdict
		field  string // X-Virus value expected; "" for none
	}{
		{"eicar attachment, reject", "", msgEicar, opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "virus " + eicarSig,
			Reply: opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Virus found: " + eicarSig}}, ""},
		{"token in body, reject", "reject", msgToken, opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "virus " + tokenSig,
			Reply: opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Virus found: " + tokenSig}}, ""},
		{"eicar attachment, quarantine", "quarantine", msgEicar, opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: "virus " + eicarSig}, ""},
		{"token in body, tag", "tag", msgToken, opes.Verdict{Kind: opes.Continue, Action: "header-added", Reason: "virus " + tokenSig}, tokenSig},
		{"clean, reject", "reject", msgClean, opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, ""},
		{"clean, tag", "tag", msgClean, opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, ""},
		{"clean MIME, quarantine", "quarantine", mimeMessage([]byte("just a file\n")), opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, ""},
	}
	for _, socket := range []string{shared.Unix(), shared.TCP()} {
		for _, tt := range tests {
			t.Run(strings.Split(socket, ":")[0]+"/"+tt.name, func(t *testing.T) {
				s := mustNew(t, opts(socket, `action = "`+tt.action+`"`))
				tx := newTx(t, tt.msg)
				before := tx.Header.Len()
				v, err := servicetest.EndOfMessage(t, s, tx)
				if err != nil {
					t.Fatal(err)
				}
				if v != tt.want {
					t.Errorf("verdict = %+v, want %+v", v, tt.want)
				}
				got := tx.Header.Values(VirusField)
				switch {
				case tt.field == "" && tx.Header.Len() != before:
					t.Errorf("header changed: %v", tx.Header.Fields())
				case tt.field != "" && (len(got) != 1 || got[0] != tt.field):
					t.Errorf("%s = %q, want %q", VirusField, got, tt.field)
				}
			})
		}
	}
}

// TestHeaderIsScanned: the token in a header field alone is found, so
// the header really is part of the stream.
func TestHeaderIsScanned(t *testing.T) {
	m := message{header: append(append([][2]string{}, baseHeader...), [2]string{"X-Note", " " + token}), body: "clean\r\n"}
	v, err := servicetest.EndOfMessage(t, mustNew(t, opts(shared.Unix())), newTx(t, m))
	if err != nil || v.Kind != opes.Reject || v.Reason != "virus "+tokenSig {
		t.Errorf("verdict = %+v, %v; want reject for %s", v, err, tokenSig)
	}
}

// TestOversize: a message above max_scan_size is never sent to clamd;
// oversize decides.
func TestOversize(t *testing.T) {
	tests := []struct {
		oversize string
		want     opes.Verdict
	}{
		{"", opes.Verdict{Kind: opes.Reject, Action: "rejected", Reply: opes.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message too big to scan for viruses"}}},
		{"reject", opes.Verdict{Kind: opes.Reject, Action: "rejected", Reply: opes.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message too big to scan for viruses"}}},
		{"tempfail", opes.Verdict{Kind: opes.TempFail, Action: "rejected", Reply: opes.Reply{Code: 452, Enhanced: "4.3.4", Text: "Message too big to scan for viruses, try again later"}}},
		{"skip", opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped"}},
	}
	for _, tt := range tests {
		t.Run("oversize="+tt.oversize, func(t *testing.T) {
			// The socket leads nowhere: an oversize message must not
			// need clamd at all.
			s := mustNew(t, opts("unix:"+filepath.Join(t.TempDir(), "none.sock"), "max_scan_size = 1000", `oversize = "`+tt.oversize+`"`))
			tx := newTx(t, message{header: baseHeader, body: strings.Repeat("x", 1000) + "\r\n" + token + "\r\n"})
			v, err := servicetest.EndOfMessage(t, s, tx)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(v.Reason, "larger than max_scan_size 1000") {
				t.Errorf("reason %q does not explain the size", v.Reason)
			}
			v.Reason = ""
			if v != tt.want {
				t.Errorf("verdict = %+v, want %+v", v, tt.want)
			}
		})
	}
	// At the limit exactly, the message is scanned.
	tx := newTx(t, msgToken)
	size := int64(len(scanheader.Format(tx.Header.Fields()))) + tx.Size()
	s := mustNew(t, opts(shared.Unix(), "max_scan_size = "+itoa(size)))
	if v, err := servicetest.EndOfMessage(t, s, tx); err != nil || v.Kind != opes.Reject {
		t.Errorf("message of exactly max_scan_size: %+v, %v; want it scanned and rejected", v, err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestClamdStreamLimit: a clamd whose StreamMaxLength is below
// max_scan_size cuts the stream; that is the oversize case too, never
// "clean".
func TestClamdStreamLimit(t *testing.T) {
	small, err := startClamd(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer small.Stop()
	big := message{header: baseHeader, body: strings.Repeat("0123456789abcdef\r\n", 200_000)} // 3.6 MB
	for _, tt := range []struct {
		oversize string
		kind     opes.VerdictKind
	}{{"reject", opes.Reject}, {"skip", opes.Continue}} {
		s := mustNew(t, opts(small.Unix(), `oversize = "`+tt.oversize+`"`))
		v, err := servicetest.EndOfMessage(t, s, newTx(t, big))
		if err != nil {
			t.Fatalf("oversize=%s: %v", tt.oversize, err)
		}
		if v.Kind != tt.kind || !strings.Contains(v.Reason, "StreamMaxLength") {
			t.Errorf("oversize=%s: verdict %+v, want %v citing StreamMaxLength", tt.oversize, v, tt.kind)
		}
	}
	// The raw client reports it as ErrStreamTooLarge.
	c, _ := NewClient(small.TCP())
	if _, err := c.Scan(context.Background(), strings.NewReader(big.body)); !errors.Is(err, ErrStreamTooLarge) {
		t.Errorf("Scan over tcp: %v, want ErrStreamTooLarge", err)
	}
}

// killingReader kills clamd once the first chunk has been read, then
// keeps producing data, as a message would.
type killingReader struct {
	d     *enginetest.Clamd
	left  int
	fired bool
}

func (r *killingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if !r.fired && r.left < 4<<20 {
		r.fired = true
		r.d.Kill()
	}
	n := min(len(p), r.left)
	for i := range n {
		p[i] = 'a' + byte(i%26)
	}
	r.left -= n
	return n, nil
}

// TestClamdKilled: clamd dying in the middle of a scan is an error, and
// so is a clamd that is gone.
func TestClamdKilled(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			d, err := startClamd(streamMax)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Stop()
			socket := d.Unix()
			if network == "tcp" {
				socket = d.TCP()
			}
			c, _ := NewClient(socket)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			began := time.Now()
			res, err := c.Scan(ctx, &killingReader{d: d, left: 5 << 20})
			if err == nil {
				t.Fatalf("clamd killed mid-stream: Scan = %+v, nil; want an error", res)
			}
			if took := time.Since(began); took > 5*time.Second {
				t.Errorf("the failure took %s", took)
			}
			t.Logf("mid-stream: %v", err)
			// Through the service, with clamd gone: an error for
			// on_error, not a verdict.
			s := mustNew(t, opts(socket, `timeout = "2s"`))
			if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgEicar)); err == nil {
				t.Errorf("clamd gone: verdict %+v, want an error", v)
			}
			if err := s.Ping(context.Background()); err == nil {
				t.Error("Ping of a dead clamd succeeded")
			}
		})
	}
}

// silentServer accepts connections and never answers. If read is true it
// swallows everything sent, else it reads nothing, so the client's writes
// block once the socket buffers fill.
func silentServer(t *testing.T, network string, read bool) string {
	t.Helper()
	var l net.Listener
	var err error
	var spec string
	if network == "unix" {
		dir, derr := os.MkdirTemp("", "silent")
		if derr != nil {
			t.Fatal(derr)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		path := filepath.Join(dir, "s.sock")
		l, err = net.Listen("unix", path)
		spec = "unix:" + path
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			spec = "tcp:" + l.Addr().String()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if read {
					_, _ = io.Copy(io.Discard, conn)
				}
				<-done
			}()
		}
	}()
	return spec
}

// TestUnresponsive: a socket that never answers fails within timeout.
func TestUnresponsive(t *testing.T) {
	large := message{header: baseHeader, body: strings.Repeat("y", 8<<20)}
	for _, network := range []string{"unix", "tcp"} {
		for _, read := range []bool{true, false} {
			name := network + "/reads"
			if !read {
				name = network + "/never-reads"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				socket := silentServer(t, network, read)
				s := mustNew(t, opts(socket, `timeout = "300ms"`))
				for _, m := range []message{msgClean, large} {
					began := time.Now()
					v, err := servicetest.EndOfMessage(t, s, newTx(t, m))
					took := time.Since(began)
					if err == nil {
						t.Fatalf("verdict %+v, want a timeout error", v)
					}
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("error %v is not a deadline error", err)
					}
					if took < 250*time.Millisecond || took > 1500*time.Millisecond {
						t.Errorf("failed after %s, want about the 300ms timeout", took)
					}
				}
				began := time.Now()
				if err := s.Ping(context.Background()); err == nil || time.Since(began) > 1500*time.Millisecond {
					t.Errorf("Ping: %v after %s, want a timeout", err, time.Since(began))
				}
			})
		}
	}
	// The caller's context is respected too (the milter's EOM budget).
	s := mustNew(t, opts(silentServer(t, "unix", true)))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	stx := s.Begin(newTx(t, msgClean))
	defer stx.Close()
	if _, err := stx.EndOfMessage(ctx); err == nil || time.Since(began) > time.Second {
		t.Errorf("caller deadline: %v after %s", err, time.Since(began))
	}
}

// TestUnreachable: no clamd listening is an error at once.
func TestUnreachable(t *testing.T) {
	port, err := enginetest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	for _, socket := range []string{"unix:" + filepath.Join(t.TempDir(), "none.sock"), "tcp:127.0.0.1:" + itoa(int64(port))} {
		s := mustNew(t, opts(socket))
		if v, err := servicetest.EndOfMessage(t, s, newTx(t, msgClean)); err == nil || !strings.Contains(err.Error(), "connect via "+socket) {
			t.Errorf("%s: %+v, %v; want a connect error", socket, v, err)
		}
	}
}

// TestLargeMessage streams a 30 MB spooled message with the token at its
// very end: found (the whole stream was scanned), within the timeout,
// and without the message ever being copied into memory.
func TestLargeMessage(t *testing.T) {
	const size = 30 << 20
	tx := servicetest.NewTransaction(t, baseHeader, "")
	line := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2) + "\r\n")
	chunk := bytes.Repeat(line, (64<<10)/len(line))
	for tx.Size() < size {
		if _, err := tx.Body.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Body.Write([]byte(token + "\r\n")); err != nil {
		t.Fatal(err)
	}
	if !tx.Body.Spooled() {
		t.Fatal("body not spooled")
	}
	s := mustNew(t, opts(shared.Unix(), "max_scan_size = "+itoa(64<<20), `timeout = "20s"`))
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	began := time.Now()
	v, err := servicetest.EndOfMessage(t, s, tx)
	took := time.Since(began)
	runtime.ReadMemStats(&m1)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Reject || v.Reason != "virus "+tokenSig {
		t.Errorf("verdict %+v, want the token at the end found", v)
	}
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("%d MB scanned in %s, %d KiB allocated", tx.Size()>>20, took.Round(time.Millisecond), alloc>>10)
	if alloc > 4<<20 {
		t.Errorf("scan allocated %d KiB: the message was buffered", alloc>>10)
	}
}

// TestProcessor runs the service in the real pipeline.
func TestProcessor(t *testing.T) {
	run := func(t *testing.T, src string, m message) *opes.Outcome {
		t.Helper()
		spec := &opes.ServiceSpec{Name: "antivirus", Kind: "clamav", URI: sysURI + "svc/antivirus", Impl: mustNew(t, src)}
		p := servicetest.NewProcessor(t, sysURI, opes.StageMail, servicetest.SpoolingLimits(t), spec)
		return servicetest.Deliver(t, p, m.header, m.body)
	}
	wantReply := func(t *testing.T, o *opes.Outcome, want ...string) {
		t.Helper()
		if o.Reply == nil {
			t.Fatalf("outcome %+v has no reply", o)
		}
		r := o.Reply.String()
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("reply lacks %q:\n%s", w, r)
			}
		}
	}

	t.Run("virus rejected", func(t *testing.T) {
		o := run(t, opts(shared.Unix()), msgEicar)
		if o.Kind != opes.Reject {
			t.Fatalf("outcome %v, want reject", o.Kind)
		}
		wantReply(t, o, "554-5.7.1 Virus found: "+eicarSig+"\r\n", "554-5.7.1 ", "svc/antivirus; action=rejected; bypassable=no")
	})
	t.Run("MIME header without space after the colon", func(t *testing.T) {
		// Valid RFC 5322 that clamd alone would not decode: the service
		// must not let it hide the attachment.
		m := msgEicar
		m.header = nil
		for _, f := range msgEicar.header {
			m.header = append(m.header, [2]string{f[0], strings.TrimLeft(f[1], " ")})
		}
		o := run(t, opts(shared.Unix()), m)
		if o.Kind != opes.Reject {
			t.Fatalf("outcome %v, want reject", o.Kind)
		}
		wantReply(t, o, "Virus found: "+eicarSig)
	})
	t.Run("virus quarantined", func(t *testing.T) {
		o := run(t, opts(shared.TCP(), `action = "quarantine"`), msgToken)
		if o.Kind != opes.Continue || o.Quarantine != "virus "+tokenSig {
			t.Fatalf("outcome %v quarantine %q, want continue held as %q", o.Kind, o.Quarantine, "virus "+tokenSig)
		}
		if !hasChange(o, "OPES-Via", "svc/antivirus; action=quarantined") {
			t.Errorf("trace lacks the quarantine: %+v", o.HeaderChanges)
		}
	})
	t.Run("virus tagged", func(t *testing.T) {
		o := run(t, opts(shared.Unix(), `action = "tag"`), msgEicar)
		if o.Kind != opes.Continue || o.Quarantine != "" {
			t.Fatalf("outcome %v quarantine %q, want continue", o.Kind, o.Quarantine)
		}
		if !hasChange(o, VirusField, eicarSig) || !hasChange(o, "OPES-Via", "svc/antivirus; action=header-added") {
			t.Errorf("changes %+v lack %s or the trace", o.HeaderChanges, VirusField)
		}
	})
	t.Run("clean delivered", func(t *testing.T) {
		o := run(t, opts(shared.Unix()), msgClean)
		if o.Kind != opes.Continue || o.Quarantine != "" || hasChange(o, VirusField, "") {
			t.Fatalf("outcome %+v, want a plain delivery", o)
		}
		if !hasChange(o, "OPES-Via", "svc/antivirus; action=analyzed") {
			t.Errorf("trace lacks the scan: %+v", o.HeaderChanges)
		}
	})
	t.Run("clamd down tempfails", func(t *testing.T) {
		o := run(t, opts("unix:"+filepath.Join(t.TempDir(), "none.sock")), msgEicar)
		if o.Kind != opes.TempFail {
			t.Fatalf("outcome %v, want tempfail", o.Kind)
		}
		wantReply(t, o, "451-4.3.0 ", "svc/antivirus; action=analyzed; status=failed; bypassable=no")
	})
	t.Run("oversize rejected", func(t *testing.T) {
		o := run(t, opts(shared.Unix(), "max_scan_size = 100"), msgClean)
		if o.Kind != opes.Reject {
			t.Fatalf("outcome %v, want reject", o.Kind)
		}
		wantReply(t, o, "552-5.3.4 Message too big to scan for viruses\r\n", "svc/antivirus; action=rejected; bypassable=no")
	})
}

func hasChange(o *opes.Outcome, name, value string) bool {
	for _, c := range o.HeaderChanges {
		if strings.EqualFold(c.Name, name) && strings.Contains(c.Value, value) {
			return true
		}
	}
	return false
}
