package notify

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"mime/quotedprintable"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ndr"
	"github.com/opesmilter/opes-milter/opes/tag"
)

const sysURI = "https://mx1.example.net/opes/"

var ctx = context.Background()

// msg is one test message as the client sends it.
type msg struct {
	from   string
	rcpts  []string
	header [][2]string
	body   string
}

// result is what the MTA delivers, and what the processor said.
type result struct {
	out     *opes.Outcome
	fields  []opes.HeaderField
	body    []byte
	entity  *message.Entity
	via     string
	changed bool // the body was replaced
}

// pipeline builds a processor running a marker service (the tag service
// adding X-Virus, standing for clamav) for senders at virus.example and
// the null reverse-path, then
// notify, enabled by one rule at stage.
func pipeline(t *testing.T, notifyOpts string, deps Deps, stage opes.Stage, onErr opes.OnError) *opes.Processor {
	t.Helper()
	marker, err := tag.New(optiontest.Decoder(t, "[options]\nheader = \"X-Virus: Eicar-Test-Signature\"\n[options.when]\nsender_regex = ['@virus\\.example$', '^$']\n"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := NewWithDeps(optiontest.Decoder(t, notifyOpts), deps)
	if err != nil {
		t.Fatalf("NewWithDeps: %v", err)
	}
	ms := &opes.ServiceSpec{Name: "clamav", Kind: "tag", URI: sysURI + "svc/clamav", Bypassable: true, Impl: marker}
	ns := &opes.ServiceSpec{Name: "notify", Kind: "notify", URI: sysURI + "svc/notify", Bypassable: true, OnError: onErr, Impl: svc}
	p, err := opes.NewProcessor(&opes.Policy{
		System:   opes.System{URI: sysURI},
		Services: []*opes.ServiceSpec{ms, ns},
		Rules:    []*opes.Rule{{Name: "all", Stage: stage, Run: []*opes.ServiceSpec{ms, ns}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// run drives a session the way the milter bridge does (see
// opes/processor_test.go runMessage) and parses what would be delivered.
func run(t *testing.T, p *opes.Processor, m msg) result {
	t.Helper()
	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr("192.0.2.7")
	s.Connect(ctx)
	s.Helo(ctx, "client.example")
	if o := s.Mail(ctx, opes.Address{Addr: m.from}); o.Kind != opes.Continue {
		t.Fatalf("MAIL: %v", o.Kind)
	}
	for _, r := range m.rcpts {
		s.Rcpt(ctx, opes.Address{Addr: r})
	}
	s.Data(ctx)
	var in []opes.HeaderField
	for _, h := range m.header {
		s.Header(h[0], h[1])
		in = append(in, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	s.EndOfHeaders(ctx)
	s.BodyChunk([]byte(m.body))
	o := s.EndOfMessage(ctx, "4ABCD12")
	var r result
	r.out = o
	if o.Kind != opes.Continue {
		s.Finish()
		return r
	}
	r.fields = opes.ApplyChanges(in, o.HeaderChanges)
	r.body = []byte(m.body)
	if o.Body != nil {
		b, err := io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
		r.body, r.changed = b, true
	}
	s.Finish()
	for _, f := range r.fields {
		if f.Name == opes.FieldVia {
			r.via = f.Value
		}
	}
	raw := opes.FormatHeader(r.fields) + "\r\n" + string(r.body)
	e, err := message.Read(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("delivered message does not parse: %v\n%s", err, raw)
	}
	r.entity = e
	return r
}

// text decodes an entity's body (transfer encoding and charset).
func text(t *testing.T, e *message.Entity) string {
	t.Helper()
	b, err := io.ReadAll(e.Body)
	if err != nil {
		t.Fatalf("decode body: %v", err)
	}
	return string(b)
}

// eachPart calls fn for each part of a multipart entity, in order, while
// the part can still be read; it returns how many there were.
func eachPart(t *testing.T, e *message.Entity, fn func(i int, p *message.Entity)) int {
	t.Helper()
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("not multipart: %s", e.Header.Get("Content-Type"))
	}
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			return i
		}
		if err != nil {
			t.Fatalf("next part: %v", err)
		}
		fn(i, p)
	}
}

const warnOpts = `[options]
added_header = ["X-Virus:"]
warn_body = "prepend"
warn_text = "WARNING: a virus was found in this message.\nDo not open attachments."
`

const wantWarning = "WARNING: a virus was found in this message.\r\nDo not open attachments.\r\n"

func header(extra ...[2]string) [][2]string {
	h := [][2]string{{"From", " Mallory <m@virus.example>"}, {"To", " bob@example.net"}, {"Subject", " Invoice"},
		{"Date", " Thu, 26 Nov 2026 01:00:00 +0000"}, {"Message-ID", " <1@virus.example>"}}
	return append(h, extra...)
}

func TestWarnBodyPrepend(t *testing.T) {
	p := pipeline(t, warnOpts, Deps{}, opes.StageConnect, opes.OnErrorDefault)
	utf := "Grüße,\r\nim Anhang die Rechnung. Zeile mit = Zeichen und einer sehr langen Zeile, die beim Kodieren umbrochen werden muss, damit sie nicht zu lang ist.\r\n"
	var qp bytes.Buffer
	qw := quotedprintable.NewWriter(&qp)
	_, _ = qw.Write([]byte(utf))
	_ = qw.Close()
	b64 := base64.StdEncoding.EncodeToString([]byte(utf))
	var b64lines strings.Builder
	for len(b64) > 76 {
		b64lines.WriteString(b64[:76] + "\r\n")
		b64 = b64[76:]
	}
	b64lines.WriteString(b64 + "\r\n")
	tests := []struct {
		name   string
		header [][2]string
		body   string
		want   string
	}{
		{"no MIME", header(), "Hello,\r\nsee attached.\r\n", "Hello,\r\nsee attached.\r\n"},
		{"7bit", header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " text/plain; charset=us-ascii"}), "Hi\r\n", "Hi\r\n"},
		{"quoted-printable", header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " text/plain; charset=utf-8"},
			[2]string{"Content-Transfer-Encoding", " quoted-printable"}), qp.String(), utf},
		{"base64", header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " text/plain; charset=utf-8"},
			[2]string{"Content-Transfer-Encoding", " Base64"}), b64lines.String(), utf},
		{"8bit latin-1", header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " text/plain; charset=iso-8859-1"},
			[2]string{"Content-Transfer-Encoding", " 8bit"}), "Gr\xfc\xdfe\r\n", "Grüße\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: tt.header, body: tt.body})
			if r.out.Kind != opes.Continue || !r.changed {
				t.Fatalf("outcome %v, body changed %v", r.out.Kind, r.changed)
			}
			if !strings.Contains(r.via, sysURI+"svc/notify; action=modified") {
				t.Errorf("OPES-Via %q lacks notify's action=modified", r.via)
			}
			mt, _, _ := r.entity.Header.ContentType()
			if mt != "text/plain" && r.entity.Header.Get("Content-Type") != "" {
				t.Errorf("the message is no longer plain text: %s", mt)
			}
			got := text(t, r.entity)
			if got != wantWarning+"\r\n"+tt.want {
				t.Errorf("decoded body:\n%q\nwant\n%q", got, wantWarning+"\r\n"+tt.want)
			}
			for i, l := range strings.Split(string(r.body), "\r\n") {
				if len(l) > 998 {
					t.Errorf("line %d is %d octets", i, len(l))
				}
			}
		})
	}
}

