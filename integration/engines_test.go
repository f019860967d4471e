package integration

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/opes"
)

// End-to-end tests through real MTAs with the real content engines
// (engines.go): clamd through Postfix and Sendmail, spamd and rspamd
// through Postfix.

// enginePolicy is a policy with one engine service, name, run for every
// message; options are the lines of [service.options].
func enginePolicy(name, kind string, options ...string) string {
	return `[system]
uri = "` + itSystem + `"
privacy_url = "` + itSystem + `privacy"

[consent]
recipients = ["@example.net", "@example.org", "@example.test"]

[bypass]
trusted_networks = ["127.0.0.0/8"]

[[service]]
name = "` + name + `"
kind = "` + kind + `"
[service.options]
` + strings.Join(options, "\n") + `

[[rule]]
name = "everyone"
run = ["` + name + `"]
`
}

// attachmentMessage is a MIME message whose second part is file, base64.
func attachmentMessage(subject, filename string, file []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString(file)
	var lines []string
	for len(b64) > 76 {
		lines = append(lines, b64[:76])
		b64 = b64[76:]
	}
	lines = append(lines, b64)
	return []byte("From: Alice <alice@example.org>\n" +
		"To: bob@example.net\n" +
		"Subject: " + subject + "\n" +
		"Message-ID: <" + subject + "@example.org>\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: multipart/mixed; boundary=\"b-opes-it\"\n" +
		"\n" +
		"--b-opes-it\n" +
		"Content-Type: text/plain; charset=us-ascii\n" +
		"\n" +
		"The file is attached.\n" +
		"\n" +
		"--b-opes-it\n" +
		"Content-Type: application/octet-stream; name=\"" + filename + "\"\n" +
		"Content-Disposition: attachment; filename=\"" + filename + "\"\n" +
		"Content-Transfer-Encoding: base64\n" +
		"\n" +
		strings.Join(lines, "\n") + "\n" +
		"\n" +
		"--b-opes-it--\n")
}

// viaEntry returns the OPES-Via entry of the delivered message for uri.
func viaEntry(t *testing.T, d Dump, uri string) opes.TraceEntry {
	t.Helper()
	for _, e := range traceBlock(t, d, itSystem, "") {
		if e.URI == uri {
			return e
		}
	}
	t.Fatalf("no %s in OPES-Via of\n%s", uri, d.Message)
	return opes.TraceEntry{}
}

// wantAction checks the action parameter of uri's OPES-Via entry.
func wantAction(t *testing.T, d Dump, uri, action string) {
	t.Helper()
	e := viaEntry(t, d, uri)
	if got, _ := e.Param("action"); got != action {
		t.Errorf("OPES-Via entry %s: action %q, want %q", e, got, action)
	}
}

// sendOne sends msg in its own session and returns the reply to the end
// of data (the whole transcript is logged).
func sendOne(t *testing.T, addr string, msg []byte) Reply {
	t.Helper()
	tr := SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, msg)
	t.Logf("transcript:\n%s", tr)
	r, ok := tr.DataReply()
	if !ok {
		t.Fatalf("no reply to the end of data:\n%s", tr)
	}
	return r
}

