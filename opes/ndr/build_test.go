package ndr

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	sysURI = "https://mx1.example.net/opes/"
	svcURI = "https://mx1.example.net/opes/svc/att-policy"
)

func sampleReport() Report {
	reply := "550-5.7.1 Message refused by OPES content policy (attachment type)\r\n" +
		"550-5.7.1 OPES-System: https://mx1.example.net/opes/; id=7QF3X2\r\n" +
		"550-5.7.1 OPES-Via: https://mx1.example.net/opes/svc/att-policy; action=rejected; bypassable=no\r\n" +
		"550 5.7.1 Policy, privacy and bypass: https://mx1.example.net/opes/"
	via := sysURI + "; id=7QF3X2, " + svcURI + "; action=rejected; bypassable=no"
	return Report{
		ReportingMTA: "mx1.example.net",
		SystemURI:    sysURI,
		PolicyURL:    sysURI + "policy",
		TraceID:      "7QF3X2",
		Arrival:      time.Date(2024, 5, 22, 10, 0, 0, 0, time.FixedZone("", 2*3600)),
		ReversePath:  "<alice@example.org>",
		EnvID:        "QQ314159+2Bx",
		Service:      svcURI,
		Reason:       "Message refused by OPES content policy (attachment type)",
		Recipients: []Recipient{
			{Address: "paul@example.net", ORCPT: "rfc822;paul+2Bopes@example.net", Notify: "FAILURE,DELAY",
				Status: "5.7.1", Diagnostic: reply, Via: via},
			{Address: "Mary.Smith@Example.NET", Status: "5.7.1", Diagnostic: "550 5.7.1 Message refused", Via: via},
		},
		Headers: []byte("OPES-System: https://mx1.example.net/opes/; id=7QF3X2\r\n" +
			"OPES-Via: https://mx1.example.net/opes/; id=7QF3X2,\r\n https://mx1.example.net/opes/svc/att-policy; action=rejected\r\n" +
			"Received: from client.example.org (client.example.org [192.0.2.7])\r\n\tby mx1.example.net (Postfix) with ESMTP id 7QF3X2\r\n" +
			"From: Alice <alice@example.org>\r\nTo: paul@example.net, Mary.Smith@Example.NET\r\nSubject: the plans\r\n" +
			"\r\nThe body must never be returned.\r\n"),
		Date:      time.Date(2024, 5, 22, 10, 0, 5, 0, time.FixedZone("", 2*3600)),
		MessageID: "ndr.7QF3X2@mx1.example.net",
	}
}

// parsedReport is a report read back with go-message.
type parsedReport struct {
	header message.Header
	parts  []parsedPart
	groups []textproto.Header // delivery-status: per-message, then per-recipient
}

type parsedPart struct {
	mediaType string
	params    map[string]string
	header    message.Header
	body      []byte // decoded
}

// checkWire checks what every report must be on the wire: CRLF line ends
// only, lines of at most 998 octets, 7-bit US-ASCII throughout.
func checkWire(t *testing.T, data []byte) {
	t.Helper()
	if !bytes.HasSuffix(data, []byte("\r\n")) {
		t.Fatalf("report does not end with CRLF")
	}
	for i, line := range bytes.Split(data[:len(data)-2], []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets", i+1, len(line))
		}
		for _, c := range line {
			if c == '\r' || c == '\n' || c == 0 || c > 0x7e {
				t.Fatalf("line %d holds octet %#x: %q", i+1, c, line)
			}
		}
	}
}

