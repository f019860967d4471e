package links

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // the test reads Latin-1 back
	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

var ctx = context.Background()

const sys = "https://mx1.example.net/opes/"

// fixture is a configured service with its store, key and a running
// HTTP server that serves its handler under MountPath.
type fixture struct {
	svc  *Service
	dir  string
	proc *opes.Processor
	srv  *httptest.Server
	skew atomic.Int64 // added to the service's clock
}

func writeKey(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "links.key")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newFixture(t *testing.T, extra string) *fixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := writeKey(t, []byte("0123456789abcdef0123456789abcdef-test-key"))
	src := fmt.Sprintf("[options]\ndir = %q\nkey_file = %q\nbase_url = %q\n%s", dir, key, "http://"+ln.Addr().String()+"/attachments", extra)
	impl, err := New(optiontest.Decoder(t, src))
	if err != nil {
		_ = ln.Close()
		t.Fatalf("New: %v", err)
	}
	svc := impl.(*Service)
	f := &fixture{svc: svc, dir: dir}
	// The clock is set before the server starts and read through an
	// atomic: tests move it while the server runs.
	svc.now = func() time.Time { return time.Now().Add(time.Duration(f.skew.Load())) }
	mux := http.NewServeMux()
	mux.Handle("GET "+MountPath, svc.Handler())
	srv := httptest.NewUnstartedServer(mux)
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)

	spec := &opes.ServiceSpec{Name: "links", Kind: "links", URI: sys + "svc/links", Impl: svc}
	f.proc, f.srv = servicetest.NewProcessor(t, sys, opes.StageConnect, opes.Limits{}, spec), srv
	return f
}

// result is what the MTA would deliver.
type result struct {
	o      *opes.Outcome
	header []opes.HeaderField
	body   string
	// alloc is the heap allocated during EndOfMessage.
	alloc uint64
}

func (r *result) via() string {
	for _, f := range r.header {
		if strings.EqualFold(f.Name, opes.FieldVia) {
			return strings.ReplaceAll(f.Value, "\r\n\t", " ")
		}
	}
	return ""
}

func (r *result) wire() string { return opes.FormatHeader(r.header) + "\r\n" + r.body }