// TestWarnBodyWrap: HTML, multipart, an unknown charset, bad base64 and
// the "part" mode get a warning part in front of the original, which is
// kept byte for byte with its Content-* fields.
func TestWarnBodyWrap(t *testing.T) {
	alt := "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n--b1--\r\n"
	tests := []struct {
		name   string
		opts   string
		header [][2]string
		body   string
		check  func(t *testing.T, orig *message.Entity)
	}{
		{"multipart/alternative", warnOpts, header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " multipart/alternative;\r\n boundary=\"b1\""}), alt,
			func(t *testing.T, orig *message.Entity) {
				want := []string{"plain text", "<p>html</p>"}
				n := eachPart(t, orig, func(i int, p *message.Entity) {
					if got := text(t, p); i >= len(want) || got != want[i] {
						t.Errorf("original part %d: %q", i, got)
					}
				})
				if n != 2 {
					t.Errorf("original has %d parts", n)
				}
			}},
		{"html", warnOpts, header([2]string{"Content-Type", " text/html; charset=utf-8"}, [2]string{"Content-Transfer-Encoding", " 8bit"}), "<p>Grüße</p>\r\n",
			func(t *testing.T, orig *message.Entity) {
				if mt, _, _ := orig.Header.ContentType(); mt != "text/html" || text(t, orig) != "<p>Grüße</p>\r\n" {
					t.Errorf("original: %s", mt)
				}
			}},
		{"utf-16", warnOpts, header([2]string{"Content-Type", " text/plain; charset=utf-16le"}, [2]string{"Content-Transfer-Encoding", " base64"}), "aABpAA==\r\n",
			func(t *testing.T, orig *message.Entity) {
				if orig.Header.Get("Content-Transfer-Encoding") != "base64" {
					t.Errorf("original fields not moved: %v", orig.Header.Get("Content-Transfer-Encoding"))
				}
			}},
		{"bad base64", warnOpts, header([2]string{"Content-Type", " text/plain"}, [2]string{"Content-Transfer-Encoding", " base64"}), "!!!not base64!!!\r\n",
			func(t *testing.T, orig *message.Entity) {
				if orig.Header.Get("Content-Transfer-Encoding") != "base64" {
					t.Error("original fields not moved")
				}
			}},
		{"part mode on plain text", strings.Replace(warnOpts, `"prepend"`, `"part"`, 1), header(), "Hello\r\n",
			func(t *testing.T, orig *message.Entity) {
				if got := text(t, orig); got != "Hello\r\n" { // byte for byte
					t.Errorf("original text %q", got)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pipeline(t, tt.opts, Deps{}, opes.StageConnect, opes.OnErrorDefault)
			r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: tt.header, body: tt.body})
			if !r.changed || !strings.Contains(r.via, "svc/notify; action=modified") {
				t.Fatalf("changed %v, via %q", r.changed, r.via)
			}
			mt, params, err := r.entity.Header.ContentType()
			if err != nil || mt != "multipart/mixed" || !strings.HasPrefix(params["boundary"], "=_opes_") {
				t.Fatalf("top level %s %v %v", mt, params, err)
			}
			if r.entity.Header.Get("MIME-Version") != "1.0" {
				t.Error("no MIME-Version")
			}
			n := 0
			for _, f := range r.fields {
				if strings.EqualFold(f.Name, "Content-Type") {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d Content-Type fields", n)
			}
			n = eachPart(t, r.entity, func(i int, p *message.Entity) {
				switch i {
				case 0:
					mt, _, _ := p.Header.ContentType()
					if got := text(t, p); mt != "text/plain" || got != strings.TrimSuffix(wantWarning, "\r\n") {
						t.Errorf("warning part %s %q", mt, got)
					}
				case 1:
					tt.check(t, p)
				}
			})
			if n != 2 {
				t.Errorf("%d parts, want the warning and the original", n)
			}
		})
	}
}

