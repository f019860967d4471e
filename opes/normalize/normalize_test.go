package normalize

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

var plainHeader = [][2]string{{"From", "a@example.org"}, {"To", "b@example.net"}, {"Subject", "test"}}

func hdr(extra ...string) [][2]string {
	h := append([][2]string{}, plainHeader...)
	for i := 0; i+1 < len(extra); i += 2 {
		h = append(h, [2]string{extra[i], extra[i+1]})
	}
	return h
}

// TestRepairs runs each repair on hostile input through the processor and
// checks the repair, the trace and that the result parses.
func TestRepairs(t *testing.T) {
	long := strings.Repeat("x", 2500)
	tests := []struct {
		name    string
		opts    string
		header  [][2]string
		body    string
		repairs []string // must all be reported
		check   func(t *testing.T, r *run)
	}{
		{
			name:    "bare LF and bare CR",
			header:  hdr(),
			body:    "one\ntwo\rthree\r\nfour\n",
			repairs: []string{RepairLineEndings},
			check: func(t *testing.T, r *run) {
				if string(r.body) != "one\r\ntwo\r\nthree\r\nfour\r\n" {
					t.Errorf("body %q", r.body)
				}
			},
		},
		{
			name:    "long line in a text body becomes quoted-printable",
			header:  hdr("MIME-Version", "1.0", "Content-Type", "text/plain; charset=utf-8"),
			body:    "short\r\n" + long + "\r\nend\r\n",
			repairs: []string{RepairLongLines},
			check: func(t *testing.T, r *run) {
				b, h, err := partBody(r.msg, "text/plain")
				if err != nil {
					t.Fatal(err)
				}
				if h.Get("Content-Transfer-Encoding") != "quoted-printable" {
					t.Errorf("CTE %q", h.Get("Content-Transfer-Encoding"))
				}
				if string(b) != "short\r\n"+long+"\r\nend\r\n" {
					t.Errorf("decoded body differs: %q", clip(b))
				}
			},
		},
		{
			name:   "long line in an attachment becomes base64, content exact",
			header: hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="b1"`),
			body: "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/octet-stream\r\n" +
				"Content-Disposition: attachment; filename=data.bin\r\n\r\n" + long + "\nraw\x00bytes\r\n--b1--\r\n",
			repairs: []string{RepairLongLines, RepairLineEndings},
			check: func(t *testing.T, r *run) {
				b, h, err := partBody(r.msg, "application/octet-stream")
				if err != nil {
					t.Fatal(err)
				}
				if h.Get("Content-Transfer-Encoding") != "base64" {
					t.Errorf("CTE %q", h.Get("Content-Transfer-Encoding"))
				}
				if string(b) != long+"\nraw\x00bytes" {
					t.Errorf("decoded attachment differs: %q", clip(b))
				}
			},
		},
		{
			name:    "missing MIME-Version is added",
			header:  hdr("Content-Type", "text/plain; charset=us-ascii"),
			body:    "hi\r\n",
			repairs: []string{RepairMIMEVersion},
			check: func(t *testing.T, r *run) {
				if !bytes.Contains(r.msg, []byte("\r\nMIME-Version: 1.0\r\n")) {
					t.Errorf("no MIME-Version:\n%s", r.msg)
				}
				if r.body != nil {
					t.Errorf("body replaced for a header-only repair")
				}
			},
		},
		{
			name:    "multipart whose boundary never appears is read as text",
			header:  hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="nowhere"`),
			body:    "--elsewhere\r\njust text\r\n",
			repairs: []string{RepairBoundaries},
			check: func(t *testing.T, r *run) {
				b, _, err := partBody(r.msg, "text/plain")
				if err != nil {
					t.Fatal(err)
				}
				if string(b) != "--elsewhere\r\njust text\r\n" {
					t.Errorf("body %q", b)
				}
			},
		},
		{
			name:    "duplicate boundary parameter: the one in use is kept",
			header:  hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="unused"; boundary="used"`),
			body:    "--used\r\nContent-Type: text/plain\r\n\r\npart one\r\n--used--\r\n",
			repairs: []string{RepairBoundaries},
			check: func(t *testing.T, r *run) {
				b, _, err := partBody(r.msg, "text/plain")
				if err != nil || string(b) != "part one" {
					t.Errorf("part %q, %v", b, err)
				}
			},
		},
		{
			name:   "missing close delimiter and empty multipart",
			header: hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="o"`),
			body: "--o\r\nContent-Type: multipart/alternative; boundary=\"i\"\r\n\r\npreamble only\r\n--o\r\n" +
				"Content-Type: text/plain\r\n\r\nlast part, no close\r\n",
			repairs: []string{RepairBoundaries},
			check: func(t *testing.T, r *run) {
				if !bytes.HasSuffix(r.body, []byte("--o--\r\n")) {
					t.Errorf("no close delimiter: %q", r.body)
				}
			},
		},
		{
			name:   "odd part names",
			header: hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="b"`),
			body: "--b\r\nContent-Type: application/pdf; name=\"../../etc/passwd\"\r\n" +
				"Content-Disposition: attachment; filename=\"..\\\\evil\x01\x7f.pdf\"\r\n\r\nx\r\n" +
				"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"" + strings.Repeat("a", 400) + ".pdf\"\r\n\r\ny\r\n" +
				"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"caf\xe9 r\xe9sum\xe9.pdf\"\r\n\r\nz\r\n--b--\r\n",
			repairs: []string{RepairPartNames, RepairHeader8bit},
			check: func(t *testing.T, r *run) {
				for marker, want := range map[string]string{"evil": ".._evil.pdf", "aaaa": strings.Repeat("a", maxNameLen-4) + ".pdf", "sum": "café résumé.pdf"} {
					_, h, err := partBody(r.msg, marker)
					if err != nil {
						t.Fatalf("%s: %v", marker, err)
					}
					_, p, err := h.ContentDisposition()
					if err != nil || p["filename"] != want {
						t.Errorf("filename %q (%v), want %q", p["filename"], err, want)
					}
				}
				_, h, err := partBody(r.msg, "passwd")
				if err != nil {
					t.Fatal(err)
				}
				if _, p, _ := h.ContentType(); p["name"] != ".._.._etc_passwd" {
					t.Errorf("name %q", p["name"])
				}
			},
		},
		{
			name:   "uuencoded lines of the wrong length",
			header: hdr(),
			// "M" announces 45 octets (61 characters); one line is short
			// (trailing spaces stripped in transit), one too long.
			body:    "see attached\r\nbegin 644 f.bin\r\nM" + strings.Repeat("A", 50) + "\r\nM" + strings.Repeat("A", 70) + "\r\n`\r\nend\r\n",
			repairs: []string{RepairUuencode},
			check: func(t *testing.T, r *run) {
				for _, l := range strings.Split(string(r.body), "\r\n") {
					if strings.HasPrefix(l, "MA") && len(l) != 61 {
						t.Errorf("line of %d characters: %q", len(l), l)
					}
				}
			},
		},
		{
			name:    "8-bit header fields",
			header:  [][2]string{{"From", "J\xf6rg M\xfcller <joerg@example.org>"}, {"To", "Zoë <z@example.net>, plain@example.net"}, {"Subject", "Grüße  aus Köln, über 9000 Zeichen"}, {"X-Note", "naïve\x01"}},
			body:    "hi\r\n",
			repairs: []string{RepairHeader8bit},
			check: func(t *testing.T, r *run) {
				want := map[string]string{"From": "Jörg Müller <joerg@example.org>", "Subject": "Grüße  aus Köln, über 9000 Zeichen", "X-Note": "naïve\x01"}
				e, err := readHeader(r.msg)
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range want {
					got, err := e.Text(k)
					if err != nil || got != v {
						t.Errorf("%s = %q (%v), want %q", k, got, err, v)
					}
				}
				to, err := e.AddressList("To")
				if err != nil || len(to) != 2 || to[0].Name != "Zoë" || to[1].Address != "plain@example.net" {
					t.Errorf("To = %v, %v", to, err)
				}
			},
		},
		{
			name:    "bad base64 is decoded leniently and encoded again",
			header:  hdr("MIME-Version", "1.0", "Content-Type", "application/octet-stream", "Content-Transfer-Encoding", "base64"),
			body:    "aGVsbG8g!d29y\x00bGQ=\r\nYWdhaW4=\r\n===garbage\r\n",
			repairs: []string{RepairEncodings},
			check: func(t *testing.T, r *run) {
				b, _, err := partBody(r.msg, "octet-stream")
				if err != nil || !strings.HasPrefix(string(b), "hello worldagain") {
					t.Errorf("decoded %q, %v", b, err)
				}
			},
		},
		{
			name:    "NUL and control bytes in quoted-printable",
			header:  hdr("MIME-Version", "1.0", "Content-Type", "text/plain", "Content-Transfer-Encoding", "quoted-printable"),
			body:    "a=3Db\x00c =\r\nd=ZZ\x01\r\n",
			repairs: []string{RepairEncodings},
			check: func(t *testing.T, r *run) {
				b, _, err := partBody(r.msg, "text/plain")
				if err != nil || string(b) != "a=b\x00c d=ZZ\x01\r\n" {
					t.Errorf("decoded %q, %v", b, err)
				}
			},
		},
		{
			name:    "NUL in a 7bit text part",
			header:  hdr("MIME-Version", "1.0", "Content-Type", "text/plain"),
			body:    "nul\x00here\r\n",
			repairs: []string{RepairEncodings},
		},
		{
			name:   "malformed part header line and encapsulated message",
			header: hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="m"`),
			body: "--m\r\nContent-Type: text/plain\r\nthis is not a header\r\nbody\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n" +
				"Subject: inner \xe9t\xe9\r\nContent-Type: text/plain\r\n\r\ninner\nbody\r\n--m--\r\n",
			repairs: []string{RepairPartHeaders, RepairHeader8bit, RepairMIMEVersion, RepairLineEndings},
		},
		{
			name:    "repair switched off",
			opts:    "[options]\nrepairs = [\"long-lines\"]\n",
			header:  hdr(),
			body:    "bare\nlf\n",
			repairs: nil,
			check: func(t *testing.T, r *run) {
				if r.body != nil || !strings.Contains(r.via(), "svc/norm; action=analyzed") {
					t.Errorf("body %q, via %q", r.body, r.via())
				}
			},
		},
		{
			name:   "nothing to repair",
			header: hdr("MIME-Version", "1.0", "Content-Type", "text/plain"),
			body:   "fine\r\n",
			check: func(t *testing.T, r *run) {
				if r.body != nil || len(r.o.HeaderChanges) != 2 || !strings.Contains(r.via(), "action=analyzed") {
					t.Errorf("body %q, changes %+v", r.body, r.o.HeaderChanges)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := process(t, tt.opts, tt.header, tt.body)
			if r.o.Kind != opes.Continue {
				t.Fatalf("outcome %v", r.o.Kind)
			}
			for _, want := range tt.repairs {
				if !r.has(want) {
					t.Errorf("repairs %v lack %s (log %s)", r.repairs, want, r.log)
				}
			}
			if len(tt.repairs) > 0 && !strings.Contains(r.via(), "svc/norm; action=modified") {
				t.Errorf("OPES-Via %q does not say modified", r.via())
			}
			if len(r.problem) > 0 {
				t.Errorf("unrepairable: %v", r.problem)
			}
			if tt.opts == "" { // with repairs off the output keeps what they would fix
				checkOutput(t, r)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

// TestHostileStructure: deep nesting, many parts, both beyond the limits.
func TestHostileStructure(t *testing.T) {
	nest := func(levels int) string {
		var b strings.Builder
		for i := range levels {
			fmt.Fprintf(&b, "--n%d\r\nContent-Type: multipart/mixed; boundary=\"n%d\"\r\n\r\n", i, i+1)
		}
		fmt.Fprintf(&b, "--n%d\r\nContent-Type: text/plain\r\n\r\ndeep\nbare\r\n--n%d--\r\n", levels, levels)
		for i := levels - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "--n%d--\r\n", i)
		}
		return b.String()
	}
	manyParts := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "--p\r\nContent-Type: text/plain\r\n\r\npart %d\n", i)
		}
		b.WriteString("--p--\r\n")
		return b.String()
	}
	top := func(boundary string) [][2]string {
		return hdr("MIME-Version", "1.0", "Content-Type", "multipart/mixed; boundary=\""+boundary+"\"")
	}
	t.Run("100 levels", func(t *testing.T) {
		r := process(t, "", top("n0"), nest(maxDepth-1))
		if !r.has(RepairLineEndings) || len(r.problem) != 0 {
			t.Fatalf("repairs %v, problems %v", r.repairs, r.problem)
		}
		checkOutput(t, r)
	})
	t.Run("beyond the nesting limit", func(t *testing.T) {
		r := process(t, "", top("n0"), nest(maxDepth+20))
		if !strings.Contains(strings.Join(r.problem, ","), "nesting-too-deep") {
			t.Fatalf("problems %v", r.problem)
		}
		if err := checkWire(r.msg); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("10000 parts", func(t *testing.T) {
		r := process(t, "", top("p"), manyParts(maxParts))
		if !r.has(RepairLineEndings) || len(r.problem) != 0 {
			t.Fatalf("repairs %v, problems %v", r.repairs, r.problem)
		}
		checkOutput(t, r)
		if n, _ := checkParse(r.msg, true); n != maxParts+1 {
			t.Errorf("parsed %d entities, want %d", n, maxParts+1)
		}
	})
	t.Run("too many parts", func(t *testing.T) {
		r := process(t, "", top("p"), manyParts(maxParts+1))
		if r.body != nil || !strings.Contains(strings.Join(r.problem, ","), "too-many-parts") {
			t.Fatalf("body replaced %v, problems %v", r.body != nil, r.problem)
		}
	})
}

func TestSignedSkipped(t *testing.T) {
	tests := []struct {
		name   string
		header [][2]string
		body   string
	}{
		{"S/MIME signed", hdr("MIME-Version", "1.0", "Content-Type", `multipart/signed; protocol="application/pkcs7-signature"; boundary="s"`),
			"--s\r\nContent-Type: text/plain\r\n\r\nbare\nlf\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nsig\r\n--s--\r\n"},
		{"encrypted", hdr("MIME-Version", "1.0", "Content-Type", "application/pkcs7-mime; smime-type=enveloped-data"), "x\ny\n"},
		{"signed inside mixed", hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="m"`),
			"--m\r\nContent-Type: text/plain\r\n\r\nbare\nlf\r\n--m\r\nContent-Type: multipart/encrypted; boundary=\"e\"\r\n\r\n--e\r\n\r\nx\r\n--e--\r\n--m--\r\n"},
		{"inline PGP", hdr(), "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\ntext\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := process(t, "", tt.header, tt.body)
			if r.body != nil || len(r.o.HeaderChanges) != 2 {
				t.Errorf("signed message changed: body %v, changes %+v", r.body != nil, r.o.HeaderChanges)
			}
			if !strings.Contains(r.via(), "svc/norm; action=analyzed; status=skipped; reason=signed") {
				t.Errorf("OPES-Via %q", r.via())
			}
		})
	}
}

