package spamd

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/internal/faulttest"
	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.example.net/opes/"

func mustNew(t *testing.T, src string) *service {
	t.Helper()
	s, err := New(optiontest.Decoder(t, src))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s.(*service)
}

// opts returns an options table for addr plus extra lines.
func opts(addr string, extra ...string) string {
	return "[options]\naddress = \"" + addr + "\"\n" + strings.Join(extra, "\n") + "\n"
}

func TestNew(t *testing.T) {
	s := mustNew(t, opts("127.0.0.1:783", "add_header = true"))
	if s.network != "tcp" || s.addr != "127.0.0.1:783" || s.timeout != DefaultTimeout || s.maxSize != DefaultMaxSize {
		t.Errorf("defaults: %+v", s)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if s.Needs() != want {
		t.Errorf("Needs = %+v, want %+v", s.Needs(), want)
	}
	for addr, sock := range map[string]string{"/run/spamd.sock": "/run/spamd.sock", "unix:/run/s.sock": "/run/s.sock"} {
		s := mustNew(t, opts(addr, "reject_score = 10.0"))
		if s.network != "unix" || s.addr != sock {
			t.Errorf("%s: network %q addr %q", addr, s.network, s.addr)
		}
	}
	s = mustNew(t, opts("[::1]:783", `timeout = "2s"`, "max_size = 1000", `user = "spam"`,
		`subject_prefix = " [SPAM] "`, "quarantine_score = 8", "reject_score = 15.5"))
	if s.timeout != 2*time.Second || s.maxSize != 1000 || s.user != "spam" || s.prefix != "[SPAM]" || s.table.Default().Quarantine != 8 || s.table.Default().Reject != 15.5 {
		t.Errorf("options: %+v", s)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name, src, field, msg string
	}{
		{"no address", "[options]\nadd_header = true\n", "address", "is required"},
		{"bad address", opts("localhost", "add_header = true"), "address", "not host:port"},
		{"bad port", opts("localhost:99999", "add_header = true"), "address", "port"},
		{"relative socket", opts("unix:spamd.sock", "add_header = true"), "address", "absolute"},
		{"no action", opts("127.0.0.1:783"), "add_header", "is required"},
		{"bad timeout", opts("127.0.0.1:783", "add_header = true", `timeout = "soon"`), "timeout", "not a duration"},
		{"zero timeout", opts("127.0.0.1:783", "add_header = true", `timeout = "0s"`), "timeout", "not a duration"},
		{"negative size", opts("127.0.0.1:783", "add_header = true", "max_size = -1"), "max_size", "not between"},
		{"huge size", opts("127.0.0.1:783", "add_header = true", "max_size = 1073741824"), "max_size", "not between"},
		{"user with space", opts("127.0.0.1:783", "add_header = true", `user = "a b"`), "user", "0x20"},
		{"user with CRLF", opts("127.0.0.1:783", "add_header = true", `user = "a\r\nSpam: x"`), "user", "0x0d"},
		{"prefix non-ASCII", opts("127.0.0.1:783", `subject_prefix = "[PUBLICITÉ]"`), "subject_prefix", "printable US-ASCII"},
		{"negative reject", opts("127.0.0.1:783", "reject_score = -1.0"), "reject_score", "not a score"},
		{"nan quarantine", opts("127.0.0.1:783", "quarantine_score = nan"), "quarantine_score", "not a score"},
		{"quarantine above reject", opts("127.0.0.1:783", "quarantine_score = 10.0", "reject_score = 8.0"), "quarantine_score", "never apply"},
		{"tag above quarantine", opts("127.0.0.1:783", "tag_score = 10.0", "quarantine_score = 8.0"), "tag_score", "never apply"},
		{"tag score alone", opts("127.0.0.1:783", "tag_score = 3.0"), "add_header", "is required"},
		{"recipient without match", opts("127.0.0.1:783", "reject_score = 8.0", "[[options.recipient]]", "reject_score = 5.0"), "recipient[1].match", "is required"},
		{"recipient order", opts("127.0.0.1:783", "reject_score = 8.0", "[[options.recipient]]", `match = ["@example.net"]`, "quarantine_score = 9.0"), "recipient[1].quarantine_score", "never apply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(optiontest.Decoder(t, tt.src))
			var fe *opes.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want a FieldError on %s containing %q", err, tt.field, tt.msg)
			}
		})
	}
	if _, err := New(optiontest.Decoder(t, "[options]\naddress = 783\n")); err == nil || !strings.Contains(err.Error(), "spamd: decode options") {
		t.Errorf("wrong type: err = %v", err)
	}
}

// message is a test message, with the calls of these tests as methods.
type message struct{ servicetest.Message }