// TestOnlyAddedFieldsCount: a sender who forges X-Virus gets no action;
// a field the marker adds does, whether notify is enabled at connect or
// at the end of message.
func TestOnlyAddedFieldsCount(t *testing.T) {
	for _, st := range []opes.Stage{opes.StageConnect, opes.StageHeaders, opes.StageEOM} {
		p := pipeline(t, warnOpts, Deps{}, st, opes.OnErrorDefault)
		forged := run(t, p, msg{from: "m@clean.example", rcpts: []string{"bob@example.net"},
			header: header([2]string{"X-Virus", " Eicar-Test-Signature"}), body: "Hi\r\n"})
		if forged.changed || strings.Contains(forged.via, "action=modified") {
			t.Errorf("stage %s: a forged X-Virus field made notify act (via %q)", st, forged.via)
		}
		real := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"},
			header: header([2]string{"X-Virus", " Eicar-Test-Signature"}), body: "Hi\r\n"})
		if !real.changed {
			t.Errorf("stage %s: the marker's field did not trigger notify", st)
		}
	}
}

func TestSubjectPrefixAndRegex(t *testing.T) {
	p := pipeline(t, `[options]
added_header = ["X-Virus: ^Eicar-"]
subject_prefix = "[VIRUS]"
`, Deps{}, opes.StageConnect, opes.OnErrorDefault)
	r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.entity.Header.Get("Subject") != "[VIRUS] Invoice" || r.changed || !strings.Contains(r.via, "svc/notify; action=tagged") {
		t.Errorf("Subject %q, body changed %v, via %q", r.entity.Header.Get("Subject"), r.changed, r.via)
	}
	p = pipeline(t, "[options]\nadded_header = [\"X-Virus: ^Other\"]\nsubject_prefix = \"[VIRUS]\"\n", Deps{}, opes.StageConnect, opes.OnErrorDefault)
	r = run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.entity.Header.Get("Subject") != "Invoice" {
		t.Errorf("a non-matching regex acted: %q", r.entity.Header.Get("Subject"))
	}
}