// parseReport reads a report back with go-message and checks its MIME
// structure: multipart/report; report-type=delivery-status with a text
// part, a delivery-status part and optionally the returned header.
func parseReport(t *testing.T, data []byte) parsedReport {
	t.Helper()
	checkWire(t, data)
	e, err := message.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("go-message cannot read the report: %v", err)
	}
	var p parsedReport
	p.header = e.Header
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q %v: %v", mt, params, err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatal("not multipart")
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("part %d: %v", len(p.parts)+1, err)
		}
		pt, pp, _ := part.Header.ContentType()
		body, err := io.ReadAll(part.Body)
		if err != nil {
			t.Fatalf("part %d body: %v", len(p.parts)+1, err)
		}
		p.parts = append(p.parts, parsedPart{pt, pp, part.Header, body})
	}
	if len(p.parts) < 2 || len(p.parts) > 3 || p.parts[0].mediaType != "text/plain" ||
		p.parts[1].mediaType != "message/delivery-status" ||
		(len(p.parts) == 3 && p.parts[2].mediaType != "text/rfc822-headers") {
		var types []string
		for _, pp := range p.parts {
			types = append(types, pp.mediaType)
		}
		t.Fatalf("parts %v", types)
	}
	if enc := p.parts[1].header.Get("Content-Transfer-Encoding"); enc != "7bit" {
		t.Fatalf("delivery-status encoding %q", enc)
	}
	br := bufio.NewReader(bytes.NewReader(p.parts[1].body))
	for {
		if _, err := br.Peek(1); err == io.EOF {
			break
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("delivery-status group %d: %v\n%s", len(p.groups)+1, err, p.parts[1].body)
		}
		if h.Len() == 0 {
			t.Fatalf("empty delivery-status group %d:\n%s", len(p.groups)+1, p.parts[1].body)
		}
		p.groups = append(p.groups, h)
	}
	return p
}

// fieldLines lists a group's fields in order as "Name: value", unfolded,
// names in canonical case.
func fieldLines(h textproto.Header) []string {
	var out []string
	for f := h.Fields(); f.Next(); {
		out = append(out, f.Key()+": "+f.Value())
	}
	return out
}