// deliver drives one transaction through a session as the milter bridge
// does (see opes/processor_test.go runMessage); body is fed in chunks.
func (f *fixture) deliver(t *testing.T, header [][2]string, body io.Reader) *result {
	t.Helper()
	s := f.proc.NewSession()
	defer s.Close()
	s.Connect(ctx)
	if o := s.Mail(ctx, opes.Address{Addr: "a@example.org"}); o.Kind != opes.Continue {
		t.Fatalf("MAIL: %v", o.Kind)
	}
	s.Rcpt(ctx, opes.Address{Addr: "b@example.net"})
	s.Data(ctx)
	for _, h := range header {
		s.Header(h[0], " "+h[1])
	}
	if o := s.EndOfHeaders(ctx); o.Kind != opes.Continue {
		t.Fatalf("end of headers: %v", o.Kind)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if o := s.BodyChunk(buf[:n]); o != nil {
				t.Fatalf("body: %v", o.Kind)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	o := s.EndOfMessage(ctx, "4ABCD12")
	runtime.ReadMemStats(&after)
	r := &result{o: o, alloc: after.TotalAlloc - before.TotalAlloc}
	var fields []opes.HeaderField
	for _, h := range header {
		fields = append(fields, opes.HeaderField{Name: h[0], Value: " " + h[1]})
	}
	r.header = opes.ApplyChanges(fields, o.HeaderChanges)
	if o.Body != nil {
		b, err := io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
		r.body = string(b)
	}
	return r
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func pdf(n int) []byte {
	b := randomBytes(7, n)
	copy(b, "%PDF-1.4\n")
	return b
}

func attachment(name, ctype string, data []byte) string {
	return servicetest.Part(fmt.Sprintf("Content-Type: %s\nContent-Disposition: attachment; filename=%q\nContent-Transfer-Encoding: base64", ctype, name), servicetest.Base64(data))
}

var (
	plain  = servicetest.Part("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit", "Hello,\r\nsee attached.\r\n")
	htmlQP = servicetest.Part("Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
		"<html><body><p>Hello, see attached =E2=80=93 thanks.</p></body></html>\r\n")
	alternative = servicetest.Part(`Content-Type: multipart/alternative; boundary="alt"`, servicetest.Multipart("alt", plain, htmlQP))
)

func mixedHeader(boundary string) [][2]string {
	return [][2]string{{"From", "a@example.org"}, {"To", "b@example.net"}, {"Subject", "report"},
		{"MIME-Version", "1.0"}, {"Content-Type", `multipart/mixed; boundary="` + boundary + `"`}}
}

// parsed is the delivered message read back with go-message.
type parsed struct {
	texts       map[string]string // decoded body of the first part of each text type
	attachments []string          // file names of parts that are attachments
	types       []string
}

func parse(t *testing.T, wire string) *parsed {
	t.Helper()
	e, err := gomessage.Read(strings.NewReader(wire))
	if err != nil {
		t.Fatalf("delivered message does not parse: %v\n%s", err, wire)
	}
	p := &parsed{texts: map[string]string{}}
	err = e.Walk(func(path []int, e *gomessage.Entity, err error) error {
		if err != nil {
			return err
		}
		mt, _, err := e.Header.ContentType()
		if err != nil {
			return fmt.Errorf("part %v: %w", path, err)
		}
		p.types = append(p.types, mt)
		if strings.HasPrefix(mt, "multipart/") {
			return nil
		}
		body, err := io.ReadAll(e.Body)
		if err != nil {
			return fmt.Errorf("part %v: %w", path, err)
		}
		disp, params, _ := e.Header.ContentDisposition()
		if disp == "attachment" || params["filename"] != "" {
			p.attachments = append(p.attachments, params["filename"])
		}
		if _, ok := p.texts[mt]; !ok && strings.HasPrefix(mt, "text/") {
			p.texts[mt] = string(body)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk delivered message: %v\n%s", err, wire)
	}
	return p
}

var linkRE = regexp.MustCompile(`https?://[^\s"<>]+/attachments/[0-9a-f]{64}/[^\s"<>]+`)

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestAttachmentBecomesLink(t *testing.T) {
	f := newFixture(t, "")
	doc := pdf(2 << 20)
	body := servicetest.Multipart("mix", alternative, attachment("report.pdf", "application/pdf", doc))
	r := f.deliver(t, mixedHeader("mix"), strings.NewReader(body))
	if r.o.Kind != opes.Continue || r.o.Body == nil {
		t.Fatalf("outcome %v, body replaced %v", r.o.Kind, r.o.Body != nil)
	}
	if !strings.Contains(r.via(), "svc/links; action=part-replaced") {
		t.Errorf("trace %q lacks part-replaced", r.via())
	}
	if len(r.body) > 64<<10 {
		t.Errorf("delivered body is %d octets: the attachment is still in it", len(r.body))
	}
	p := parse(t, r.wire())
	if len(p.attachments) != 0 {
		t.Errorf("delivered message still has attachments %q", p.attachments)
	}
	plainText, htmlText := p.texts["text/plain"], p.texts["text/html"]
	if !strings.HasPrefix(plainText, "Hello,\r\nsee attached.\r\n") {
		t.Errorf("plain text lost its content: %q", plainText)
	}
	link := linkRE.FindString(plainText)
	if link == "" {
		t.Fatalf("no link in the plain text:\n%s", plainText)
	}
	if !strings.Contains(plainText, "report.pdf (2.0 MiB)") {
		t.Errorf("plain text does not name the file:\n%s", plainText)
	}
	hlink := linkRE.FindString(htmlText)
	if hlink == "" || html.UnescapeString(hlink) != link {
		t.Errorf("HTML link %q, plain link %q", hlink, link)
	}
	if i, j := strings.Index(htmlText, "opes-links"), strings.Index(htmlText, "</body>"); i < 0 || j < i {
		t.Errorf("links not before </body>:\n%s", htmlText)
	}
	if !strings.Contains(htmlText, "Hello, see attached \u2013 thanks.") {
		t.Errorf("HTML text changed:\n%s", htmlText)
	}

	want := sha256.Sum256(doc)
	sum := hex.EncodeToString(want[:])
	if !strings.Contains(link, "/attachments/"+sum+"/report.pdf?e=") {
		t.Errorf("link %q does not name the content's SHA-256", link)
	}
	var meta Meta
	if data, err := os.ReadFile(filepath.Join(f.dir, sum+".json")); err != nil {
		t.Fatalf("sidecar: %v", err)
	} else if err := json.Unmarshal(data, &meta); err != nil || meta.ContentType != "application/pdf" || meta.Filename != "report.pdf" || meta.Size != int64(len(doc)) {
		t.Errorf("sidecar %s (%v)", data, err)
	}

	resp, got := get(t, link)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET link: %s", resp.Status)
	}
	if sha256.Sum256(got) != want {
		t.Errorf("fetched %d octets that differ from the %d-octet attachment", len(got), len(doc))
	}
	for k, v := range map[string]string{
		"Content-Type":           "application/pdf",
		"Content-Disposition":    `attachment; filename="report.pdf"; filename*=UTF-8''report.pdf`,
		"X-Content-Type-Options": "nosniff",
		"Accept-Ranges":          "bytes",
	} {
		if resp.Header.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, resp.Header.Get(k), v)
		}
	}
	resp, got = get(t, link, "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, doc[100:200]) {
		t.Errorf("range request: %s, %d octets", resp.Status, len(got))
	}

	// Tampering with any signed element is refused.
	for _, bad := range []string{
		flipLast(link),
		strings.Replace(link, "&s=", "&s=A", 1)[:len(link)],
		strings.Replace(link, "/report.pdf?", "/report.exe?", 1),
		regexp.MustCompile(`e=\d+`).ReplaceAllStringFunc(link, func(e string) string { return e + "0" }),
		strings.Replace(link, sum, strings.Repeat("0", 64), 1),
		regexp.MustCompile(`&s=.*`).ReplaceAllString(link, ""),
	} {
		if resp, _ := get(t, bad); resp.StatusCode != http.StatusForbidden {
			t.Errorf("tampered %s: %s, want 403", bad, resp.Status)
		}
	}

	// After the TTL the link is gone; the clock is the service's.
	f.skew.Store(int64(DefaultTTL - time.Minute))
	if resp, _ := get(t, link); resp.StatusCode != http.StatusOK {
		t.Errorf("link shortly before expiry: %s, want 200", resp.Status)
	}
	f.skew.Store(int64(DefaultTTL + time.Minute))
	if resp, _ := get(t, link); resp.StatusCode != http.StatusGone {
		t.Errorf("expired link: %s, want 410", resp.Status)
	}
	f.skew.Store(0)

	if err := os.Remove(filepath.Join(f.dir, sum)); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, link); resp.StatusCode != http.StatusNotFound {
		t.Errorf("removed file: %s, want 404", resp.Status)
	}
}

func TestShapes(t *testing.T) {
	doc := pdf(1<<20 + 10)
	sum := sha256.Sum256(doc)
	hexSum := hex.EncodeToString(sum[:])
	latin1 := servicetest.Part("Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable", "Gr=FC=DFe\r\n")
	b64plain := servicetest.Part("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64", servicetest.Base64([]byte("line one\nline two")))
	small := attachment("small.pdf", "application/pdf", pdf(1000))
	for _, tt := range []struct {
		name    string
		header  [][2]string
		body    string
		changed bool
		check   func(t *testing.T, r *result, p *parsed)
	}{
		{"small attachment stays", mixedHeader("m"), servicetest.Multipart("m", plain, small), false, nil},
		{"no text part: link part inserted", mixedHeader("m"), servicetest.Multipart("m", attachment("a.pdf", "application/pdf", doc)), true,
			func(t *testing.T, r *result, p *parsed) {
				if !strings.Contains(p.texts["text/plain"], "/"+hexSum+"/a.pdf?e=") {
					t.Errorf("inserted part: %q", p.texts["text/plain"])
				}
			}},
		{"whole message is the attachment",
			[][2]string{{"Subject", "scan"}, {"Content-Type", "application/pdf; name=scan.pdf"}, {"Content-Transfer-Encoding", "base64"}, {"Content-Disposition", "attachment; filename=scan.pdf"}},
			servicetest.Base64(doc), true,
			func(t *testing.T, r *result, p *parsed) {
				if len(p.types) != 1 || p.types[0] != "text/plain" || !strings.Contains(p.texts["text/plain"], "/scan.pdf?e=") {
					t.Errorf("types %v, text %q", p.types, p.texts["text/plain"])
				}
			}},
		{"related root is wrapped",
			[][2]string{{"Content-Type", `multipart/related; boundary="r"`}},
			servicetest.Multipart("r", servicetest.Part("Content-Type: image/png; name=big.png\nContent-Transfer-Encoding: base64", servicetest.Base64(doc))), true,
			func(t *testing.T, r *result, p *parsed) {
				if p.types[0] != "multipart/mixed" || p.types[2] != "multipart/related" || !strings.Contains(p.texts["text/plain"], "big.png") {
					t.Errorf("types %v, text %q", p.types, p.texts["text/plain"])
				}
			}},
		{"latin-1 text keeps its charset", mixedHeader("m"), servicetest.Multipart("m", latin1, attachment("März.pdf", "application/pdf", doc)), true,
			func(t *testing.T, r *result, p *parsed) {
				text := p.texts["text/plain"] // go-message decodes to UTF-8
				if !strings.HasPrefix(text, "Grüße\r\n") || !strings.Contains(text, "* M_rz.pdf (1.0 MiB)") || !strings.Contains(text, "/M%C3%A4rz.pdf?e=") {
					t.Errorf("text %q", text)
				}
				if !strings.Contains(r.body, "charset=iso-8859-1") {
					t.Errorf("charset changed:\n%s", r.body)
				}
			}},
		{"base64 text stays base64 with LF", mixedHeader("m"), servicetest.Multipart("m", b64plain, attachment("Bericht März.pdf", "application/pdf", doc)), true,
			func(t *testing.T, r *result, p *parsed) {
				text := p.texts["text/plain"]
				if !strings.HasPrefix(text, "line one\nline two\n") || strings.Contains(text, "\r") || !strings.Contains(text, "* Bericht März.pdf (1.0 MiB)\n") {
					t.Errorf("text %q", text)
				}
			}},
		{"inline text with a name is never moved", mixedHeader("m"),
			servicetest.Multipart("m", plain, servicetest.Part("Content-Type: text/plain; name=log.txt\nContent-Disposition: inline; filename=log.txt", strings.Repeat("log line\r\n", 120000))), false, nil},
		{"signed message untouched",
			[][2]string{{"Content-Type", `multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="s"`}},
			servicetest.Multipart("s", servicetest.Part(`Content-Type: multipart/mixed; boundary="m"`, servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", doc))),
				servicetest.Part("Content-Type: application/pkcs7-signature; name=smime.p7s", servicetest.Base64([]byte("sig")))), false,
			func(t *testing.T, r *result, p *parsed) {
				if !strings.Contains(r.via(), "svc/links; action=analyzed; status=skipped; reason=signed") {
					t.Errorf("trace %q", r.via())
				}
			}},
		{"too deep left alone", mixedHeader("m"), servicetest.Multipart("m", nest(maxDepth, attachment("a.pdf", "application/pdf", doc))), false,
			func(t *testing.T, r *result, p *parsed) {
				if !strings.Contains(r.via(), "svc/links; action=analyzed; status=skipped; reason=malformed") {
					t.Errorf("trace %q", r.via())
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "")
			r := f.deliver(t, tt.header, strings.NewReader(tt.body))
			if r.o.Kind != opes.Continue {
				t.Fatalf("outcome %v", r.o.Kind)
			}
			if changed := r.o.Body != nil; changed != tt.changed {
				t.Fatalf("body changed %v, want %v; trace %s", changed, tt.changed, r.via())
			}
			if !tt.changed {
				r.body = tt.body
			}
			p := parse(t, r.wire())
			if tt.changed {
				if len(p.attachments) != 0 {
					t.Errorf("attachments left: %q", p.attachments)
				}
				if !strings.Contains(r.via(), "action=part-replaced") {
					t.Errorf("trace %q", r.via())
				}
			}
			if tt.check != nil {
				tt.check(t, r, p)
			}
		})
	}
}

// nest puts p inside levels multipart/mixed parts.
func nest(levels int, p string) string {
	for i := 0; i < levels; i++ {
		b := fmt.Sprintf("n%d", i)
		p = servicetest.Part(`Content-Type: multipart/mixed; boundary="`+b+`"`, servicetest.Multipart(b, p))
	}
	return p
}

func TestDeduplicated(t *testing.T) {
	f := newFixture(t, "")
	doc := pdf(1 << 20)
	body := servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", doc), attachment("copy.pdf", "application/pdf", doc))
	for i := 0; i < 2; i++ {
		if r := f.deliver(t, mixedHeader("m"), strings.NewReader(body)); r.o.Body == nil {
			t.Fatalf("delivery %d: body not replaced", i)
		}
	}
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sum := sha256.Sum256(doc)
	if want := []string{hex.EncodeToString(sum[:]), hex.EncodeToString(sum[:]) + ".json"}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("store holds %v, want %v", names, want)
	}
}

// A store that cannot take the file fails the service: the processor's
// on_error (tempfail for a non-bypassable service) keeps the mail.
func TestStoreFailureKeepsMail(t *testing.T) {
	body := servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", pdf(2<<20)))
	for _, tt := range []struct {
		name   string
		extra  string
		break_ func(t *testing.T, dir string)
	}{
		{"store full", "max_store_bytes = 1048576", nil},
		{"directory replaced by a file", "", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.extra)
			if tt.break_ != nil {
				tt.break_(t, f.dir)
			}
			r := f.deliver(t, mixedHeader("m"), strings.NewReader(body))
			if r.o.Kind != opes.TempFail || r.o.Reply == nil || r.o.Reply.Code != 451 {
				t.Fatalf("outcome %v (%v), want 451 tempfail; trace %s", r.o.Kind, r.o.Reply, r.via())
			}
			if entries, _ := os.ReadDir(f.dir); len(entries) != 0 {
				t.Errorf("store left %d files", len(entries))
			}
		})
	}
}

