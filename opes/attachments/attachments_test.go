package attachments

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

var ctx = context.Background()

func mustNew(t *testing.T, src string) *Service {
	t.Helper()
	return servicetest.MustNew(t, New, "[options]\n"+src).(*Service)
}

// msg is a message as the processor holds it: top-level fields and body.
type msg struct {
	header [][2]string
	body   string
}

func (m msg) tx(t testing.TB) *opes.Transaction {
	t.Helper()
	return servicetest.NewTransaction(t, m.header, m.body)
}

func mixed(boundary string, parts ...string) msg {
	return msg{
		header: [][2]string{{"MIME-Version", "1.0"}, {"Content-Type", `multipart/mixed; boundary="` + boundary + `"`}},
		body:   servicetest.Multipart(boundary, parts...),
	}
}

var text = servicetest.Part("Content-Type: text/plain; charset=utf-8", "Hello,\r\nsee attached.\r\n")

func attachment(name, ctype string, data []byte) string {
	return servicetest.Part(fmt.Sprintf("Content-Type: %s\nContent-Disposition: attachment; filename=%q\nContent-Transfer-Encoding: base64", ctype, name), servicetest.Base64(data))
}

func pe() []byte {
	b := make([]byte, 1024)
	copy(b, "MZ")
	b[0x3c] = 0x80
	copy(b[0x80:], "PE\x00\x00")
	return b
}

type zipEntry struct {
	name   string
	data   string
	flags  uint16
	claims uint64 // raw entry claiming this uncompressed size, no data
}

func makeZip(t testing.TB, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		var w io.Writer
		var err error
		switch {
		case e.flags != 0 || e.claims != 0:
			w, err = zw.CreateRaw(&zip.FileHeader{Name: e.name, Method: zip.Store, Flags: e.flags,
				CompressedSize64: uint64(len(e.data)), UncompressedSize64: max(e.claims, uint64(len(e.data)))})
		default:
			w, err = zw.Create(e.name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func nested(levels int) msg {
	var b strings.Builder
	for i := 0; i < levels; i++ {
		fmt.Fprintf(&b, "--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n", i, i+1)
	}
	fmt.Fprintf(&b, "--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n--b%d--\r\n", levels, levels)
	for i := levels - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "\r\n--b%d--\r\n", i)
	}
	return msg{header: [][2]string{{"Content-Type", `multipart/mixed; boundary="b0"`}}, body: b.String()}
}

func manyParts(n int) msg {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = servicetest.Part("Content-Type: text/plain", "x")
	}
	return mixed("many", parts...)
}

func bomb(t testing.TB, members int, claims uint64) []byte {
	entries := make([]zipEntry, members)
	for i := range entries {
		entries[i] = zipEntry{name: fmt.Sprintf("%x", i), claims: claims}
	}
	return makeZip(t, entries...)
}