func TestBuildGolden(t *testing.T) {
	data, err := Build(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report.golden")
	if *update {
		if err := os.WriteFile(golden, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("report differs from %s (go test -update rewrites it):\n%s", golden, data)
	}

	p := parseReport(t, data)
	for name, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@mx1.example.net>",
		"To":             "<alice@example.org>",
		"Subject":        Subject,
		"Date":           "Wed, 22 May 2024 10:00:05 +0200",
		"Message-Id":     "<ndr.7QF3X2@mx1.example.net>",
		"Auto-Submitted": "auto-replied",
		"Mime-Version":   "1.0",
	} {
		if got := p.header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}

	wantGroups := [][]string{{
		"Original-Envelope-Id: QQ314159+x",
		"Reporting-Mta: dns; mx1.example.net",
		"Arrival-Date: Wed, 22 May 2024 10:00:00 +0200",
		"X-Opes-System: https://mx1.example.net/opes/; id=7QF3X2",
	}, {
		"Original-Recipient: rfc822;paul+opes@example.net",
		"Final-Recipient: rfc822; paul@example.net",
		"Action: failed",
		"Status: 5.7.1",
		"Diagnostic-Code: smtp; 550-5.7.1 Message refused by OPES content policy (attachment type) " +
			"550-5.7.1 OPES-System: https://mx1.example.net/opes/; id=7QF3X2 " +
			"550-5.7.1 OPES-Via: https://mx1.example.net/opes/svc/att-policy; action=rejected; bypassable=no " +
			"550 5.7.1 Policy, privacy and bypass: https://mx1.example.net/opes/",
		"Final-Log-Id: 7QF3X2",
		"X-Opes-Via: https://mx1.example.net/opes/; id=7QF3X2, https://mx1.example.net/opes/svc/att-policy; action=rejected; bypassable=no",
	}, {
		"Final-Recipient: rfc822; Mary.Smith@Example.NET",
		"Action: failed",
		"Status: 5.7.1",
		"Diagnostic-Code: smtp; 550 5.7.1 Message refused",
		"Final-Log-Id: 7QF3X2",
		"X-Opes-Via: https://mx1.example.net/opes/; id=7QF3X2, https://mx1.example.net/opes/svc/att-policy; action=rejected; bypassable=no",
	}}
	if len(p.groups) != len(wantGroups) {
		t.Fatalf("%d delivery-status groups, want %d", len(p.groups), len(wantGroups))
	}
	for i, g := range p.groups {
		got := fieldLines(g)
		if strings.Join(got, "\n") != strings.Join(wantGroups[i], "\n") {
			t.Errorf("group %d:\n got %q\nwant %q", i, got, wantGroups[i])
		}
	}

	// Part 1 names what RFC 4902 asks for.
	text := string(p.parts[0].body)
	for _, s := range []string{sysURI, "7QF3X2", svcURI, "cannot be bypassed", "<paul@example.net>",
		"<Mary.Smith@Example.NET>", sysURI + "policy", "attachment type"} {
		if !strings.Contains(text, s) {
			t.Errorf("text part lacks %q:\n%s", s, text)
		}
	}
	// Part 3 is the header, with our trace, and never the body.
	hdr := string(p.parts[2].body)
	if !strings.HasPrefix(hdr, "OPES-System: "+sysURI) || !strings.Contains(hdr, "Subject: the plans") ||
		strings.Contains(hdr, "body") {
		t.Errorf("returned header:\n%s", hdr)
	}
}

func TestBuildBypassableAndDefaults(t *testing.T) {
	r := sampleReport()
	r.Bypassable = true
	r.PolicyURL = ""
	r.EnvID = ""
	r.Arrival = time.Time{}
	r.Date = time.Time{}
	r.MessageID = ""
	r.Headers = nil
	r.ReportingMTA = "mx1"
	r.From = "postmaster@example.net"
	r.MessageIDDomain = "ids.example.net"
	r.Recipients[0].Status = "4.7.1" // a failure is permanent: reported as 5.0.0
	r.Recipients[1].Status = "5.07.1"
	r.Recipients[1].Diagnostic = ""
	data, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseReport(t, data)
	if len(p.parts) != 2 {
		t.Fatalf("%d parts without a header to return", len(p.parts))
	}
	if got := p.header.Get("From"); got != "Mail Delivery System <postmaster@example.net>" {
		t.Errorf("From %q", got)
	}
	if id := p.header.Get("Message-Id"); !strings.HasPrefix(id, "<ndr.") || !strings.HasSuffix(id, "@ids.example.net>") {
		t.Errorf("Message-ID %q", id)
	}
	if d, err := time.Parse(dateLayout, p.header.Get("Date")); err != nil || time.Since(d) > time.Minute {
		t.Errorf("Date %q: %v", p.header.Get("Date"), err)
	}
	g := p.groups[0]
	if g.Has("Original-Envelope-Id") || g.Has("Arrival-Date") || g.Get("Reporting-MTA") != "x-local-hostname; mx1" {
		t.Errorf("per-message group %q", fieldLines(g))
	}
	if s := p.groups[1].Get("Status"); s != "5.0.0" {
		t.Errorf("status %q", s)
	}
	if s := p.groups[2].Get("Status"); s != "5.0.0" || p.groups[2].Has("Diagnostic-Code") {
		t.Errorf("group %q", fieldLines(p.groups[2]))
	}
	text := string(p.parts[0].body)
	if !strings.Contains(text, "Bypassable:   yes") || !strings.Contains(text, "    "+sysURI) {
		t.Errorf("text part:\n%s", text)
	}

	// Two builds of the same report get different Message-IDs.
	data2, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	if p2 := parseReport(t, data2); p2.header.Get("Message-Id") == p.header.Get("Message-Id") {
		t.Error("Message-ID repeated")
	}
}

func TestBuildRefusesBadConfiguration(t *testing.T) {
	for name, mod := range map[string]func(*Report){
		"null reverse-path":  func(r *Report) { r.ReversePath = "<>" },
		"empty reverse-path": func(r *Report) { r.ReversePath = "" },
		"no recipients":      func(r *Report) { r.Recipients = nil },
		"no system URI":      func(r *Report) { r.SystemURI = "" },
		"system URI space":   func(r *Report) { r.SystemURI = "https://x.example/ a" },
		"policy URL CRLF":    func(r *Report) { r.PolicyURL = "https://x.example/\r\nBcc: x" },
		"service non-ASCII":  func(r *Report) { r.Service = "https://x.example/é" },
		"no reporting MTA":   func(r *Report) { r.ReportingMTA = "" },
		"no trace id":        func(r *Report) { r.TraceID = "\r\n" },
		"bad From":           func(r *Report) { r.From = "a b c" },
		"bad Message-ID":     func(r *Report) { r.MessageID = "<x>\r\nBcc: y" },
	} {
		r := sampleReport()
		mod(&r)
		if data, err := Build(r); err == nil {
			t.Errorf("%s: no error, built:\n%s", name, data)
		}
	}
}

// TestBuildHostile feeds values an attacker controls — the envelope, the
// reason a service copied from the message, the header — and checks the
// report stays well formed: no injected header field, MIME part or
// delivery-status field, and every recipient reported.
func TestBuildHostile(t *testing.T) {
	long := strings.Repeat("spam ", 400) // 2000 characters
	noSpace := strings.Repeat("x", 2000)
	cases := map[string]func(*Report){
		"CRLF in reason": func(r *Report) {
			r.Reason = "bad\r\nBcc: victim@example.com\r\n\r\n--boundary\r\nContent-Type: text/html"
		},
		"2000-char reason":  func(r *Report) { r.Reason = long },
		"2000-char word":    func(r *Report) { r.Reason = noSpace },
		"non-ASCII reason":  func(r *Report) { r.Reason = "Nachricht abgelehnt: Anhang „rechnung.exe“ – verboten \xff\xfe" },
		"CRLF in recipient": func(r *Report) { r.Recipients[0].Address = "x@example.net\r\nBcc: victim@example.com" },
		"LF in recipient": func(r *Report) {
			r.Recipients[1].Address = "y@example.net\nAction: delivered\n\nFinal-Recipient: rfc822; z@z"
		},
		"UTF-8 recipient": func(r *Report) { r.Recipients[0].Address = "jörg@exämple.de" },
		"long recipient":  func(r *Report) { r.Recipients[0].Address = noSpace + "@example.net" },
		"invalid UTF-8":   func(r *Report) { r.Recipients[0].Address = "\xff\x00@example.net" },
		"CRLF in reverse-path": func(r *Report) {
			r.ReversePath = "<alice@example.org>\r\nBcc: victim@example.com"
		},
		"UTF-8 reverse-path": func(r *Report) { r.ReversePath = "<ålice@exämple.org>" },
		"source route":       func(r *Report) { r.ReversePath = "<@relay1.example,@relay2.example:alice@example.org>" },
		"CRLF in diagnostic": func(r *Report) {
			r.Recipients[0].Diagnostic = "550 5.7.1 no\r\n\r\nFinal-Recipient: rfc822; evil@example.com\r\nAction: delivered"
		},
		"huge diagnostic": func(r *Report) {
			r.Recipients[0].Diagnostic = strings.Repeat("550-5.7.1 "+noSpace+"\r\n", 100) + "550 5.7.1 end"
		},
		"CRLF in via":   func(r *Report) { r.Recipients[0].Via = sysURI + "; id=1\r\nAction: delivered" },
		"huge via":      func(r *Report) { r.Recipients[0].Via = strings.Repeat(svcURI+"; action=analyzed, ", 500) },
		"via one piece": func(r *Report) { r.Recipients[0].Via = noSpace + "; a=" + noSpace },
		"bad ORCPT":     func(r *Report) { r.Recipients[0].ORCPT = "no semicolon\r\nAction: delivered" },
		"ORCPT 8-bit":   func(r *Report) { r.Recipients[0].ORCPT = "rfc822;p\xe4ul+0D+0A@example.net" },
		"ORCPT utf-8":   func(r *Report) { r.Recipients[0].ORCPT = `utf-8;j\x{F6}rg@example.de` },
		"ENVID CRLF":    func(r *Report) { r.EnvID = "abc+0D+0ABcc:+20x" },
		"ENVID raw":     func(r *Report) { r.EnvID = "abc\r\nBcc: x" },
		"ENVID long":    func(r *Report) { r.EnvID = strings.Repeat("+0D", 1000) },
		"Notify junk":   func(r *Report) { r.Recipients[0].Notify = "\r\nBcc: x" },
		"trace id junk": func(r *Report) { r.TraceID = "7Q F3\r\nBcc: x\"" },
		"header body boundary": func(r *Report) {
			r.Headers = []byte("Subject: x\r\n--=_opes-ndr_\r\nX: \xff\xfe bare\rCR\r\n" + strings.Repeat("Y", 3000) + "\r\n\x00\r\n\r\n--=_opes-ndr_--\r\n")
		},
		"header LF only": func(r *Report) { r.Headers = []byte("Subject: x\nFrom: a@b\n\nbody\n") },
		"header huge":    func(r *Report) { r.Headers = bytes.Repeat([]byte("X-Filler: "+strings.Repeat("f", 80)+"\r\n"), 10000) },
		"many recipients": func(r *Report) {
			for i := 0; i < 200; i++ {
				r.Recipients = append(r.Recipients, Recipient{Address: fmt.Sprintf("user%d@example.net", i), Status: "5.7.1"})
			}
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			r := sampleReport()
			mod(&r)
			data, err := Build(r)
			if err != nil {
				t.Fatal(err)
			}
			p := parseReport(t, data)
			checkStructure(t, r, p)
		})
	}
}