// stream30MB yields a message whose 30 MB attachment is generated on
// the fly, hashing the attachment's octets into h.
type stream30MB struct {
	left   int
	rnd    *rand.ChaCha8
	h      io.Writer
	buf    bytes.Buffer
	head   string
	tail   string
	raw    [57 * 1000]byte
	enc    [76*1000 + 2*1000]byte
	sentHd bool
}

func (s *stream30MB) Read(p []byte) (int, error) {
	for s.buf.Len() == 0 {
		switch {
		case !s.sentHd:
			s.buf.WriteString(s.head)
			s.sentHd = true
		case s.left > 0:
			n := min(s.left, len(s.raw))
			_, _ = s.rnd.Read(s.raw[:n])
			s.h.Write(s.raw[:n])
			s.left -= n
			for off := 0; off < n; off += 57 {
				chunk := s.raw[off:min(off+57, n)]
				line := s.enc[:base64.StdEncoding.EncodedLen(len(chunk))]
				base64.StdEncoding.Encode(line, chunk)
				s.buf.Write(line)
				s.buf.WriteString("\r\n")
			}
		case s.tail != "":
			s.buf.WriteString(s.tail)
			s.tail = ""
		default:
			return 0, io.EOF
		}
	}
	return s.buf.Read(p)
}

func TestLargeAttachmentBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("30 MB message")
	}
	const size = 30 << 20
	f := newFixture(t, "")
	h := sha256.New()
	src := &stream30MB{left: size, rnd: rand.NewChaCha8([32]byte{1}), h: h,
		head: "This is a MIME message.\r\n--m\r\n" + plain + "\r\n--m\r\n" +
			"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
		tail: "\r\n--m--\r\n"}
	r := f.deliver(t, mixedHeader("m"), src)
	if r.o.Kind != opes.Continue || r.o.Body == nil {
		t.Fatalf("outcome %v, body replaced %v", r.o.Kind, r.o.Body != nil)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	fi, err := os.Stat(filepath.Join(f.dir, sum))
	if err != nil || fi.Size() != size {
		t.Fatalf("stored file: %v", err)
	}
	p := parse(t, r.wire())
	if !strings.Contains(p.texts["text/plain"], "/"+sum+"/big.bin?e=") || len(p.attachments) != 0 {
		t.Errorf("text %q, attachments %q", p.texts["text/plain"], p.attachments)
	}
	// Reading the message three times and storing 30 MB may allocate
	// buffers, never the attachment: 4 MiB, a seventh of it, is a bound
	// that an implementation holding it in memory cannot meet.
	t.Logf("allocated %d KiB during the end of message", r.alloc>>10)
	if r.alloc > 4<<20 {
		t.Errorf("allocated %d MiB while processing a 30 MiB attachment", r.alloc>>20)
	}
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	key := writeKey(t, bytes.Repeat([]byte("k"), 32))
	short := writeKey(t, []byte("too short"))
	public := writeKey(t, bytes.Repeat([]byte("k"), 32))
	if err := os.Chmod(public, 0o644); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"https://mx1.example.net/attachments/\"\n", dir, key)
	for _, tt := range []struct {
		src, field string
	}{
		{base, ""},
		{base + "min_size = 10\nttl = \"24h\"\nmax_store_bytes = 1000000000", ""},
		{fmt.Sprintf("key_file = %q\nbase_url = \"https://x.example/\"", key), "dir"},
		{fmt.Sprintf("dir = \"rel\"\nkey_file = %q\nbase_url = \"https://x.example/\"", key), "dir"},
		{fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"https://x.example/\"", notDir, key), "dir"},
		{fmt.Sprintf("dir = %q\nkey_file = \"/nonexistent/links.key\"\nbase_url = \"https://x.example/\"", dir), "key_file"},
		{fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"https://x.example/\"", dir, short), "key_file"},
		{fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"https://x.example/\"", dir, public), "key_file"},
		{fmt.Sprintf("dir = %q\nkey_file = %q", dir, key), "base_url"},
		{fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"ftp://x.example/\"", dir, key), "base_url"},
		{fmt.Sprintf("dir = %q\nkey_file = %q\nbase_url = \"https://x.example/?a=b\"", dir, key), "base_url"},
		{base + "ttl = \"forever\"", "ttl"},
		{base + "ttl = \"1s\"", "ttl"},
		{base + "min_size = -1", "min_size"},
		{base + "max_store_bytes = -1", "max_store_bytes"},
	} {
		_, err := New(optiontest.Decoder(t, "[options]\n"+tt.src))
		var fe *opes.FieldError
		switch {
		case tt.field == "" && err != nil:
			t.Errorf("%q: %v", tt.src, err)
		case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
			t.Errorf("%q: error %v, want a FieldError on %s", tt.src, err, tt.field)
		}
	}
}