// TestClamdEndToEnd runs every message through a real clamd (action
// reject) behind Postfix and Sendmail: a virus in a base64 attachment is
// refused at the end of data with the trace, a clean message is delivered
// traced action=analyzed, and with clamd gone a message is tempfailed,
// never delivered unscanned.
func TestClamdEndToEnd(t *testing.T) {
	for _, name := range caseMTAs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			Require(t)
			// One clamd per MTA: it starts in ~0.1 s, and the last step
			// stops it.
			clamd := StartClamd(t)
			policy := enginePolicy("antivirus", "clamav",
				`socket = "`+clamd.TCP()+`"`, `timeout = "10s"`, `connect_timeout = "2s"`, `action = "reject"`)
			sink, _, addr := mtaStack(t, name, MilterOptions{Policy: policy})
			svc := itSystem + "svc/antivirus"

			// A virus: 554 with the signature and the trace; not delivered.
			virus := "virus-" + name
			r := sendOne(t, addr, attachmentMessage(virus, "eicar.com", []byte(EICAR)))
			checkTraceReply(t, r, 554, "5.7.1", svc)
			if want := "554-5.7.1 Virus found: " + ClamdEicarSig; r.Lines[0] != want {
				t.Errorf("first line %q, want %q", r.Lines[0], want)
			}

			// The token signature, in the plain-text body.
			token := "token-" + name
			r = sendOne(t, addr, []byte("From: alice@example.org\nTo: bob@example.net\nSubject: "+token+"\n\nPayload: "+ClamdToken+"\n"))
			checkTraceReply(t, r, 554, "5.7.1", svc)
			if want := "554-5.7.1 Virus found: " + ClamdTokenSig; r.Lines[0] != want {
				t.Errorf("first line %q, want %q", r.Lines[0], want)
			}

			// OPES-Bypass: * from a trusted client does not bypass the
			// non-bypassable scanner, and the reply says so (RFC 4902 §3.2).
			bypass := "bypass-" + name
			msg := attachmentMessage(bypass, "eicar.com", []byte(EICAR))
			r = sendOne(t, addr, append([]byte("OPES-Bypass: *\n"), msg...))
			if r.Code != 554 || !r.Contains("OPES-Via: "+svc+"; action=rejected; bypass=refused; reason=non-bypassable; bypassable=no") ||
				!r.Contains("Virus found: "+ClamdEicarSig+"; bypass refused: non-bypassable") {
				t.Errorf("the reply does not say the bypass was refused:\n%s", r)
			}

			// A clean attachment is delivered, traced action=analyzed.
			clean := "clean-" + name
			if r := sendOne(t, addr, attachmentMessage(clean, "notes.txt", []byte("Nothing to see here.\n"))); r.Code != 250 {
				t.Fatalf("clean message: %s", r)
			}
			d := sink.WaitDump(t, HasHeader("Subject", clean), 10*time.Second)
			wantAction(t, d, svc, "analyzed")

			// clamd gone: 451 4.3.0 with the trace, nothing delivered.
			clamd.Stop()
			down := "clamd-down-" + name
			r = sendOne(t, addr, message(down))
			if r.Code != 451 || len(r.Lines) < 4 || !strings.HasPrefix(r.Lines[0], "451-4.3.0 ") {
				t.Fatalf("clamd down: %s, want a multi-line 451 4.3.0", r)
			}
			if !strings.HasPrefix(r.Lines[1], "451-4.3.0 OPES-System: "+itSystem+"; id=") {
				t.Errorf("clamd down: line 1 %q", r.Lines[1])
			}
			// The failed service is traced status=failed (its action
			// parameter reads "analyzed": nothing was decided).
			if !strings.HasPrefix(r.Lines[2], "451-4.3.0 OPES-Via: "+svc+"; ") || !r.Contains("status=failed; bypassable=no") {
				t.Errorf("clamd down: line 2 %q, want %s with status=failed; bypassable=no", r.Lines[2], svc)
			}
			if last := r.Lines[len(r.Lines)-1]; last != "451 4.3.0 Policy, privacy and bypass: "+itSystem+"privacy" {
				t.Errorf("last line %q", last)
			}

			time.Sleep(300 * time.Millisecond)
			for _, d := range sink.Dumps() {
				if s := d.Header().Get("Subject"); s != clean {
					t.Errorf("message %q reached the sink:\n%s", s, d.Message)
				}
			}
			if n := len(sink.Dumps()); n != 1 {
				t.Errorf("%d messages at the sink, want only %q", n, clean)
			}
		})
	}
}