// openOutbox is the real durable outbox the daemon uses, behind the
// real ndr.Worker.
func openOutbox(t *testing.T) (*store.Store, *ndr.Worker) {
	t.Helper()
	st, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "store.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, &ndr.Worker{Outbox: st, Sender: &ndr.Relay{Addr: "127.0.0.1:1"}}
}

func queued(t *testing.T, st *store.Store) []store.OutboxItem {
	t.Helper()
	items, err := st.ListOutbox(ctx, store.Queued, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return items
}

// notification is a queued notification read back with go-message.
type notification struct {
	to, subject, text string
	header            message.Header
}

func readNotification(t *testing.T, it store.OutboxItem) notification {
	t.Helper()
	if it.Sender != "" || len(it.Recipients) != 1 {
		t.Fatalf("envelope MAIL FROM:<%s> RCPT %v, want the null reverse-path and one recipient", it.Sender, it.Recipients)
	}
	for i, l := range strings.Split(string(it.Data), "\r\n") {
		if len(l) > 78 {
			t.Errorf("line %d of the notification is %d octets", i, len(l))
		}
		if strings.ContainsAny(l, "\r\n") {
			t.Errorf("bare line end in line %d", i)
		}
	}
	e, err := message.Read(bytes.NewReader(it.Data))
	if err != nil {
		t.Fatalf("notification does not parse: %v\n%s", err, it.Data)
	}
	for _, f := range []string{"From", "To", "Date", "Message-ID", "Subject"} {
		if e.Header.Get(f) == "" {
			t.Errorf("no %s field", f)
		}
	}
	if _, err := e.Header.Text("Subject"); err != nil {
		t.Error(err)
	}
	if e.Header.Get("Auto-Submitted") != "auto-generated" {
		t.Errorf("Auto-Submitted %q", e.Header.Get("Auto-Submitted"))
	}
	if mt, params, _ := e.Header.ContentType(); mt != "text/plain" || params["charset"] != "utf-8" {
		t.Errorf("Content-Type %s %v", mt, params)
	}
	return notification{to: it.Recipients[0], subject: e.Header.Get("Subject"), text: text(t, e), header: e.Header}
}

func TestMailNotifications(t *testing.T) {
	st, w := openOutbox(t)
	p := pipeline(t, `[options]
added_header = ["X-Virus:"]
reason = "a virus was found"
notify_admin = ["postmaster@example.net"]
notify_recipients = true
`, Deps{Submitter: w, Hostname: "mx1.example.net"}, opes.StageConnect, opes.OnErrorDefault)
	secret := "THE SECRET BODY TEXT"
	r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net", "carol@example.net", "Bob@example.net"},
		header: header([2]string{"Subject", " =?UTF-8?Q?Gr=C3=BC=C3=9Fe?="}), body: secret + "\r\n"})
	if r.out.Kind != opes.Continue || r.changed {
		t.Fatalf("outcome %v, body changed %v", r.out.Kind, r.changed)
	}
	if !strings.Contains(r.via, "svc/notify; action=analyzed") {
		t.Errorf("via %q", r.via)
	}
	items := queued(t, st)
	if len(items) != 3 {
		t.Fatalf("%d notifications queued, want admin + 2 recipients (Bob once)", len(items))
	}
	byTo := map[string]notification{}
	for _, it := range items {
		if it.TraceID != "4ABCD12" {
			t.Errorf("outbox trace id %q", it.TraceID)
		}
		n := readNotification(t, it)
		byTo[n.to] = n
		if strings.Contains(n.text, secret) || strings.Contains(string(it.Data), secret) {
			t.Errorf("notification to %s carries the original content", n.to)
		}
		for _, want := range []string{"a virus was found", "finding: X-Virus: Eicar-Test-Signature", "OPES system: " + sysURI,
			"Trace id:    4ABCD12", "envelope sender:    m@virus.example", "Subject:            Invoice"} {
			if !strings.Contains(n.text, want) {
				t.Errorf("notification to %s lacks %q:\n%s", n.to, want, n.text)
			}
		}
		if !strings.Contains(n.subject, "[trace 4ABCD12]") || !strings.HasSuffix(n.header.Get("Message-ID"), "@mx1.example.net>") {
			t.Errorf("Subject %q, Message-ID %q", n.subject, n.header.Get("Message-ID"))
		}
		if from := n.header.Get("From"); !strings.Contains(from, "<MAILER-DAEMON@mx1.example.net>") {
			t.Errorf("From %q", from)
		}
	}
	admin, ok := byTo["postmaster@example.net"]
	if !ok || !strings.Contains(admin.text, "carol@example.net") || !strings.Contains(admin.text, "client address:     192.0.2.7") {
		t.Errorf("admin notification:\n%s", admin.text)
	}
	bob, ok := byTo["bob@example.net"]
	if !ok || strings.Contains(bob.text, "carol@example.net") || strings.Contains(bob.text, "192.0.2.7") || bob.header.Get("To") != "bob@example.net" {
		t.Errorf("a recipient learns other recipients or the client:\n%s", bob.text)
	}

	// A clean message causes nothing.
	run(t, p, msg{from: "a@clean.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if n := len(queued(t, st)); n != 3 {
		t.Errorf("a clean message queued notifications: %d", n-3)
	}
}

