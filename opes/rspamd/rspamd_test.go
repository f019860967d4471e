package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
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

func mustNew(t testing.TB, src string) *service {
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
	s := mustNew(t, opts("127.0.0.1:11333"))
	if s.network != "tcp" || s.addr != "127.0.0.1:11333" || s.timeout != DefaultTimeout || s.maxSize != DefaultMaxSize ||
		!s.greylist || s.prefix != "" || s.addHeader || s.table.PerRecipient() || s.endpoint != "http://127.0.0.1:11333/checkv2" {
		t.Errorf("defaults: %+v", s)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if s.Needs() != want {
		t.Errorf("Needs = %+v, want %+v", s.Needs(), want)
	}
	for addr, w := range map[string][2]string{
		"/run/rspamd/normal.sock":  {"unix", "/run/rspamd/normal.sock"},
		"unix:/run/r.sock":         {"unix", "/run/r.sock"},
		"http://127.0.0.1:11333":   {"tcp", "127.0.0.1:11333"},
		"http://[::1]:11333/":      {"tcp", "[::1]:11333"},
		"rspamd.example.net:11333": {"tcp", "rspamd.example.net:11333"},
	} {
		s := mustNew(t, opts(addr))
		if s.network != w[0] || s.addr != w[1] {
			t.Errorf("%s: network %q addr %q", addr, s.network, s.addr)
		}
	}
	s = mustNew(t, opts("[::1]:11333", `timeout = "2s"`, "max_size = 1000", `subject_prefix = " [SPAM] "`, "add_header = true",
		"greylist = false", "tag_score = 5", "quarantine_score = 8", "reject_score = 15.5",
		"[[options.recipient]]", `match = ["@example.net"]`, "reject_score = 9"))
	if s.timeout != 2*time.Second || s.maxSize != 1000 || s.prefix != "[SPAM]" || !s.addHeader || s.greylist ||
		s.table.Default().Tag != 5 || s.table.Default().Quarantine != 8 || s.table.Default().Reject != 15.5 || !s.table.PerRecipient() {
		t.Errorf("options: %+v", s)
	}
	if name, set := s.table.For("Bob@Example.NET"); name != "recipient-1" || set.Reject != 9 || set.Tag != 5 {
		t.Errorf("recipient entry: %s %+v", name, set)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name, src, field, msg string
	}{
		{"no address", "[options]\nadd_header = true\n", "address", "is required"},
		{"bad address", opts("localhost"), "address", "not host:port"},
		{"bad port", opts("localhost:99999"), "address", "port"},
		{"https", opts("https://rspamd.example.net:11333"), "address", "plain http"},
		{"path", opts("http://127.0.0.1:11333/checkv2"), "address", "nothing else"},
		{"no port", opts("http://127.0.0.1"), "address", "nothing else"},
		{"relative socket", opts("unix:rspamd.sock"), "address", "absolute"},
		{"bad timeout", opts("127.0.0.1:11333", `timeout = "soon"`), "timeout", "not a duration"},
		{"zero timeout", opts("127.0.0.1:11333", `timeout = "0s"`), "timeout", "not a duration"},
		{"negative size", opts("127.0.0.1:11333", "max_size = -1"), "max_size", "not between"},
		{"huge size", opts("127.0.0.1:11333", "max_size = 1073741824"), "max_size", "not between"},
		{"prefix non-ASCII", opts("127.0.0.1:11333", `subject_prefix = "[PUBLICITÉ]"`), "subject_prefix", "printable US-ASCII"},
		{"negative reject", opts("127.0.0.1:11333", "reject_score = -1.0"), "reject_score", "not a score"},
		{"nan quarantine", opts("127.0.0.1:11333", "quarantine_score = nan"), "quarantine_score", "not a score"},
		{"quarantine above reject", opts("127.0.0.1:11333", "quarantine_score = 10.0", "reject_score = 8.0"), "quarantine_score", "never apply"},
		{"tag above reject", opts("127.0.0.1:11333", "tag_score = 10.0", "reject_score = 8.0"), "tag_score", "never apply"},
		{"recipient without match", opts("127.0.0.1:11333", "[[options.recipient]]", "reject_score = 8.0"), "recipient[1].match", "is required"},
		{"recipient bad match", opts("127.0.0.1:11333", "[[options.recipient]]", `match = ["example.net"]`, "reject_score = 8.0"), "recipient[1].match[1]", "neither"},
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
	if _, err := New(optiontest.Decoder(t, "[options]\naddress = 11333\n")); err == nil || !strings.Contains(err.Error(), "rspamd: decode options") {
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
			{"MIME-Version", " 1.0"}, {"Content-Type", " text/plain; charset=us-ascii"},
		},
		Body:   "See you at noon at the usual place.\r\n\r\nAlice\r\n",
		Conn:   opes.Connection{Hostname: "mail.example.org", Addr: netip.MustParseAddr("192.0.2.25"), Helo: "mail.example.org", MTAName: "mx.example.net"},
		Sender: "alice@example.org",
		Rcpts:  []string{"bob@example.net"},
	}}
}