func TestScan(t *testing.T) {
	jsZip := makeZip(t, zipEntry{name: "docs/readme.txt", data: "hi"}, zipEntry{name: "docs/a.js", data: "WScript.Echo(1)"})
	encZip := makeZip(t, zipEntry{name: "secret.txt", data: "xxxxxxxxxxxx", flags: 1})
	cleanZip := makeZip(t, zipEntry{name: "report.pdf", data: "%PDF-1.4"})
	rfc822 := "From: a@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"inner\"\r\n\r\n" +
		servicetest.Multipart("inner", text, attachment("tool.EXE", "application/octet-stream", []byte("data")))
	tests := []struct {
		name   string
		opts   string
		m      msg
		kind   string // "" for no finding
		reason string // substring of the finding
	}{
		{"clean multipart", "", mixed("b1", text, attachment("report.pdf", "application/pdf", []byte("%PDF-1.4\n..."))), "", ""},
		{"clean zip", "", mixed("b1", text, attachment("r.zip", "application/zip", cleanZip)), "", ""},
		{"single part text", "", msg{header: [][2]string{{"Subject", "hi"}}, body: "just text\r\n"}, "", ""},
		{"empty body", "", msg{}, "", ""},
		{"exe by name", "", mixed("b1", text, attachment("setup.exe", "application/octet-stream", []byte("x"))), FindingExtension, ".exe (setup.exe)"},
		{"upper case extension", "", mixed("b1", attachment("SETUP.ExE", "application/octet-stream", []byte("x"))), FindingExtension, ".exe"},
		{"trailing dot", "", mixed("b1", attachment("run.bat.", "application/octet-stream", []byte("x"))), FindingExtension, ".bat"},
		{"name only in content-type", "", mixed("b1", servicetest.Part("Content-Type: application/octet-stream; name=\"x.scr\"", "x")), FindingExtension, ".scr"},
		{"RFC 2231 encoded", "", mixed("b1", servicetest.Part("Content-Type: application/pdf\nContent-Disposition: attachment; filename*=UTF-8''invoice%2Epdf%2Eexe", "x")),
			FindingDoubleExtension, ".pdf.exe (invoice.pdf.exe)"},
		{"RFC 2231 continued", "", mixed("b1", servicetest.Part("Content-Type: application/pdf\nContent-Disposition: attachment;\n filename*0*=UTF-8''very%20long%20;\n filename*1=\"name.scr\"", "x")),
			FindingExtension, ".scr (very long name.scr)"},
		{"RFC 2047 encoded", "", mixed("b1", servicetest.Part("Content-Type: application/octet-stream; name=\"=?UTF-8?B?cmVjaHBuZy5qcw==?=\"", "x")), FindingExtension, ".js"},
		{"unparseable params still named", "", mixed("b1", servicetest.Part("Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=a b.vbs; x", "x")), FindingExtension, ".vbs"},
		{"double extension", "", mixed("b1", attachment("invoice.pdf.exe", "application/pdf", []byte("x"))), FindingDoubleExtension, ".pdf.exe"},
		{"blocked declared type", "", mixed("b1", attachment("a.bin", "application/x-msdownload", []byte("x"))), FindingType, "application/x-msdownload"},
		{"sniffed PE in png", "", mixed("b1", attachment("cat.png", "image/png", pe())), FindingType, "application/x-msdownload (cat.png)"},
		{"sniffed ELF", "", mixed("b1", attachment("a.txt", "text/plain", []byte("\x7fELF\x02\x01\x01"))), FindingType, "application/x-executable"},
		{"zip with js", "", mixed("b1", text, attachment("files.zip", "application/zip", jsZip)), FindingExtension, ".js (files.zip: docs/a.js)"},
		{"zip declared as pdf", "", mixed("b1", attachment("doc.pdf", "application/pdf", jsZip)), FindingExtension, "a.js"},
		{"encrypted zip", "", mixed("b1", attachment("s.zip", "application/zip", encZip)), FindingEncrypted, "(s.zip)"},
		{"encrypted zip allowed", "block_encrypted_archives = false", mixed("b1", attachment("s.zip", "application/zip", encZip)), "", ""},
		{"zip above max_archive_size not listed", "max_archive_size = 100", mixed("b1", attachment("files.zip", "application/zip", jsZip)), "", ""},
		{"js in a zip in a zip", "", mixed("b1", attachment("outer.zip", "application/zip", makeZip(t, zipEntry{name: "readme.txt", data: "hi"}, zipEntry{name: "inner.ZIP", data: string(jsZip)}))), FindingExtension, ".js (outer.zip: inner.ZIP: docs/a.js)"},
		{"clean zip in a zip", "", mixed("b1", attachment("outer.zip", "application/zip", makeZip(t, zipEntry{name: "inner.zip", data: string(cleanZip)}))), "", ""},
		{"zips nested five deep", "", mixed("b1", attachment("n.zip", "application/zip", nest(t, cleanZip, 5))), FindingArchiveBomb, "nested more than 4 deep"},
		{"zip claiming 2 GiB", "", mixed("b1", attachment("b.zip", "application/zip", bomb(t, 200, 10<<20))), FindingArchiveBomb, "claims more than 1 GiB"},
		{"nested rfc822 with exe", "", mixed("b1", text, servicetest.Part("Content-Type: message/rfc822", rfc822)), FindingExtension, ".exe (tool.EXE)"},
		{"custom extensions", `block_extensions = ["PDF"]`, mixed("b1", attachment("setup.exe", "application/octet-stream", []byte("x")), attachment("r.pdf", "application/pdf", []byte("x"))), FindingExtension, ".pdf"},
		{"unknown charset and encoding", "", mixed("b1", servicetest.Part("Content-Type: text/plain; charset=x-bogus\nContent-Transfer-Encoding: x-uu", "abc"), attachment("z.com", "application/octet-stream", []byte("x"))), FindingExtension, ".com"},

		// Hostile input.
		{"100 levels", "", nested(100), FindingTooDeep, "more than 20 levels"},
		{"20 levels fit", "", nested(19), "", ""},
		{"10000 parts", "", manyParts(10000), FindingTooManyParts, "more than 1000"},
		{"rfc822 nesting counts", "max_depth = 2", mixed("b1", servicetest.Part("Content-Type: message/rfc822", rfc822)), FindingTooDeep, ""},
		{"missing closing boundary", "", msg{header: mixed("b1").header, body: "--b1\r\nContent-Type: text/plain\r\n\r\ntext\r\n--b1\r\nContent-Type: application/pdf\r\n\r\ntruncated"}, FindingMalformed, ""},
		{"no boundary", "", msg{header: [][2]string{{"Content-Type", "multipart/mixed"}}, body: "x\r\n"}, FindingMalformed, "without boundary"},
		{"bad base64", "", mixed("b1", servicetest.Part("Content-Type: application/pdf\nContent-Transfer-Encoding: base64", "!!!! not base64 ****\r\n")), FindingMalformed, "base64"},
		{"header line without colon", "", mixed("b1", servicetest.Part("Content-Type: text/plain\nthis is no header", "x")), FindingMalformed, "malformed MIME header line"},
		{"max_scan_size", "max_scan_size = 1024", mixed("b1", attachment("a.pdf", "application/pdf", make([]byte, 4096))), FindingTooLarge, ""},
		{"max_scan_size exactly", "max_scan_size = 1024", msg{body: strings.Repeat("x\r\n", 1024/3) + "x"}, "", ""},
		{"long name bounded", "", mixed("b1", attachment(strings.Repeat("a", 300)+".pdf.exe", "application/pdf", []byte("x"))), FindingDoubleExtension, "aaa...)"},
		{"long line then more", "", msg{body: "a\r\n" + strings.Repeat("x", maxLine+10) + "\r\nmore\r\n"}, FindingMalformed, "line longer"},
		{"long line", "", msg{body: strings.Repeat("x", maxLine+10)}, FindingMalformed, "line longer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, tt.opts)
			start := time.Now()
			f, err := s.Scan(ctx, tt.m.tx(t))
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			if d := time.Since(start); d > slow*5*time.Second {
				t.Errorf("Scan took %v", d)
			}
			if tt.kind == "" {
				if f != nil {
					t.Fatalf("finding %q, want none", f)
				}
				return
			}
			if f == nil {
				t.Fatalf("no finding, want %s", tt.kind)
			}
			if f.Kind != tt.kind || !strings.Contains(f.String(), tt.reason) {
				t.Errorf("finding %q (kind %s), want kind %s containing %q", f, f.Kind, tt.kind, tt.reason)
			}
			for _, c := range []byte(f.String()) {
				if c < 0x20 || c > 0x7e {
					t.Errorf("reason %q has byte 0x%02x", f, c)
				}
			}
		})
	}
}