// Without key_file the key is made in dir once and then reused, so links
// stay valid across restarts.
func TestDefaultKey(t *testing.T) {
	dir := t.TempDir()
	src := fmt.Sprintf("[options]\ndir = %q\nbase_url = \"https://x.example/a\"", dir)
	var keys [][]byte
	for i := 0; i < 2; i++ {
		s, err := New(optiontest.Decoder(t, src))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, s.(*Service).key)
	}
	fi, err := os.Stat(filepath.Join(dir, DefaultKeyName))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("key file %v %v", fi, err)
	}
	if !bytes.Equal(keys[0], keys[1]) {
		t.Error("the second start made a new key")
	}
	if _, err := NewHandler(HandlerOptions{Dir: dir}); err != nil {
		t.Errorf("NewHandler with the default key: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want the key only", len(entries))
	}
}

func TestNewHandler(t *testing.T) {
	dir := t.TempDir()
	keyFile := writeKey(t, bytes.Repeat([]byte("x"), 40))
	key, err := ReadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("<script>alert(1)</script>")
	res, err := st.Put(ctx, bytes.NewReader(content), Meta{ContentType: "text/html; charset=utf-8", Filename: "x.html"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	h, err := NewHandler(HandlerOptions{Dir: dir, KeyFile: keyFile, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	name := "naïve \"x\".html"
	exp := now.Add(time.Hour).Unix()
	link := fmt.Sprintf("%s/any/prefix/%s/%s?e=%d&s=%s", srv.URL, res.Sum, url.PathEscape(name), exp, sign(key, res.Sum, name, exp))
	resp, got := get(t, link)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, content) {
		t.Fatalf("GET: %s %q", resp.Status, got)
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename="na_ve _x_.html"; filename*=UTF-8''na%C3%AFve%20%22x%22.html` {
		t.Errorf("Content-Disposition %q", cd)
	}
	if d, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err != nil || d != "attachment" || params["filename"] != name {
		t.Errorf("Content-Disposition parses to %q %v %v", d, params, err)
	}
	if resp.Header.Get("Content-Type") != "text/html; charset=utf-8" || resp.Header.Get("X-Content-Type-Options") != "nosniff" ||
		!strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox") {
		t.Errorf("headers %v", resp.Header)
	}
	req, _ := http.NewRequest(http.MethodPost, link, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	now = now.Add(2 * time.Hour)
	if resp, _ := get(t, link); resp.StatusCode != http.StatusGone {
		t.Errorf("expired: %s", resp.Status)
	}
}

// flipLast changes the last character of a link (part of the signature).
func flipLast(v string) string {
	if strings.HasSuffix(v, "A") {
		return v[:len(v)-1] + "B"
	}
	return v[:len(v)-1] + "A"
}

// Prune removes files no valid link can point to — older than the cutoff
// and not stored or linked since — with their sidecars, leftovers of
// interrupted writes and orphan sidecars; a file stored again is touched
// and stays; the size bound counts what is left.
func TestStorePrune(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(dir, 10<<20)
	if err != nil {
		t.Fatal(err)
	}
	put := func(data []byte) string {
		t.Helper()
		res, err := st.Put(context.Background(), bytes.NewReader(data), Meta{ContentType: "application/pdf", Filename: "x.pdf"}, 1)
		if err != nil || res.Sum == "" {
			t.Fatalf("Put: %+v %v", res, err)
		}
		return res.Sum
	}
	old, again, fresh := put(pdf(3000)), put(pdf(4000)), put(pdf(5000))
	past := time.Now().Add(-48 * time.Hour)
	for _, name := range []string{old, old + ".json", again, again + ".json"} {
		if err := os.Chtimes(filepath.Join(dir, name), past, past); err != nil {
			t.Fatal(err)
		}
	}
	orphan := strings.Repeat("ab", 32) + ".json"
	for _, name := range []string{".tmp-123", orphan} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = os.Chtimes(filepath.Join(dir, name), past, past)
	}
	put(pdf(4000)) // linked again: touched
	before := st.current()
	files, freed, err := st.Prune(time.Now().Add(-24 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if files != 1 || freed != 3000 {
		t.Errorf("pruned %d files, %d octets; want 1, 3000", files, freed)
	}
	if got := st.current(); got != before-3000 {
		t.Errorf("store counts %d octets after the prune, want %d", got, before-3000)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{again, again + ".json", fresh, fresh + ".json"}
	slices.Sort(want)
	if fmt.Sprint(left) != fmt.Sprint(want) {
		t.Errorf("store holds %v, want %v", left, want)
	}
}

// The service prunes in the background from the mail path, at most once
// per pruneEvery, with a cutoff of ttl plus a margin before now.
func TestServicePrunesExpiredFiles(t *testing.T) {
	f := newFixture(t, "ttl = \"1h\"\n")
	f.svc.pruned = make(chan struct{}, 4)
	waitPrune := func() {
		t.Helper()
		select {
		case <-f.svc.pruned:
		case <-time.After(10 * time.Second):
			t.Fatal("no background prune")
		}
	}
	doc1, doc2 := pdf(1<<20), pdf(1<<20+1)
	f.deliver(t, mixedHeader("m"), strings.NewReader(servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", doc1))))
	waitPrune() // the first message starts one; nothing is old yet
	sum1 := sha256.Sum256(doc1)
	path1 := filepath.Join(f.dir, hex.EncodeToString(sum1[:]))
	if _, err := os.Stat(path1); err != nil {
		t.Fatalf("stored file gone after the first prune: %v", err)
	}
	// Within pruneEvery no second prune starts.
	f.deliver(t, mixedHeader("m"), strings.NewReader(servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", doc1))))
	select {
	case <-f.svc.pruned:
		t.Fatal("a second prune within pruneEvery")
	case <-time.After(100 * time.Millisecond):
	}
	// doc1 was last linked three hours ago (ttl 1h + margin 1h passed),
	// and the last prune is an hour ago.
	past := time.Now().Add(-3 * time.Hour)
	if err := os.Chtimes(path1, past, past); err != nil {
		t.Fatal(err)
	}
	f.svc.lastPrune.Add(-int64(pruneEvery / time.Second))
	r := f.deliver(t, mixedHeader("m"), strings.NewReader(servicetest.Multipart("m", plain, attachment("b.pdf", "application/pdf", doc2))))
	waitPrune()
	if _, err := os.Stat(path1); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("expired file still stored: %v", err)
	}
	// The fresh link still downloads.
	link := linkRE.FindString(parse(t, r.wire()).texts["text/plain"])
	if link == "" {
		t.Fatal("no link in the message")
	}
	if resp, got := get(t, link); resp.StatusCode != 200 || !bytes.Equal(got, doc2) {
		t.Errorf("fresh link: %d, %d octets", resp.StatusCode, len(got))
	}
}