// withBody returns the ham message with a line added to the body.
func withBody(line string) message {
	m := hamMessage()
	m.Body += line + "\r\n"
	return m
}

func scored(score float64) message {
	return withBody(fmt.Sprintf("%s%g", enginetest.RspamdScoreToken, score))
}

func gtubeMessage() message {
	m := withBody(enginetest.GTUBE)
	m.Header[2][1] = " gtube"
	return m
}

// storingProcessor returns a processor whose policy runs svc from MAIL
// on, as runPipeline needs; the tests that call the service
// directly use it because it stores the body, and never reach the rule's
// stage.
func storingProcessor(t testing.TB, svc opes.Service) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "spam", Kind: "rspamd", URI: sysURI + "svc/spam", Bypassable: true, Impl: svc}
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
	tcp, sock := needRspamd(t)
	for _, addr := range []string{tcp, "http://" + tcp, sock, "unix:" + sock} {
		t.Run(addr, func(t *testing.T) {
			v, h, err := gtubeMessage().run(t, mustNew(t, opts(addr)))
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != opes.Reject || v.Action != "rejected" || v.Reply.Enhanced != "5.7.1" ||
				v.Reply.Text != "Gtube pattern (score 15.0: GTUBE)" {
				t.Errorf("verdict = %+v", v)
			}
			if h.Get(FieldStatus) != "" || h.Get("Subject") != "gtube" {
				t.Errorf("a refused message was changed: %q", opes.FormatHeader(h.Fields()))
			}
		})
	}
}