func hamMessage() message {
	return message{servicetest.Message{
		Header: [][2]string{
			{"From", " Alice <alice@example.org>"}, {"To", " bob@example.net"}, {"Subject", " lunch"},
			{"Message-ID", " <20261125120000.4711@mail.example.org>"}, {"Date", " " + time.Now().Format(time.RFC1123Z)},
		},
		Body:   "See you at noon at the usual place.\r\n\r\nAlice\r\n",
		Conn:   opes.Connection{Hostname: "mail.example.org", Addr: netip.MustParseAddr("192.0.2.25"), Helo: "mail.example.org"},
		Sender: "alice@example.org",
		Rcpts:  []string{"bob@example.net"},
	}}
}

func gtubeMessage() message {
	m := hamMessage()
	m.Header[2][1] = " gtube"
	m.Body = "This is the GTUBE.\r\n" + enginetest.GTUBE + "\r\n"
	return m
}

// storingProcessor returns a processor whose policy runs svc from MAIL
// on, as runPipeline needs; the tests that call the service
// directly use it because it stores the body, and never reach the rule's
// stage.
func storingProcessor(t testing.TB, svc opes.Service) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "spam", Kind: "spamd", URI: sysURI + "svc/spam", Bypassable: true, Impl: svc}
	return servicetest.NewProcessor(t, sysURI, opes.StageMail, opes.Limits{}, spec)
}

// tx builds the transaction for m in a session of a storing processor.
func (m message) tx(t testing.TB, svc opes.Service) *opes.Transaction {
	t.Helper()
	return m.Transaction(t, storingProcessor(t, svc))
}

// run calls the service's end-of-message hook directly, so the verdict
// and the header can be checked without a policy.
func (m message) run(t *testing.T, svc opes.Service) (opes.Verdict, *opes.Header, error) {
	t.Helper()
	tx := m.tx(t, svc)
	v, err := servicetest.EndOfMessage(t, svc, tx)
	return v, tx.Header, err
}

func TestGTUBE(t *testing.T) {
	tcp, sock := needSpamd(t)
	for _, addr := range []string{tcp, sock, "unix:" + sock} {
		t.Run(addr, func(t *testing.T) {
			s := mustNew(t, opts(addr, "add_header = true"))
			tx := gtubeMessage().tx(t, s)
			head := envelopeLines(tx, time.Now()) + opes.FormatHeader(tx.Header.Fields()) + "\r\n"
			res, err := s.check(context.Background(), head, tx)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Spam || res.Score < 1000 || res.Required != 5 || !slices.Contains(res.Symbols, "GTUBE") {
				t.Errorf("result = %+v, want spam with GTUBE", res)
			}
		})
	}
}

func TestHam(t *testing.T) {
	tcp, _ := needSpamd(t)
	s := mustNew(t, opts(tcp, "add_header = true", `subject_prefix = "[SPAM]"`, "quarantine_score = 4", "reject_score = 5"))
	v, h, err := hamMessage().run(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Continue || v.Action != "header-added" {
		t.Errorf("verdict = %+v", v)
	}
	t.Logf("%s: %s", FieldStatus, h.Get(FieldStatus))
	if st := h.Get(FieldStatus); !strings.HasPrefix(st, "No, score=") || !strings.Contains(st, "required=5.0") {
		t.Errorf("%s = %q", FieldStatus, st)
	}
	if got := h.Get("Subject"); got != "lunch" {
		t.Errorf("ham subject changed to %q", got)
	}
}

func TestActions(t *testing.T) {
	tcp, _ := needSpamd(t)
	tests := []struct {
		name    string
		extra   []string
		kind    opes.VerdictKind
		action  string
		subject string
		header  bool
	}{
		{"header", []string{"add_header = true"}, opes.Continue, "header-added", "gtube", true},
		{"subject", []string{`subject_prefix = "[SPAM]"`}, opes.Continue, "tagged", "[SPAM] gtube", false},
		{"header and subject", []string{"add_header = true", `subject_prefix = "[SPAM]"`}, opes.Continue, "tagged", "[SPAM] gtube", true},
		{"quarantine", []string{"add_header = true", "quarantine_score = 20.0"}, opes.Quarantine, "quarantined", "gtube", true},
		{"quarantine below its score", []string{"add_header = true", "quarantine_score = 2000.0"}, opes.Continue, "header-added", "gtube", true},
		{"reject", []string{"add_header = true", `subject_prefix = "[SPAM]"`, "reject_score = 5"}, opes.Reject, "rejected", "gtube", false},
		{"reject beats quarantine", []string{"quarantine_score = 5", "reject_score = 10"}, opes.Reject, "rejected", "gtube", false},
		{"quarantine only up to reject", []string{"quarantine_score = 5", "reject_score = 5000"}, opes.Quarantine, "quarantined", "gtube", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, h, err := gtubeMessage().run(t, mustNew(t, opts(tcp, tt.extra...)))
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != tt.kind || v.Action != tt.action {
				t.Errorf("verdict = %+v, want %v/%s", v, tt.kind, tt.action)
			}
			if got := h.Get("Subject"); got != tt.subject {
				t.Errorf("Subject = %q, want %q", got, tt.subject)
			}
			st := h.Get(FieldStatus)
			if tt.header != (st != "") {
				t.Fatalf("%s = %q, header expected %v", FieldStatus, st, tt.header)
			}
			if tt.header && (!strings.HasPrefix(st, "Yes, score=10") || !strings.Contains(st, " required=5.0\ttests=") || !strings.Contains(st, "GTUBE") || !strings.HasPrefix(h.Get(FieldScore), "10")) {
				t.Errorf("%s = %q, %s = %q", FieldStatus, st, FieldScore, h.Get(FieldScore))
			}
			if v.Kind == opes.Reject && (v.Reply.Enhanced != "5.7.1" || !strings.HasPrefix(v.Reply.Text, "Message refused as spam (score 10")) {
				t.Errorf("reply = %+v", v.Reply)
			}
		})
	}
}