// checkStructure checks nothing was injected: the top header holds
// exactly our fields, the delivery-status exactly one group per recipient
// with exactly the fields we write.
func checkStructure(t *testing.T, r Report, p parsedReport) {
	t.Helper()
	var names []string
	for f := p.header.Fields(); f.Next(); {
		names = append(names, f.Key())
	}
	if got := strings.Join(names, ","); got != "From,To,Subject,Date,Message-Id,Auto-Submitted,Mime-Version,Content-Type" {
		t.Errorf("top header fields %s", got)
	}
	if to := p.header.Get("To"); to != "undisclosed-recipients:;" && to != "<"+ReturnPath(r.ReversePath)+">" {
		t.Errorf("To %q for reverse-path %q", to, r.ReversePath)
	}
	if len(p.groups) != 1+len(r.Recipients) {
		t.Fatalf("%d groups for %d recipients", len(p.groups), len(r.Recipients))
	}
	perMessage := "Reporting-Mta,Arrival-Date,X-Opes-System"
	if r.EnvID != "" {
		perMessage = "Original-Envelope-Id," + perMessage
	}
	if got := keys(p.groups[0]); got != perMessage {
		t.Errorf("per-message fields %s", got)
	}
	for i, rc := range r.Recipients {
		g := p.groups[i+1]
		want := "Final-Recipient,Action,Status"
		if rc.ORCPT != "" {
			want = "Original-Recipient," + want
		}
		if diagnosticCode(rc.Diagnostic) != "" {
			want += ",Diagnostic-Code"
		}
		want += ",Final-Log-Id"
		if textASCII(rc.Via, maxTraceValue) != "" {
			want += ",X-Opes-Via"
		}
		if got := keys(g); got != want {
			t.Errorf("recipient %d fields %s, want %s", i, got, want)
		}
		if g.Get("Action") != "failed" {
			t.Errorf("recipient %d action %q", i, g.Get("Action"))
		}
		fr := g.Get("Final-Recipient")
		if printableASCIIWithSpace(rc.Address) && len(rc.Address) <= maxFieldValue && strings.TrimSpace(rc.Address) == rc.Address {
			if fr != "rfc822; "+rc.Address {
				t.Errorf("recipient %d Final-Recipient %q", i, fr)
			}
		} else if !strings.HasPrefix(fr, "utf-8;") {
			t.Errorf("recipient %d Final-Recipient %q", i, fr)
		}
	}
	if strings.Contains(string(p.parts[0].body), "\nBcc:") {
		t.Errorf("text part carries an injected line:\n%s", p.parts[0].body)
	}
}