func TestHam(t *testing.T) {
	tcp, _ := needRspamd(t)
	v, h, err := hamMessage().run(t, mustNew(t, opts(tcp)))
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Continue || v.Action != "analyzed" || !strings.Contains(v.Reason, "rspamd action no action") {
		t.Errorf("verdict = %+v", v)
	}
	if h.Get(FieldStatus) != "" || h.Get("Subject") != "lunch" {
		t.Errorf("ham changed without add_header: %q", opes.FormatHeader(h.Fields()))
	}
	v, h, err = hamMessage().run(t, mustNew(t, opts(tcp, "add_header = true", `subject_prefix = "[SPAM]"`)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s; %s: %s", FieldStatus, h.Get(FieldStatus), FieldResult, h.Get(FieldResult))
	if v.Kind != opes.Continue || v.Action != "header-added" || !strings.HasPrefix(h.Get(FieldStatus), "No, score=") ||
		!strings.HasSuffix(h.Get(FieldStatus), " required=15.0 action=no_action") || !strings.HasPrefix(h.Get(FieldResult), "default: False [") ||
		h.Get("Subject") != "lunch" {
		t.Errorf("verdict %+v, header %q", v, opes.FormatHeader(h.Fields()))
	}
}

// TestActions reaches every rspamd action through the real daemon: the
// test rules turn a token into a known score, the GTUBE variants force
// an action.
func TestActions(t *testing.T) {
	tcp, _ := needRspamd(t)
	tests := []struct {
		name    string
		m       message
		extra   []string
		kind    opes.VerdictKind
		action  string
		subject string
		status  string // X-Spam-Status prefix; "" = no field
		reply   string // reply text prefix
	}{
		{"no action", scored(2), nil, opes.Continue, "analyzed", "lunch", "", ""},
		{"add header", scored(7), nil, opes.Continue, "header-added", "lunch", "Yes, score=7.0 required=15.0 action=add_header", ""},
		{"add header with prefix", scored(7), []string{`subject_prefix = "[SPAM]"`}, opes.Continue, "tagged", "[SPAM] lunch", "Yes, score=7.0", ""},
		{"rewrite subject", scored(9), nil, opes.Continue, "tagged", "***SPAM*** lunch", "Yes, score=9.0 required=15.0 action=rewrite_subject", ""},
		{"rewrite subject, own prefix", scored(9), []string{`subject_prefix = "[SPAM]"`}, opes.Continue, "tagged", "[SPAM] lunch", "Yes, score=9.0", ""},
		{"reject by score", scored(20), nil, opes.Reject, "rejected", "lunch", "", "Message refused as spam (score 20.0: OPES_TEST_SCORE)"},
		{"greylist", scored(5), nil, opes.TempFail, "rejected", "lunch", "", "Try again later"},
		{"greylist off", scored(5), []string{"greylist = false"}, opes.Continue, "analyzed", "lunch", "", ""},
		{"soft reject", withBody(enginetest.RspamdSoftRejectToken), nil, opes.TempFail, "rejected", "lunch", "", "Try again later (test)"},
		{"GTUBE add header", withBody(enginetest.GTUBEAddHeader), nil, opes.Continue, "header-added", "lunch", "Yes, score=6.0", ""},
		{"GTUBE rewrite subject", withBody(enginetest.GTUBERewriteSubject), nil, opes.Continue, "tagged", "***SPAM*** lunch", "Yes, score=8.0", ""},
		// Local thresholds replace rspamd's judgement for their level.
		{"raised reject tags", scored(16), []string{"reject_score = 20"}, opes.Continue, "header-added", "lunch", "Yes, score=16.0 required=15.0 action=reject", ""},
		{"lowered reject", scored(12), []string{"reject_score = 10"}, opes.Reject, "rejected", "lunch", "", "Message refused as spam (score 12.0: OPES_TEST_SCORE)"},
		{"quarantine", scored(12), []string{"quarantine_score = 10"}, opes.Quarantine, "quarantined", "***SPAM*** lunch", "Yes, score=12.0 required=15.0 action=rewrite_subject", ""},
		{"quarantine, rspamd rejects", scored(16), []string{"quarantine_score = 10"}, opes.Reject, "rejected", "lunch", "", "Message refused"},
		{"local tag below rspamd's", scored(3), []string{"tag_score = 2.5"}, opes.Continue, "header-added", "lunch", "Yes, score=3.0 required=15.0 action=no_action", ""},
		{"local tag above rspamd's", scored(7), []string{"tag_score = 7.5"}, opes.Continue, "analyzed", "lunch", "", ""},
		{"GTUBE under a raised reject", gtubeMessage(), []string{"reject_score = 100"}, opes.Continue, "header-added", "gtube", "Yes, score=15.0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, h, err := tt.m.run(t, mustNew(t, opts(tcp, tt.extra...)))
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
			if !strings.HasPrefix(st, tt.status) || (tt.status == "") != (st == "") {
				t.Errorf("%s = %q, want prefix %q", FieldStatus, st, tt.status)
			}
			if tt.status != "" && (h.Get(FieldScore) == "" || !strings.Contains(h.Get(FieldResult), "[")) {
				t.Errorf("%s = %q, %s = %q", FieldScore, h.Get(FieldScore), FieldResult, h.Get(FieldResult))
			}
			if !strings.HasPrefix(v.Reply.Text, tt.reply) {
				t.Errorf("reply = %+v, want text %q", v.Reply, tt.reply)
			}
			switch v.Kind {
			case opes.Reject:
				if v.Reply.Enhanced != "5.7.1" {
					t.Errorf("reply = %+v", v.Reply)
				}
			case opes.TempFail:
				if v.Reply.Code != 451 || v.Reply.Enhanced != "4.7.1" {
					t.Errorf("reply = %+v", v.Reply)
				}
			}
		})
	}
}

// TestPerRecipient: one message, several recipient classes, the real
// score from rspamd, and the combination rule of package threshold.
func TestPerRecipient(t *testing.T) {
	tcp, _ := needRspamd(t)
	src := opts(tcp, "reject_score = 20",
		"[[options.recipient]]", `name = "strict"`, `match = ["@strict.example", "joe@example.org"]`, "reject_score = 10",
		"[[options.recipient]]", `name = "hold"`, `match = ["@hold.example"]`, "quarantine_score = 10")
	tests := []struct {
		name   string
		score  float64
		rcpts  []string
		kind   opes.VerdictKind
		levels string
	}{
		{"all strict: reject", 12, []string{"a@strict.example", "Joe@Example.org"}, opes.Reject, ""},
		{"strict and default: deliver tagged", 12, []string{"a@strict.example", "bob@example.net"}, opes.Continue, "strict=reject; default=tag"},
		{"strict and hold: quarantine", 12, []string{"a@strict.example", "c@hold.example"}, opes.Quarantine, "strict=reject; hold=quarantine"},
		{"everyone rejects", 25, []string{"a@strict.example", "bob@example.net", "c@hold.example"}, opes.Reject, ""},
		{"ham for all", 1, []string{"a@strict.example", "bob@example.net"}, opes.Continue, "strict=ham; default=ham"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := scored(tt.score)
			m.Rcpts = tt.rcpts
			v, h, err := m.run(t, mustNew(t, src))
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != tt.kind || h.Get(FieldLevels) != tt.levels {
				t.Errorf("verdict %+v, %s %q; want %v, %q", v, FieldLevels, h.Get(FieldLevels), tt.kind, tt.levels)
			}
			for _, f := range []string{FieldLevels, FieldStatus, FieldResult} {
				if strings.Contains(h.Get(f), "@") {
					t.Errorf("%s discloses a recipient: %q", f, h.Get(f))
				}
			}
		})
	}
}