func TestMaxSize(t *testing.T) {
	r := process(t, "[options]\nmax_size = 10\n", hdr(), "bare\nline endings\n")
	if r.body != nil || !strings.Contains(r.via(), "status=skipped; reason=too-large") {
		t.Errorf("body %v, via %q", r.body != nil, r.via())
	}
}

// TestLargeBody goes through the spool files: a 6 MiB attachment on one
// line and a 3 MiB text part with bare LFs.
func TestLargeBody(t *testing.T) {
	attachment := bytes.Repeat([]byte("0123456789abcdef"), 6<<16)
	text := strings.Repeat("line of text\n", 3<<20/13)
	body := "--L\r\nContent-Type: text/plain\r\n\r\n" + text + "\r\n--L\r\nContent-Type: application/octet-stream\r\n\r\n" +
		string(attachment) + "\r\n--L--\r\n"
	r := process(t, "", hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="L"`), body)
	if !r.has(RepairLongLines) || !r.has(RepairLineEndings) {
		t.Fatalf("repairs %v", r.repairs)
	}
	checkOutput(t, r)
	got, _, err := partBody(r.msg, "octet-stream")
	if err != nil || !bytes.Equal(got, attachment) {
		t.Fatalf("attachment differs (%d octets, %v)", len(got), err)
	}
	got, _, err = partBody(r.msg, "text/plain")
	if err != nil || string(got) != strings.ReplaceAll(text, "\n", "\r\n") {
		t.Fatalf("text differs (%d octets, %v)", len(got), err)
	}
}

func TestOnUnrepairable(t *testing.T) {
	// An 8-bit Received field cannot take encoded-words.
	h := hdr("Received", "from h\xf6st by mx", "Content-Type", "text/plain")
	body := "bare\n"
	t.Run("continue", func(t *testing.T) {
		r := process(t, "", h, body)
		if r.o.Kind != opes.Continue || !r.has(RepairMIMEVersion) || !strings.Contains(strings.Join(r.problem, ","), "8bit-header:Received") {
			t.Fatalf("kind %v, repairs %v, problems %v", r.o.Kind, r.repairs, r.problem)
		}
	})
	t.Run("tag", func(t *testing.T) {
		r := process(t, "[options]\non_unrepairable = \"tag\"\n", h, body)
		if !bytes.Contains(r.msg, []byte("\r\nX-OPES-Normalize: unrepairable; 8bit-header:Received\r\n")) || !strings.Contains(r.via(), "action=tagged") {
			t.Fatalf("no tag or trace:\n%s", r.msg)
		}
	})
	t.Run("reject", func(t *testing.T) {
		r := process(t, "[options]\non_unrepairable = \"reject\"\n", h, body)
		if r.o.Kind != opes.Reject || r.o.Reply.Code != 554 || r.o.Reply.Enhanced != "5.6.5" {
			t.Fatalf("outcome %v %+v", r.o.Kind, r.o.Reply)
		}
		if !strings.Contains(r.o.Reply.String(), "svc/norm; action=rejected") {
			t.Errorf("reply lacks the trace:\n%s", r.o.Reply)
		}
	})
}

func TestCommands(t *testing.T) {
	svc, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := &opes.ServiceSpec{Name: "norm", Kind: "normalize", URI: sysURI + "svc/norm", Impl: svc}
	p, err := opes.NewProcessor(&opes.Policy{
		System:   opes.System{URI: sysURI},
		Services: []*opes.ServiceSpec{spec},
		Rules:    []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: []*opes.ServiceSpec{spec}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		from     opes.Address
		rcpt     opes.Address
		code     int
		enhanced string
		atRcpt   bool
	}{
		{"fine", opes.Address{Addr: "a@example.org", Args: []string{"SIZE=100", "BODY=8BITMIME"}}, opes.Address{Addr: "b@example.net"}, 0, "", false},
		{"null sender", opes.Address{}, opes.Address{Addr: "postmaster"}, 0, "", false},
		{"address over 254 octets", opes.Address{Addr: strings.Repeat("a", 60) + "@" + strings.Repeat("b.", 100) + "org"}, opes.Address{}, 553, "5.1.3", false},
		{"local part over 64", opes.Address{Addr: strings.Repeat("a", 65) + "@example.org"}, opes.Address{}, 553, "5.1.3", false},
		{"control character", opes.Address{Addr: "a\x01b@example.org"}, opes.Address{}, 553, "5.1.3", false},
		{"malformed domain", opes.Address{Addr: "a@exa..mple.org"}, opes.Address{}, 553, "5.1.3", false},
		{"non-ASCII without SMTPUTF8", opes.Address{Addr: "jörg@example.org"}, opes.Address{}, 553, "5.6.7", false},
		{"non-ASCII with SMTPUTF8", opes.Address{Addr: "jörg@example.org", Args: []string{"SMTPUTF8"}}, opes.Address{Addr: "zoë@example.net"}, 0, "", false},
		{"malformed parameter", opes.Address{Addr: "a@example.org", Args: []string{"SIZE="}}, opes.Address{}, 555, "5.5.4", false},
		{"parameter with space", opes.Address{Addr: "a@example.org", Args: []string{"ENVID=a b"}}, opes.Address{}, 555, "5.5.4", false},
		{"duplicate parameter", opes.Address{Addr: "a@example.org", Args: []string{"SIZE=1", "size=2"}}, opes.Address{}, 555, "5.5.4", false},
		{"bad keyword", opes.Address{Addr: "a@example.org", Args: []string{"-X=1"}}, opes.Address{}, 555, "5.5.4", false},
		{"bad recipient", opes.Address{Addr: "a@example.org"}, opes.Address{Addr: "b@" + strings.Repeat("x", 64) + ".org"}, 553, "5.1.3", true},
		{"bad recipient parameter", opes.Address{Addr: "a@example.org"}, opes.Address{Addr: "b@example.net", Args: []string{"NOTIFY=SUCCESS\x00"}}, 555, "5.5.4", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := p.NewSession()
			defer s.Close()
			s.Connect(ctx)
			o := s.Mail(ctx, tt.from)
			if !tt.atRcpt && tt.code != 0 {
				checkRefusal(t, o, tt.code, tt.enhanced)
				return
			}
			if o.Kind != opes.Continue {
				t.Fatalf("MAIL refused: %s", o.Reply)
			}
			o = s.Rcpt(ctx, tt.rcpt)
			if tt.code == 0 {
				if o.Kind != opes.Continue {
					t.Fatalf("RCPT refused: %s", o.Reply)
				}
				return
			}
			checkRefusal(t, o, tt.code, tt.enhanced)
		})
	}
}

func checkRefusal(t *testing.T, o *opes.Outcome, code int, enhanced string) {
	t.Helper()
	if o.Kind != opes.Reject || o.Reply == nil {
		t.Fatalf("outcome %v, want a refusal", o.Kind)
	}
	if o.Reply.Code != code || o.Reply.Enhanced != enhanced {
		t.Errorf("reply %d %s, want %d %s", o.Reply.Code, o.Reply.Enhanced, code, enhanced)
	}
	text := o.Reply.String()
	if !strings.Contains(text, "OPES-Via: ") || !strings.Contains(text, "svc/norm; action=rejected") || !strings.Contains(text, "cannot be normalised") {
		t.Errorf("reply lacks the trace or the reason:\n%s", text)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		src, field, msg string
	}{
		{"[options]\nrepairs = [\"line-endings\", \"bogus\"]", "repairs[2]", "unknown repair"},
		{"[options]\nmax_size = 0", "max_size", "positive"},
		{"[options]\non_unrepairable = \"drop\"", "on_unrepairable", "continue, reject or tag"},
		{"[options]\ntag_field = \"OPES-Via\"", "tag_field", "trace field"},
		{"[options]\ntag_field = \"X Bad\"", "tag_field", "0x20"},
	}
	for _, tt := range tests {
		_, err := New(optiontest.Decoder(t, tt.src))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(fe.Err.Error(), tt.msg) {
			t.Errorf("%q: error %v, want field %s mentioning %q", tt.src, err, tt.field, tt.msg)
		}
	}
	if _, err := New(optiontest.Decoder(t, "[options]\nmax_size = \"big\"\n")); err == nil || !strings.Contains(err.Error(), "normalize: decode options") {
		t.Errorf("type error: %v", err)
	}
	s, err := New(optiontest.Decoder(t, "[options]\nrepairs = [\"line-endings\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Needs(); n.Stages.Has(opes.StageMail) || !n.Stages.Has(opes.StageEOM) || !n.Body || !n.Headers {
		t.Errorf("needs %+v", n)
	}
}

// TestSMTPUTF8Headers: with SMTPUTF8, UTF-8 header text is valid as it is
// (RFC 6532); Latin-1 text still is not.
func TestSMTPUTF8Headers(t *testing.T) {
	from := opes.Address{Addr: "jörg@example.org", Args: []string{"SMTPUTF8"}}
	r := processFrom(t, "", from, hdr("From", "Jörg <jörg@example.org>", "X-Note", "Grüße"), "hi\r\n")
	if len(r.repairs) != 0 || len(r.problem) != 0 || len(r.o.HeaderChanges) != 2 {
		t.Errorf("UTF-8 header changed: repairs %v, problems %v, changes %+v", r.repairs, r.problem, r.o.HeaderChanges)
	}
	r = processFrom(t, "", from, hdr("X-Note", "Gr\xfc\xdfe"), "hi\r\n")
	h, err := readHeader(r.msg)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := h.Text("X-Note"); !r.has(RepairHeader8bit) || err != nil || v != "Grüße" {
		t.Errorf("Latin-1 header: repairs %v, X-Note %q (%v)", r.repairs, v, err)
	}
}

// TestHeaderChanges checks the milter-level changes the processor derives
// from the service's header repairs.
func TestHeaderChanges(t *testing.T) {
	long := strings.Repeat("word ", 300)
	r := process(t, "", [][2]string{
		{"From", "a@example.org"},
		{"Subject", "caf\xe9"},
		{"Content-Type", "text/plain; charset=utf-8"},
		{"Content-Type", "application/x-other"},
		{"X-Long", long},
		{"X-Dup", "one"},
		{"X-Dup", "tw\xf6"},
	}, "hi\r\n")
	checkOutput(t, r)
	// Every repair stays at its field's place: the second X-Dup is changed,
	// the duplicate Content-Type deleted; nothing else moves.
	want := []opes.HeaderChange{
		{Kind: opes.ChangeField, Name: "Subject", Value: "=?utf-8?q?caf=C3=A9?=", Index: 1},
		{Kind: opes.ChangeField, Name: "X-Dup", Value: "=?utf-8?q?tw=C3=B6?=", Index: 2},
		{Kind: opes.DeleteField, Name: "Content-Type", Index: 2},
		{Kind: opes.AppendField, Name: "MIME-Version", Value: "1.0"},
	}
	got := map[string]bool{}
	for _, c := range r.o.HeaderChanges {
		got[fmt.Sprintf("%d|%s|%s|%d", c.Kind, c.Name, c.Value, c.Index)] = true
	}
	for _, c := range want {
		if !got[fmt.Sprintf("%d|%s|%s|%d", c.Kind, c.Name, c.Value, c.Index)] {
			t.Errorf("missing change %+v in %+v", c, r.o.HeaderChanges)
		}
	}
	for _, c := range r.o.HeaderChanges {
		if c.Kind == opes.AppendField && c.Name != "MIME-Version" || c.Kind == opes.DeleteField && c.Name == "X-Dup" {
			t.Errorf("a field moved or was re-added: %+v", c)
		}
	}
	var folded bool
	for _, c := range r.o.HeaderChanges {
		if c.Name == "X-Long" && c.Kind == opes.ChangeField {
			folded = strings.Contains(c.Value, "\r\n ") && strings.ReplaceAll(c.Value, "\r\n", "") == strings.TrimSpace(long)
		}
	}
	if !folded {
		t.Errorf("X-Long not refolded: %+v", r.o.HeaderChanges)
	}
	for _, want := range []string{RepairHeader8bit, RepairLongLines, RepairPartHeaders, RepairMIMEVersion} {
		if !r.has(want) {
			t.Errorf("repairs %v lack %s", r.repairs, want)
		}
	}
}

// TestNestedBoundaryClash: an inner multipart reusing the outer boundary
// cannot be delimited; it is read as text, and the outer one still
// parses.
func TestNestedBoundaryClash(t *testing.T) {
	body := "--x\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\ninner\r\n--x--\r\n"
	r := process(t, "", hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="x"`), body)
	if !r.has(RepairBoundaries) {
		t.Fatalf("repairs %v", r.repairs)
	}
	checkOutput(t, r)
	if n, err := checkParse(r.msg, true); err != nil || n != 3 {
		t.Errorf("parsed %d entities (%v), want the multipart and two parts", n, err)
	}
}

func BenchmarkNormalize(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("--B\r\nContent-Type: text/plain\r\n\r\n")
	for range 20000 {
		sb.WriteString("a line of ordinary text with a bare line feed\n")
	}
	sb.WriteString("\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	for range 10000 {
		sb.WriteString("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n")
	}
	sb.WriteString("--B--\r\n")
	body := sb.String()
	h := hdr("MIME-Version", "1.0", "Content-Type", `multipart/mixed; boundary="B"`)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if r := process(b, "", h, body); r.body == nil {
			b.Fatal("not repaired")
		}
	}
}