func TestArchiveBomb(t *testing.T) {
	// 100 000 central directory entries, each claiming 10 MiB: about 1 TB.
	start := time.Now()
	z := bomb(t, 100000, 10<<20)
	m := mixed("b1", text, attachment("bomb.zip", "application/zip", z))
	t.Logf("zip %d octets, built in %v", len(z), time.Since(start))
	start = time.Now()
	f, err := mustNew(t, "").Scan(ctx, m.tx(t))
	if err != nil {
		t.Fatal(err)
	}
	if f == nil || f.Kind != FindingArchiveBomb || !strings.Contains(f.String(), "100000 members") {
		t.Fatalf("finding %v, want archive-bomb of 100000 members", f)
	}
	t.Logf("scanned in %v", time.Since(start))
}

// lineWriter breaks base64 into 76-octet lines.
type lineWriter struct {
	w   io.Writer
	col int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	for _, c := range p {
		if _, err := l.w.Write([]byte{c}); err != nil {
			return 0, err
		}
		if l.col++; l.col == 76 {
			if _, err := l.w.Write([]byte("\r\n")); err != nil {
				return 0, err
			}
			l.col = 0
		}
	}
	return len(p), nil
}

func TestLargePartStreams(t *testing.T) {
	const size = 30 << 20
	for _, name := range []string{"big.bin", "big.zip"} {
		t.Run(name, func(t *testing.T) {
			b := opes.NewBody(opes.BodyOptions{})
			defer b.Close()
			h := opes.NewHeader()
			_ = h.Add("Content-Type", `multipart/mixed; boundary="b1"`)
			io.WriteString(b, "--b1\r\n"+text+"\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\""+name+"\"\r\n\r\n")
			bw := bufioWriter(b)
			enc := base64.NewEncoder(base64.StdEncoding, &lineWriter{w: bw})
			chunk := make([]byte, 64<<10)
			copy(chunk, "PK\x03\x04") // looks like a zip: must not be spooled above max_archive_size
			for n := 0; n < size; n += len(chunk) {
				enc.Write(chunk)
				chunk[0] = 0
			}
			enc.Close()
			bw.Flush()
			io.WriteString(b, "\r\n--b1--\r\n")
			tx := &opes.Transaction{Header: h, Body: b}

			s := mustNew(t, "")
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			f, err := s.Scan(ctx, tx)
			d := time.Since(start)
			runtime.ReadMemStats(&after)
			if err != nil || f != nil {
				t.Fatalf("Scan = %v, %v; want no finding", f, err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("body %d octets scanned in %v, %d octets allocated", b.Size(), d, alloc)
			if alloc > 4<<20 {
				t.Errorf("scan allocated %d octets for a 30 MB part", alloc)
			}
			if d > slow*5*time.Second {
				t.Errorf("scan took %v", d)
			}
		})
	}
}

type flusher interface {
	io.Writer
	Flush() error
}

func bufioWriter(w io.Writer) flusher {
	return &bufWriter{w: w}
}

// bufWriter batches the one-octet writes of lineWriter.
type bufWriter struct {
	w   io.Writer
	buf []byte
}

func (b *bufWriter) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) >= 64<<10 {
		return len(p), b.Flush()
	}
	return len(p), nil
}