// TestEnvelope: rspamd is told the envelope and the client as they were,
// and nothing that is not a clean token.
func TestEnvelope(t *testing.T) {
	tcp, _ := needRspamd(t)
	s := mustNew(t, opts(tcp, "add_header = true"))
	m := withBody(enginetest.RspamdEnvelopeToken)
	m.Rcpts = []string{"bob@example.net", "carol@example.net"}
	m.Conn.AuthUser, m.Conn.AuthType = "alice", "PLAIN"
	tx := m.tx(t, s)
	tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: "refused@example.net"}, Refused: true})
	got := envelopeSeen(t, s, tx)
	want := []string{"from=alice@example.org", "rcpt=bob@example.net", "rcpt=carol@example.net", "ip=192.0.2.25",
		"helo=mail.example.org", "hostname=mail.example.org", "user=alice", "queue-id=4XyZ1Q"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("rspamd saw %q\nwant        %q", got, want)
	}

	// Hostile or absent values are left out; the null sender is "<>",
	// which rspamd reads as the empty address.
	m.Conn = opes.Connection{Hostname: "[192.0.2.25]", Addr: netip.MustParseAddr("::ffff:192.0.2.25"), Helo: "evil\r\nIP: 127.0.0.1"}
	m.Sender = ""
	tx = m.tx(t, s)
	got = envelopeSeen(t, s, tx)
	want = []string{"from=", "rcpt=bob@example.net", "rcpt=carol@example.net", "ip=192.0.2.25", "queue-id=4XyZ1Q"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("rspamd saw %q\nwant        %q", got, want)
	}
}