// TestSpamdEndToEnd runs every message through a real spamd behind
// Postfix. A policy that marks (reject_score above GTUBE's ~1000) prefixes
// the Subject and adds X-Spam-Status; a policy with reject_score 5
// refuses GTUBE at the end of data with the trace.
func TestSpamdEndToEnd(t *testing.T) {
	Require(t)
	spamd := StartSpamd(t) // one spamd (~2 s to start) for both policies
	svc := itSystem + "svc/spam"
	ham := func(subject string) []byte {
		return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject +
			"\nMessage-ID: <" + subject + "@example.org>\nDate: " + time.Now().Format(time.RFC1123Z) +
			"\n\nSee you at noon at the usual place.\n\nAlice\n")
	}
	gtube := func(subject string) []byte {
		return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject +
			"\nMessage-ID: <" + subject + "@example.org>\nDate: " + time.Now().Format(time.RFC1123Z) +
			"\n\nThis is the GTUBE.\n" + GTUBE + "\n")
	}

	t.Run("mark", func(t *testing.T) {
		t.Parallel()
		policy := enginePolicy("spam", "spamd", `address = "`+spamd.Addr()+`"`, `timeout = "20s"`,
			`add_header = true`, `subject_prefix = "[SPAM]"`, `reject_score = 2000.0`)
		sink, _, addr := mtaStack(t, "postfix", MilterOptions{Policy: policy})

		if r := sendOne(t, addr, gtube("gtube-mark")); r.Code != 250 {
			t.Fatalf("GTUBE with reject_score 2000: %s", r)
		}
		if r := sendOne(t, addr, ham("ham-mark")); r.Code != 250 {
			t.Fatalf("ham: %s", r)
		}

		d := sink.WaitDump(t, HasHeader("Subject", "[SPAM] gtube-mark"), 10*time.Second)
		h := d.Header()
		if st := h.Get("X-Spam-Status"); !strings.HasPrefix(st, "Yes, score=") || !strings.Contains(st, "GTUBE") {
			t.Errorf("GTUBE: X-Spam-Status %q", st)
		}
		if sc := h.Get("X-Spam-Score"); sc == "" {
			t.Errorf("GTUBE: no X-Spam-Score")
		}
		wantAction(t, d, svc, "tagged")
		t.Logf("GTUBE delivered:\n%s", d.Message)

		d = sink.WaitDump(t, HasHeader("Subject", "ham-mark"), 10*time.Second)
		h = d.Header()
		if st := h.Get("X-Spam-Status"); !strings.HasPrefix(st, "No, score=") {
			t.Errorf("ham: X-Spam-Status %q", st)
		}
		if n := len(h["X-Spam-Status"]); n != 1 {
			t.Errorf("ham: %d X-Spam-Status fields", n)
		}
		wantAction(t, d, svc, "header-added")
		if n := len(sink.Dumps()); n != 2 {
			t.Errorf("%d messages at the sink, want 2", n)
		}
	})

	t.Run("reject", func(t *testing.T) {
		t.Parallel()
		policy := enginePolicy("spam", "spamd", `address = "unix:`+spamd.Socket()+`"`, `timeout = "20s"`,
			`add_header = true`, `reject_score = 5.0`)
		sink, _, addr := mtaStack(t, "postfix", MilterOptions{Policy: policy})

		r := sendOne(t, addr, gtube("gtube-reject"))
		checkTraceReply(t, r, 554, "5.7.1", svc)
		if !strings.HasPrefix(r.Lines[0], "554-5.7.1 Message refused as spam (score ") {
			t.Errorf("first line %q", r.Lines[0])
		}
		if r := sendOne(t, addr, ham("ham-reject")); r.Code != 250 {
			t.Fatalf("ham: %s", r)
		}
		d := sink.WaitDump(t, HasHeader("Subject", "ham-reject"), 10*time.Second)
		if st := d.Header().Get("X-Spam-Status"); !strings.HasPrefix(st, "No, score=") {
			t.Errorf("ham: X-Spam-Status %q", st)
		}
		time.Sleep(300 * time.Millisecond)
		if n := len(sink.Dumps()); n != 1 {
			t.Errorf("%d messages at the sink, want only the ham", n)
		}
	})
}

// TestRspamdEndToEnd: real rspamd behind real Postfix. GTUBE is refused at
// the end of data with rspamd's symbols and the trace; the rewrite-subject
// variant is delivered marked and with the X-Spam fields; a clean message
// is delivered untouched but traced.
func TestRspamdEndToEnd(t *testing.T) {
	t.Parallel()
	Require(t)
	r, err := enginetest.StartRspamd(enginetest.RspamdOptions{Dir: TempDir(t)})
	if err != nil {
		t.Fatalf("integration: rspamd is needed for this test: %v", err)
	}
	t.Cleanup(r.Stop)
	svc := itSystem + "svc/spam"
	policy := enginePolicy("spam", "rspamd", `address = "`+r.Addr()+`"`, `timeout = "20s"`, `subject_prefix = "[SPAM]"`)
	sink, _, addr := mtaStack(t, "postfix", MilterOptions{Policy: policy})
	msg := func(subject, body string) []byte {
		return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject +
			"\nMessage-ID: <" + subject + "@example.org>\n\n" + body + "\n")
	}
	rep := sendOne(t, addr, msg("rspamd-gtube", "This is the GTUBE.\n"+GTUBE))
	checkTraceReply(t, rep, 554, "5.7.1", svc)
	if !rep.Contains("GTUBE") {
		t.Errorf("the refusal does not name the symbol:\n%s", rep)
	}
	if rep := sendOne(t, addr, msg("rspamd-mark", "Subject rewrite please.\n"+enginetest.GTUBERewriteSubject)); rep.Code != 250 {
		t.Fatalf("rewrite-subject variant: %s", rep)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "[SPAM] rspamd-mark"), 15*time.Second)
	if d.Header().Get("X-Spam-Score") == "" || !strings.HasPrefix(d.Header().Get("X-Spam-Status"), "Yes") {
		t.Errorf("marked message lacks the X-Spam fields:\n%s", d.Message)
	}
	wantAction(t, d, svc, "tagged")
	if rep := sendOne(t, addr, msg("rspamd-ham", "See you at noon.")); rep.Code != 250 {
		t.Fatalf("ham: %s", rep)
	}
	d = sink.WaitDump(t, HasHeader("Subject", "rspamd-ham"), 15*time.Second)
	wantAction(t, d, svc, "analyzed")
}