// TestSubjectNotTwice: a message that passes a second time (a forward,
// a second MX) keeps a single prefix, and forged X-Spam-* fields are
// replaced, not kept next to ours.
func TestSubjectNotTwice(t *testing.T) {
	tcp, _ := needSpamd(t)
	m := gtubeMessage()
	m.Header[2][1] = " [spam] gtube"
	m.Header = append(m.Header, [2]string{FieldStatus, " No, score=-100"}, [2]string{FieldScore, " -100"})
	v, h, err := m.run(t, mustNew(t, opts(tcp, "add_header = true", `subject_prefix = "[SPAM]"`)))
	if err != nil {
		t.Fatal(err)
	}
	if v.Action != "header-added" || h.Get("Subject") != "[spam] gtube" {
		t.Errorf("verdict %+v, Subject %q", v, h.Get("Subject"))
	}
	if st := h.Values(FieldStatus); len(st) != 1 || !strings.HasPrefix(st[0], "Yes") {
		t.Errorf("%s = %q", FieldStatus, st)
	}
	if sc := h.Values(FieldScore); len(sc) != 1 || !strings.HasPrefix(sc[0], "10") {
		t.Errorf("%s = %q", FieldScore, sc)
	}
}

func TestUser(t *testing.T) {
	tcp, _ := needSpamd(t)
	// -x disables per-user configuration, so spamd accepts any name and
	// applies the site rules: this checks the request line is accepted.
	v, _, err := gtubeMessage().run(t, mustNew(t, opts(tcp, `user = "nobody"`, "reject_score = 5")))
	if err != nil || v.Kind != opes.Reject {
		t.Fatalf("verdict %+v, err %v", v, err)
	}
}

// TestOversize: a message above max_size is delivered unscanned without
// contacting spamd at all (the address is not even reachable).
func TestOversize(t *testing.T) {
	s := mustNew(t, opts(faulttest.DeadAddr(t), "max_size = 1000", "reject_score = 5", "add_header = true"))
	m := gtubeMessage()
	m.Body = strings.Repeat("filler line to make the message big\r\n", 40) + enginetest.GTUBE + "\r\n"
	v, h, err := m.run(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Continue || v.Action != "analyzed" || v.Status != "skipped" || !strings.Contains(v.Reason, "max_size") || h.Get(FieldStatus) != "" {
		t.Errorf("verdict = %+v, status %q", v, h.Get(FieldStatus))
	}
}

// TestUnreachable: the engine down is an error (the service's on_error
// decides), never a verdict.
func TestUnreachable(t *testing.T) {
	faulttest.Unreachable(t, func(addr string) error {
		_, _, err := gtubeMessage().run(t, mustNew(t, opts(addr, "reject_score = 5")))
		return err
	})
}

// TestTimeout: an engine that accepts and never answers must not hold the
// message longer than the timeout.
func TestTimeout(t *testing.T) {
	faulttest.Timeout(t, 300*time.Millisecond, func(addr string) error {
		_, _, err := gtubeMessage().run(t, mustNew(t, opts(addr, `timeout = "300ms"`, "reject_score = 5")))
		return err
	}, func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) })
}

// TestCancel: the MTA going away (a cancelled context) ends the exchange
// at once.
func TestCancel(t *testing.T) {
	faulttest.Cancel(t, func(ctx context.Context, addr string) error {
		tx := &opes.Transaction{Conn: &opes.Connection{}, Header: opes.NewHeader(), Body: opes.NewBody(opes.BodyOptions{})}
		_, err := mustNew(t, opts(addr, "reject_score = 5")).Begin(tx).EndOfMessage(ctx)
		return err
	})
}