func keys(h textproto.Header) string {
	var out []string
	for f := h.Fields(); f.Next(); {
		out = append(out, f.Key())
	}
	return strings.Join(out, ",")
}

func TestBuildEncodings(t *testing.T) {
	r := sampleReport()
	r.Recipients[0].Address = "jörg@exämple.de"
	r.Reason = "Anhang „rechnung.exe“ verboten"
	r.Headers = []byte("Subject: =?utf-8?q?x?=\r\nX-Raw: grüße\r\n")
	data, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseReport(t, data)
	if fr := p.groups[1].Get("Final-Recipient"); fr != `utf-8; j\x{F6}rg@ex\x{E4}mple.de` {
		t.Errorf("Final-Recipient %q", fr)
	}
	if enc := p.parts[0].header.Get("Content-Transfer-Encoding"); enc != "quoted-printable" {
		t.Errorf("text encoding %q", enc)
	}
	// go-message decodes the quoted-printable, the UTF-8 text is intact.
	if text := string(p.parts[0].body); !strings.Contains(text, "<jörg@exämple.de>") || !strings.Contains(text, "„rechnung.exe“") {
		t.Errorf("text part:\n%s", text)
	}
	if hdr := string(p.parts[2].body); hdr != "Subject: =?utf-8?q?x?=\r\nX-Raw: grüße\r\n" {
		t.Errorf("returned header %q", hdr)
	}
}