// envelopeSeen posts tx as the service does and returns the options of
// the test symbol OPES_TEST_ENVELOPE, sorted as rspamd reports them.
func envelopeSeen(t *testing.T, s *service, tx *opes.Transaction) []string {
	t.Helper()
	head := opes.FormatHeader(tx.Header.Fields()) + "\r\n"
	rest, err := readAll(tx)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.endpoint, strings.NewReader(head+rest))
	if err != nil {
		t.Fatal(err)
	}
	setEnvelope(req.Header, tx)
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var w struct {
		Symbols map[string]struct {
			Options []string `json:"options"`
		} `json:"symbols"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		t.Fatal(err)
	}
	sym, ok := w.Symbols["OPES_TEST_ENVELOPE"]
	if !ok {
		t.Fatalf("no OPES_TEST_ENVELOPE in %+v", w)
	}
	return sym.Options
}

func readAll(tx *opes.Transaction) (string, error) {
	b, err := io.ReadAll(tx.Body.Reader())
	return string(b), err
}

// TestSubjectNotTwice: a message that passes a second time keeps a single
// prefix, and forged X-Spam-* fields are replaced, not kept next to ours.
func TestSubjectNotTwice(t *testing.T) {
	tcp, _ := needRspamd(t)
	m := scored(9)
	m.Header[2][1] = " ***spam*** lunch"
	m.Header = append(m.Header, [2]string{FieldStatus, " No, score=-100"}, [2]string{FieldScore, " -100"}, [2]string{FieldResult, " default: False [-100.00 / 15.00]"})
	v, h, err := m.run(t, mustNew(t, opts(tcp)))
	if err != nil {
		t.Fatal(err)
	}
	if v.Action != "header-added" || h.Get("Subject") != "***spam*** lunch" {
		t.Errorf("verdict %+v, Subject %q", v, h.Get("Subject"))
	}
	for _, f := range []string{FieldStatus, FieldScore, FieldResult} {
		if vs := h.Values(f); len(vs) != 1 || strings.Contains(vs[0], "-100") {
			t.Errorf("%s = %q", f, vs)
		}
	}
}

// TestOversize: a message above max_size is delivered unscanned without
// contacting rspamd at all (the address is not even reachable).
func TestOversize(t *testing.T) {
	s := mustNew(t, opts(faulttest.DeadAddr(t), "max_size = 1000", "reject_score = 5"))
	m := gtubeMessage()
	m.Body = strings.Repeat("filler line to make the message big\r\n", 40) + enginetest.GTUBE + "\r\n"
	v, h, err := m.run(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != opes.Continue || v.Status != "skipped" || !strings.Contains(v.Reason, "max_size") || h.Get(FieldStatus) != "" {
		t.Errorf("verdict = %+v, status %q", v, h.Get(FieldStatus))
	}
}

// TestUnreachable: the engine down is an error (the service's on_error
// decides), never a verdict.
func TestUnreachable(t *testing.T) {
	faulttest.Unreachable(t, func(addr string) error {
		_, _, err := gtubeMessage().run(t, mustNew(t, opts(addr)))
		return err
	})
}

// TestTimeout: an engine that accepts and never answers must not hold the
// message longer than the timeout.
func TestTimeout(t *testing.T) {
	faulttest.Timeout(t, 300*time.Millisecond, func(addr string) error {
		_, _, err := gtubeMessage().run(t, mustNew(t, opts(addr, `timeout = "300ms"`)))
		return err
	}, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) })
}

// TestCancel: the MTA going away (a cancelled context) ends the exchange
// at once.
func TestCancel(t *testing.T) {
	faulttest.Cancel(t, func(ctx context.Context, addr string) error {
		tx := &opes.Transaction{Conn: &opes.Connection{}, Header: opes.NewHeader(), Body: opes.NewBody(opes.BodyOptions{})}
		_, err := mustNew(t, opts(addr)).Begin(tx).EndOfMessage(ctx)
		return err
	})
}

// TestBrokenServer: an HTTP server that is not a working rspamd (an
// error status, garbage, a truncated or hostile answer) gives an error.
func TestBrokenServer(t *testing.T) {
	tests := []struct {
		name, status, body, msg string
	}{
		{"5xx", "500", `{"error":"internal"}`, `HTTP status "500 Internal Server Error"`},
		{"4xx", "413", `{"error":"too large"}`, "HTTP status"},
		{"garbage", "200", "hello", "malformed rspamd answer"},
		{"no action", "200", `{"score":1.0}`, "no action or score"},
		{"unknown action", "200", `{"action":"explode","score":1.0}`, `unknown action "explode"`},
		{"truncated", "200", `{"action":"reject","score":1`, "malformed"},
		{"header injection in a symbol", "200", `{"action":"add header","score":7,"symbols":{"A\r\nX-Evil: 1":{"score":1}}}`, "symbol"},
		{"absurd score", "200", `{"action":"no action","score":1e300}`, "score"},
		{"redirect", "307", "", `HTTP status "307 Temporary Redirect"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/checkv2" || r.Method != http.MethodPost {
					http.Error(w, "wrong request", http.StatusNotFound)
					return
				}
				code := map[string]int{"500": 500, "413": 413, "200": 200, "307": 307}[tt.status]
				if code == 307 {
					w.Header().Set("Location", "http://192.0.2.1/checkv2")
				}
				w.WriteHeader(code)
				_, _ = w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			_, _, err := hamMessage().run(t, mustNew(t, opts(srv.URL)))
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %v, want %q", err, tt.msg)
			}
		})
	}
}