func (b *bufWriter) Flush() error {
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

func TestScanContext(t *testing.T) {
	c, cancel := context.WithCancel(ctx)
	cancel()
	_, err := mustNew(t, "").Scan(c, manyParts(10).tx(t))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Scan with ended context = %v, want context.Canceled", err)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct{ src, field, msg string }{
		{`action = "drop"`, "action", "unknown action"},
		{`malformed_action = "replace"`, "malformed_action", "no part to replace"},
		{`malformed_action = "x"`, "malformed_action", "unknown action"},
		{`block_extensions = ["exe", "a.b"]`, "block_extensions[2]", "not a file name extension"},
		{`block_extensions = [""]`, "block_extensions[1]", "not a file name extension"},
		{`block_types = ["nonsense"]`, "block_types[1]", "not a media type"},
		{`max_depth = -1`, "max_depth", "not between"},
		{`max_parts = 10000000`, "max_parts", "not between"},
		{`max_archive_size = 2000000000`, "max_archive_size", "not between"},
		{`max_scan_size = 10`, "max_scan_size", "not between"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			servicetest.WantFieldError(t, New, "[options]\n"+tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nmax_depth = \"x\"\n", "attachments")
	s, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if got := s.Needs(); got != want {
		t.Errorf("Needs = %+v, want %+v", got, want)
	}
}

func TestActions(t *testing.T) {
	exe := mixed("b1", text, servicetest.Part("Content-Type: application/pdf\nContent-Disposition: attachment; filename=\"in\u00e9voice\x01.pdf.exe\"", "x"))
	bad := mixed("b1", servicetest.Part("Content-Type: text/plain\nno colon here", "x"))
	tests := []struct {
		name   string
		opts   string
		m      msg
		kind   opes.VerdictKind
		action string
		header string
	}{
		{"clean", "", mixed("b1", text), opes.Continue, "analyzed", ""},
		{"reject", "", exe, opes.Reject, "rejected", ""},
		{"quarantine", `action = "quarantine"`, exe, opes.Quarantine, "quarantined", ""},
		{"tag", `action = "tag"`, exe, opes.Continue, "header-added", "blocked=double-extension .pdf.exe (in?voice?.pdf.exe)"},
		{"malformed rejects by default", `action = "tag"`, bad, opes.Reject, "rejected", ""},
		{"malformed tagged", `malformed_action = "tag"`, bad, opes.Continue, "header-added", "blocked=malformed message: malformed MIME header line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := tt.m.tx(t)
			st := mustNew(t, tt.opts).Begin(tx)
			defer st.Close()
			v, err := st.EndOfMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != tt.kind || v.Action != tt.action {
				t.Errorf("verdict %v/%s, want %v/%s (%s)", v.Kind, v.Action, tt.kind, tt.action, v.Reason)
			}
			if v.Kind == opes.Reject {
				if v.Reply.Code != 554 || v.Reply.Enhanced != "5.7.1" || !strings.HasPrefix(v.Reply.Text, "Attachment not accepted: ") {
					t.Errorf("reply %+v", v.Reply)
				}
			}
			if got := tx.Header.Get(Field); got != tt.header {
				t.Errorf("%s = %q, want %q", Field, got, tt.header)
			}
		})
	}
}

// processor runs the service with the options src from connect on.
func processor(t *testing.T, src string) *opes.Processor {
	t.Helper()
	const sys = "https://mx1.example.net/opes/"
	spec := &opes.ServiceSpec{Name: "attachments", Kind: "attachments", URI: sys + "svc/attachments", Impl: mustNew(t, src)}
	return servicetest.NewProcessor(t, sys, opes.StageConnect, opes.Limits{}, spec)
}

// deliver drives one transaction through a session as the milter bridge
// does and returns the end-of-message outcome and the delivered body.
func deliver(t *testing.T, proc *opes.Processor, m msg) (*opes.Outcome, string) {
	t.Helper()
	s := proc.NewSession()
	defer s.Close()
	s.Connect(ctx)
	if o := s.Mail(ctx, opes.Address{Addr: "a@example.org"}); o.Kind != opes.Continue {
		t.Fatalf("MAIL: %v", o.Kind)
	}
	s.Rcpt(ctx, opes.Address{Addr: "b@example.net"})
	s.Data(ctx)
	for _, f := range m.header {
		s.Header(f[0], " "+f[1])
	}
	s.EndOfHeaders(ctx)
	if o := s.BodyChunk([]byte(m.body)); o != nil {
		t.Fatalf("body: %v", o.Kind)
	}
	o := s.EndOfMessage(ctx, "4ABCD12")
	return o, servicetest.DeliveredBody(t, o, m.body)
}

func TestProcessor(t *testing.T) {
	proc := processor(t, "")
	for _, tt := range []struct {
		name string
		m    msg
		want opes.VerdictKind
	}{
		{"exe", mixed("b1", text, attachment("setup.exe", "application/octet-stream", []byte("x"))), opes.Reject},
		{"clean", mixed("b1", text), opes.Continue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, _ := deliver(t, proc, tt.m)
			if o.Kind != tt.want {
				t.Fatalf("outcome %v, want %v", o.Kind, tt.want)
			}
			if tt.want != opes.Reject {
				return
			}
			reply := o.Reply.String()
			for _, want := range []string{"554-5.7.1", "Attachment not accepted: blocked-extension .exe (setup.exe)", "svc/attachments; action=rejected"} {
				if !strings.Contains(reply, want) {
					t.Errorf("reply lacks %q:\n%s", want, reply)
				}
			}
		})
	}
}