// TestProcessor runs the service in the real pipeline, as a policy rule
// enables it.
func TestProcessor(t *testing.T) {
	tcp, _ := needSpamd(t)
	t.Run("reject", func(t *testing.T) {
		o, _ := runPipeline(t, opts(tcp, "reject_score = 5"), gtubeMessage())
		if o.Kind != opes.Reject || o.Reply == nil {
			t.Fatalf("outcome %+v", o)
		}
		r := o.Reply.String()
		for _, want := range []string{"554-5.7.1 Message refused as spam (score 10", "554-5.7.1", "svc/spam; action=rejected"} {
			if !strings.Contains(r, want) {
				t.Errorf("reply lacks %q:\n%s", want, r)
			}
		}
	})
	t.Run("header", func(t *testing.T) {
		o, in := runPipeline(t, opts(tcp, "add_header = true", `subject_prefix = "[SPAM]"`), gtubeMessage())
		if o.Kind != opes.Continue {
			t.Fatalf("outcome %+v", o)
		}
		got := opes.FormatHeader(opes.ApplyChanges(in, o.HeaderChanges))
		for _, want := range []string{
			"svc/spam; action=tagged\r\n", "Subject: [SPAM] gtube\r\n", "X-Spam-Score: 10", "X-Spam-Status: Yes, score=10", " required=5.0\r\n\ttests=", "GTUBE",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("delivered header lacks %q:\n%s", want, got)
			}
		}
		for _, line := range strings.Split(got, "\r\n") {
			if len(line) > maxLine {
				t.Errorf("line of %d octets", len(line))
			}
		}
	})
}

func runPipeline(t *testing.T, src string, m message) (*opes.Outcome, []opes.HeaderField) {
	t.Helper()
	return m.Deliver(t, storingProcessor(t, mustNew(t, src)))
}

// TestTagScore: a local tag_score replaces spamd's own required_score
// for the Subject mark and X-Spam-Status.
func TestTagScore(t *testing.T) {
	tcp, _ := needSpamd(t)
	v, h, err := gtubeMessage().run(t, mustNew(t, opts(tcp, "add_header = true", `subject_prefix = "[SPAM]"`, "tag_score = 2000")))
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Continue || v.Action != "header-added" || h.Get("Subject") != "gtube" || !strings.HasPrefix(h.Get(FieldStatus), "No, score=10") {
		t.Errorf("verdict %+v, Subject %q, %s %q", v, h.Get("Subject"), FieldStatus, h.Get(FieldStatus))
	}
	m := hamMessage()
	m.Body += "a line\r\n"
	v, h, err = m.run(t, mustNew(t, opts(tcp, `subject_prefix = "[SPAM]"`, "tag_score = 0.001", "reject_score = 1000")))
	if err != nil {
		t.Fatal(err)
	}
	// The ham scores about 0 to 2 with -L; a tiny tag_score marks it
	// unless it scored 0 or less.
	t.Logf("ham: %+v, Subject %q", v, h.Get("Subject"))
	if strings.HasPrefix(v.Reason, "spam score") != (h.Get("Subject") == "[SPAM] lunch") {
		t.Errorf("reason %q disagrees with Subject %q", v.Reason, h.Get("Subject"))
	}
}

// TestPerRecipient: GTUBE (score 1000) for recipients of different
// classes; the combination rule of package threshold decides.
func TestPerRecipient(t *testing.T) {
	tcp, _ := needSpamd(t)
	src := opts(tcp, `subject_prefix = "[SPAM]"`,
		"[[options.recipient]]", `name = "strict"`, `match = ["@strict.example", "joe@example.org"]`, "reject_score = 10",
		"[[options.recipient]]", `name = "hold"`, `match = ["@hold.example"]`, "quarantine_score = 10")
	tests := []struct {
		name    string
		rcpts   []string
		kind    opes.VerdictKind
		levels  string
		subject string
	}{
		{"all strict: reject", []string{"a@strict.example", "Joe@Example.org"}, opes.Reject, "", "gtube"},
		{"strict and default: deliver marked", []string{"a@strict.example", "bob@example.net"}, opes.Continue, "strict=reject; default=tag", "[SPAM] gtube"},
		{"strict and hold: quarantine", []string{"a@strict.example", "c@hold.example"}, opes.Quarantine, "strict=reject; hold=quarantine", "[SPAM] gtube"},
		{"default only", []string{"bob@example.net"}, opes.Continue, "default=tag", "[SPAM] gtube"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := gtubeMessage()
			m.Rcpts = tt.rcpts
			v, h, err := m.run(t, mustNew(t, src))
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != tt.kind || h.Get(FieldLevels) != tt.levels || h.Get("Subject") != tt.subject {
				t.Errorf("verdict %+v, %s %q, Subject %q; want %v, %q, %q", v, FieldLevels, h.Get(FieldLevels), h.Get("Subject"), tt.kind, tt.levels, tt.subject)
			}
		})
	}
}