// TestNoBackscatterNoLoops: the sender hears nothing unless asked for;
// never the null reverse-path; never about an auto-submitted message
// (our own notifications included); and at most max_notifications.
func TestNoBackscatterNoLoops(t *testing.T) {
	st, w := openOutbox(t)
	p := pipeline(t, "[options]\nadded_header = [\"X-Virus:\"]\nnotify_recipients = true\n", Deps{Submitter: w}, opes.StageConnect, opes.OnErrorDefault)
	run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	items := queued(t, st)
	if len(items) != 1 || items[0].Recipients[0] != "bob@example.net" {
		t.Fatalf("by default only the recipient is told: %+v", items)
	}

	st, w = openOutbox(t)
	p = pipeline(t, "[options]\nadded_header = [\"X-Virus:\"]\nnotify_sender = true\nnotify_recipients = true\nmax_notifications = 3\n",
		Deps{Submitter: w, From: "postmaster@example.net"}, opes.StageConnect, opes.OnErrorDefault)
	// The null reverse-path never gets one; the recipient does.
	r := run(t, p, msg{from: "", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.entity.Header.Get("X-Virus") == "" {
		t.Fatal("the marker did not flag the bounce")
	}
	if items := queued(t, st); len(items) != 1 || items[0].Recipients[0] != "bob@example.net" {
		t.Errorf("bounce: %+v, want one notification, to the recipient", items)
	}
	// A notification passing through the milter again is auto-submitted.
	run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"},
		header: header([2]string{"Auto-Submitted", " auto-generated"}), body: "Hi\r\n"})
	if items := queued(t, st); len(items) != 1 {
		t.Errorf("an auto-submitted message caused %d notifications", len(items)-1)
	}
	// The bound holds: admins first, then recipients, then the sender.
	run(t, p, msg{from: "m@virus.example", rcpts: []string{"r1@example.net", "r2@example.net", "r3@example.net", "r4@example.net"},
		header: header([2]string{"Auto-Submitted", " no"}), body: "Hi\r\n"})
	items = queued(t, st)[1:]
	if len(items) != 3 {
		t.Fatalf("%d notifications, want max_notifications = 3", len(items))
	}
	if items[0].Recipients[0] != "r1@example.net" {
		t.Errorf("first %v", items[0].Recipients)
	}
	for _, it := range items {
		n := readNotification(t, it)
		if !strings.Contains(n.header.Get("From"), "<postmaster@example.net>") {
			t.Errorf("From %q, want Deps.From", n.header.Get("From"))
		}
	}
}