func TestReplace(t *testing.T) {
	exe := attachment("setup.exe", "application/octet-stream", []byte("MZ"))
	pdf := attachment("r.pdf", "application/pdf", []byte("%PDF-1.4"))
	js := attachment("a.js", "application/javascript", []byte("x"))
	note := func(reason string) string {
		return notice(&Finding{Kind: "x"})[:strings.Index(notice(&Finding{Kind: "x"}), "filter: ")+8] + reason + ".\r\n"
	}
	alt := servicetest.Part("Content-Type: multipart/alternative; boundary=\"alt\"", servicetest.Multipart("alt", text, exe))
	rfc822 := "Subject: fwd\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n" + servicetest.Multipart("in", text, exe)
	many := make([]string, 11)
	for i := range many {
		many[i] = exe
	}
	tests := []struct {
		name   string
		m      msg
		kind   opes.VerdictKind
		want   string // delivered body
		reject string // reply substring when refused
	}{
		{"middle part", mixed("b1", text, exe, pdf), opes.Continue,
			servicetest.Multipart("b1", text, note("blocked-extension .exe (setup.exe)"), pdf), ""},
		{"two parts", mixed("b1", js, text, exe), opes.Continue,
			servicetest.Multipart("b1", note("blocked-extension .js (a.js)"), text, note("blocked-extension .exe (setup.exe)")), ""},
		{"nested alternative", mixed("b1", pdf, alt), opes.Continue,
			servicetest.Multipart("b1", pdf, servicetest.Part("Content-Type: multipart/alternative; boundary=\"alt\"", servicetest.Multipart("alt", text, note("blocked-extension .exe (setup.exe)")))), ""},
		{"attached message replaced whole", mixed("b1", text, servicetest.Part("Content-Type: message/rfc822", rfc822)), opes.Continue,
			servicetest.Multipart("b1", text, note("blocked-extension .exe (setup.exe)")), ""},
		{"clean unchanged", mixed("b1", text, pdf), opes.Continue, servicetest.Multipart("b1", text, pdf), ""},
		{"single part refused", msg{header: [][2]string{{"Content-Type", "application/octet-stream; name=x.exe"}}, body: "MZ\r\n"}, opes.Reject, "", "blocked-extension .exe"},
		{"malformed refused", mixed("b1", servicetest.Part("Content-Type: text/plain\nno colon", "x")), opes.Reject, "", "malformed"},
		{"too many blocked parts refused", mixed("b1", many...), opes.Reject, "", "blocked-extension .exe"},
	}
	proc := processor(t, `action = "replace"`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, body := deliver(t, proc, tt.m)
			if o.Kind != tt.kind {
				t.Fatalf("outcome %v, want %v", o.Kind, tt.kind)
			}
			if tt.kind == opes.Reject {
				if reply := o.Reply.String(); !strings.Contains(reply, tt.reject) || !strings.Contains(reply, "554-5.7.1") {
					t.Errorf("reply lacks %q:\n%s", tt.reject, reply)
				}
				return
			}
			if body != tt.want {
				t.Errorf("body:\n%s\nwant:\n%s", body, tt.want)
			}
			replaced := body != tt.m.body
			if trace := fmt.Sprint(o.HeaderChanges); replaced != strings.Contains(trace, "svc/attachments; action=part-replaced") {
				t.Errorf("replaced %v, but trace is %s", replaced, trace)
			}
		})
	}
}

// nest wraps z in depth zips, each holding the previous as "inner.zip".
func nest(t testing.TB, z []byte, depth int) []byte {
	for range depth {
		z = makeZip(t, zipEntry{name: "inner.zip", data: string(z)})
	}
	return z
}