func TestDiagnosticCode(t *testing.T) {
	for in, want := range map[string]string{
		"":                                 "",
		"550 5.7.1 refused":                "smtp; 550 5.7.1 refused",
		"smtp; 550 5.7.1 refused":          "smtp; 550 5.7.1 refused",
		"550-5.7.1 a\r\n550 5.7.1 b":       "smtp; 550-5.7.1 a\r\n 550 5.7.1 b",
		"550-5.7.1 a\n\n550 5.7.1 b\n":     "smtp; 550-5.7.1 a\r\n 550 5.7.1 b",
		"550 5.7.1 t\x00ab\tand \xc3\xa9.": "smtp; 550 5.7.1 t?ab and ??.",
	} {
		if got := diagnosticCode(in); got != want {
			t.Errorf("diagnosticCode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFoldList(t *testing.T) {
	v := sysURI + "; id=7QF3X2, " + svcURI + "; action=rejected; bypassable=no, " + svcURI + "2; action=analyzed"
	got := foldList(len("X-OPES-Via"), v)
	if strings.ReplaceAll(got, "\r\n", "") != v {
		t.Fatalf("folding changed the value: %q", got)
	}
	for i, l := range strings.Split("X-OPES-Via: "+got, "\r\n") {
		if len(l) > foldWidth {
			t.Errorf("line %d is %d long: %q", i, len(l), l)
		}
		if i > 0 && !strings.HasPrefix(l, " ") {
			t.Errorf("continuation line %d %q", i, l)
		}
	}
	// A piece longer than the width stays whole rather than being cut.
	long := strings.Repeat("a", 100) + "; b=c"
	if got := foldList(10, long); strings.ReplaceAll(got, "\r\n", "") != long {
		t.Errorf("long piece: %q", got)
	}
}

func TestReturnPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                             "",
		"<>":                           "",
		" < > ":                        "",
		"<alice@example.org>":          "alice@example.org",
		"alice@example.org":            "alice@example.org",
		"<@a.example,@b.example:x@y>":  "x@y",
		"<@a.example:Bob@Example.ORG>": "Bob@Example.ORG",
	} {
		if got := ReturnPath(in); got != want {
			t.Errorf("ReturnPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNeeded(t *testing.T) {
	rcpts := []Recipient{
		{Address: "none@x"},
		{Address: "failure@x", Notify: "FAILURE"},
		{Address: "lower@x", Notify: "delay, failure"},
		{Address: "never@x", Notify: "NEVER"},
		{Address: "never-lower@x", Notify: " never "},
		{Address: "success@x", Notify: "SUCCESS"},
		{Address: "success-delay@x", Notify: "SUCCESS,DELAY"},
		{Address: "invalid-never@x", Notify: "NEVER,FAILURE"}, // invalid: counts as absent
		{Address: "junk@x", Notify: "BOGUS"},                  // invalid: counts as absent
	}
	var got []string
	for _, rc := range Needed("<alice@example.org>", rcpts) {
		got = append(got, rc.Address)
	}
	if want := "none@x failure@x lower@x invalid-never@x junk@x"; strings.Join(got, " ") != want {
		t.Errorf("Needed = %v, want %s", got, want)
	}
	for _, rp := range []string{"", "<>", " <> "} {
		if n := Needed(rp, rcpts); len(n) != 0 {
			t.Errorf("Needed(%q) = %v for the null reverse-path", rp, n)
		}
	}
	// Reports to a postmaster or MAILER-DAEMON are sent: ours has a null
	// reverse-path and cannot loop.
	if n := Needed("<MAILER-DAEMON@example.org>", rcpts[:1]); len(n) != 1 {
		t.Errorf("MAILER-DAEMON reverse-path: %v", n)
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("Message refused", "paul@example.net", "<alice@example.org>", "550 5.7.1 no", "https://x/; id=1",
		"rfc822;paul@example.net", "ENV1", "FAILURE", []byte("Subject: x\r\n\r\nbody"))
	f.Add("a\r\nBcc: b", "\xff@\x00", "<\r\n>", "550-a\r\n550 b", "\r\n", "x", "+0D", "NEVER", []byte("\n\n"))
	f.Fuzz(func(t *testing.T, reason, addr, rp, diag, via, orcpt, envid, notify string, hdr []byte) {
		r := sampleReport()
		r.Reason, r.ReversePath, r.EnvID, r.Headers = reason, rp, envid, hdr
		r.Recipients[0] = Recipient{Address: addr, ORCPT: orcpt, Notify: notify, Status: "5.7.1", Diagnostic: diag, Via: via}
		data, err := Build(r)
		if err != nil {
			if ReturnPath(rp) != "" {
				t.Fatalf("Build failed on wire values: %v", err)
			}
			return
		}
		p := parseReport(t, data)
		checkStructure(t, r, p)
	})
}