// TestSenderNotification: the sender's copy lists the recipients.
func TestSenderNotification(t *testing.T) {
	st, w := openOutbox(t)
	p := pipeline(t, "[options]\nadded_header = [\"X-Virus:\"]\nnotify_sender = true\nfrom = \"security@example.net\"\n", Deps{Submitter: w}, opes.StageConnect, opes.OnErrorDefault)
	run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	items := queued(t, st)
	if len(items) != 1 || items[0].Recipients[0] != "m@virus.example" {
		t.Fatalf("items %+v", items)
	}
	n := readNotification(t, items[0])
	if !strings.Contains(n.text, "A message you sent") || !strings.Contains(n.text, "envelope recipient: bob@example.net") ||
		!strings.Contains(n.header.Get("From"), "<security@example.net>") || !strings.Contains(n.header.Get("Message-ID"), "@mx1.example.net>") {
		t.Errorf("sender notification:\n%s\n%v", n.text, n.header.Get("From"))
	}
}

// TestNoOutbox: without a Submitter the hook fails and on_error decides:
// tempfail (the sender's MTA retries, nothing is lost) or continue.
func TestNoOutbox(t *testing.T) {
	opts := "[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"postmaster@example.net\"]\n"
	p := pipeline(t, opts, Deps{}, opes.StageConnect, opes.OnErrorTempFail)
	r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.out.Kind != opes.TempFail {
		t.Errorf("outcome %v, want tempfail", r.out.Kind)
	}
	p = pipeline(t, opts, Deps{}, opes.StageConnect, opes.OnErrorContinue)
	r = run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.out.Kind != opes.Continue || !strings.Contains(r.via, "svc/notify; action=analyzed; status=failed") {
		t.Errorf("outcome %v, via %q", r.out.Kind, r.via)
	}
}

// failingOutbox is a store that was closed: Enqueue fails as it does
// when the disk is full or the database is gone.
func TestOutboxFailure(t *testing.T) {
	st, w := openOutbox(t)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	p := pipeline(t, "[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"postmaster@example.net\"]\n", Deps{Submitter: w}, opes.StageConnect, opes.OnErrorTempFail)
	r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	if r.out.Kind != opes.TempFail {
		t.Errorf("outcome %v, want tempfail when the notification cannot be stored", r.out.Kind)
	}
}