// TestProcessor runs the service in the real pipeline, as a policy rule
// enables it.
func TestProcessor(t *testing.T) {
	tcp, _ := needRspamd(t)
	t.Run("reject", func(t *testing.T) {
		o, _ := runPipeline(t, opts(tcp), gtubeMessage())
		if o.Kind != opes.Reject || o.Reply == nil {
			t.Fatalf("outcome %+v", o)
		}
		r := o.Reply.String()
		for _, want := range []string{"554-5.7.1 Gtube pattern (score 15.0: GTUBE)", "svc/spam; action=rejected"} {
			if !strings.Contains(r, want) {
				t.Errorf("reply lacks %q:\n%s", want, r)
			}
		}
	})
	t.Run("tempfail", func(t *testing.T) {
		o, _ := runPipeline(t, opts(tcp), withBody(enginetest.RspamdSoftRejectToken))
		if o.Kind != opes.TempFail || o.Reply == nil || !strings.Contains(o.Reply.String(), "451-4.7.1 Try again later (test)") {
			t.Fatalf("outcome %+v", o)
		}
	})
	t.Run("header", func(t *testing.T) {
		o, in := runPipeline(t, opts(tcp), scored(9))
		if o.Kind != opes.Continue {
			t.Fatalf("outcome %+v", o)
		}
		got := opes.FormatHeader(opes.ApplyChanges(in, o.HeaderChanges))
		for _, want := range []string{
			"svc/spam; action=tagged\r\n", "Subject: ***SPAM*** lunch\r\n", "X-Spam-Score: 9.0\r\n",
			"X-Spam-Status: Yes, score=9.0 required=15.0 action=rewrite_subject\r\n",
			"X-Spamd-Result: default: True [9.00 / 15.00]; OPES_TEST_SCORE(9.00)\r\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("delivered header lacks %q:\n%s", want, got)
			}
		}
	})
}

func runPipeline(t *testing.T, src string, m message) (*opes.Outcome, []opes.HeaderField) {
	t.Helper()
	return m.Deliver(t, storingProcessor(t, mustNew(t, src)))
}

// BenchmarkEndOfMessage measures one scan through the real rspamd over
// TCP: request, rspamd's work on a small message, parsing, verdict.
func BenchmarkEndOfMessage(b *testing.B) {
	tcp, _ := needRspamd(b)
	svc := mustNew(b, opts(tcp, "add_header = true"))
	m := scored(7)
	for b.Loop() {
		tx := m.tx(b, svc)
		stx := svc.Begin(tx)
		if _, err := stx.EndOfMessage(context.Background()); err != nil {
			b.Fatal(err)
		}
		stx.Close()
	}
}