func TestOptionErrors(t *testing.T) {
	tests := []struct{ src, field, msg string }{
		{"[options]\nnotify_admin = [\"a@example.net\"]\n", "added_header", "added_header or when is required"},
		{"[options]\nadded_header = [\"X-Virus:\"]\n", "notify_admin", "no action"},
		{"[options]\nadded_header = [\"X-Virus\"]\nsubject_prefix = \"[V]\"\n", "added_header[1]", "Name: regex"},
		{"[options]\nadded_header = [\"X-Virus:\", \"X-A: (\"]\nsubject_prefix = \"[V]\"\n", "added_header[2]", "pattern"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nwarn_body = \"top\"\n", "warn_body", "want"},
		{"[options]\nadded_header = [\"X-Virus:\", \"opes-system:\"]\nsubject_prefix = \"[V]\"\n", "added_header[2]", "trace field"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nsubject_prefix = \"[V]\"\nwarn_text = \"x\"\n", "warn_text", "warn_body is off"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nwarn_body = \"part\"\nwarn_text = \"Achtung: Virus gefunden \u2013 nicht öffnen\"\n", "warn_text", "US-ASCII"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"Postmaster <postmaster@example.net>\"]\n", "notify_admin[1]", "plain address"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"a@example.net\", \"a@b\\r\\nBcc: x@y\"]\n", "notify_admin[2]", "plain address"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"a@example.net\"]\nfrom = \"nobody\"\n", "from", "plain address"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"a@example.net\"]\nmax_notifications = 1000\n", "max_notifications", "1 to 100"},
		{"[options]\nadded_header = [\"X-Virus:\"]\nsubject_prefix = \"[V]\"\nreason = \"a\\nb\"\n", "reason", "0x0a"},
		{"[options]\nsubject_prefix = \"[V]\"\n[options.when]\nclient = [\"nope\"]\n", "when.client[1]", "IP"},
	}
	for _, tt := range tests {
		_, err := New(optiontest.Decoder(t, tt.src))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(fe.Err.Error(), tt.msg) {
			t.Errorf("%q: error %v, want field %s mentioning %q", tt.src, err, tt.field, tt.msg)
		}
	}
	if _, err := New(optiontest.Decoder(t, "[options]\nadded_header = 5\n")); err == nil || !strings.Contains(err.Error(), "notify: decode options") {
		t.Errorf("type error: %v", err)
	}
	s, err := New(optiontest.Decoder(t, "[options]\nwarn_body = \"part\"\n[options.when]\nsender_domain = [\"example.org\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Needs(); !n.Body || !n.Headers || !n.Stages.Has(opes.StageHeaders) || !n.Stages.Has(opes.StageEOM) {
		t.Errorf("needs %+v", n)
	}
	if s.(interface{ SendsMail() bool }).SendsMail() {
		t.Error("SendsMail without addressees")
	}
}

// TestQueuedNotificationIsDelivered drains the outbox through the real
// ndr.Worker to a real SMTP server: what arrives is the notification,
// with MAIL FROM:<>.
func TestQueuedNotificationIsDelivered(t *testing.T) {
	srv := startSMTP(t)
	st, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "store.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	w := &ndr.Worker{Outbox: st, Sender: &ndr.Relay{Addr: srv.addr, Timeout: 5 * time.Second}}
	p := pipeline(t, "[options]\nadded_header = [\"X-Virus:\"]\nnotify_admin = [\"postmaster@example.net\"]\n", Deps{Submitter: w}, opes.StageConnect, opes.OnErrorDefault)
	run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"}, header: header(), body: "Hi\r\n"})
	sent, retried, failed, err := w.RunOnce(ctx)
	if err != nil || sent != 1 || retried != 0 || failed != 0 {
		t.Fatalf("RunOnce: sent %d retried %d failed %d: %v", sent, retried, failed, err)
	}
	got := srv.messages()
	if len(got) != 1 || got[0].from != "" || len(got[0].to) != 1 || got[0].to[0] != "postmaster@example.net" {
		t.Fatalf("arrived: %+v", got)
	}
	n := readNotification(t, store.OutboxItem{Recipients: got[0].to, Data: got[0].data})
	if !strings.Contains(n.text, "finding: X-Virus: Eicar-Test-Signature") {
		t.Errorf("arrived text:\n%s", n.text)
	}
}

// TestSignedMessageKeepsItsBody: a signed message gets no body warning
// (PROFILE §6), the Subject warning still applies.
func TestSignedMessageKeepsItsBody(t *testing.T) {
	p := pipeline(t, warnOpts+"subject_prefix = \"[VIRUS]\"\n", Deps{}, opes.StageConnect, opes.OnErrorDefault)
	body := "--s\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n"
	r := run(t, p, msg{from: "m@virus.example", rcpts: []string{"bob@example.net"},
		header: header([2]string{"MIME-Version", " 1.0"}, [2]string{"Content-Type", " multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"s\""}),
		body:   body})
	if r.changed || string(r.body) != body {
		t.Error("the body of a signed message was changed")
	}
	if ct := r.entity.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/signed") {
		t.Errorf("Content-Type changed to %q", ct)
	}
	if r.entity.Header.Get("Subject") != "[VIRUS] Invoice" || !strings.Contains(r.via, "svc/notify; action=tagged") {
		t.Errorf("Subject %q, via %q", r.entity.Header.Get("Subject"), r.via)
	}
}
