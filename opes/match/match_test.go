package match

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/opesmilter/opes-milter/opes"
)

func ptr[T any](v T) *T { return &v }

// txOpts describes a transaction for the table tests.
type txOpts struct {
	addr    string
	helo    string
	auth    string
	tls     bool
	sender  *opes.Address
	rcpts   []string
	refused []string
	headers [][2]string
	body    string
}

func newTx(t *testing.T, o txOpts) *opes.Transaction {
	t.Helper()
	conn := &opes.Connection{Helo: o.helo, AuthUser: o.auth}
	if o.addr != "" {
		conn.Addr = netip.MustParseAddr(o.addr)
	}
	if o.tls {
		conn.TLSVersion = "TLSv1.3"
	}
	tx := &opes.Transaction{Conn: conn, Sender: o.sender, Header: opes.NewHeader(), Body: opes.NewBody(opes.BodyOptions{})}
	t.Cleanup(func() { _ = tx.Body.Close() })
	for _, r := range o.rcpts {
		tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}})
	}
	for _, r := range o.refused {
		tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}, Refused: true})
	}
	for _, h := range o.headers {
		if err := tx.Header.Add(h[0], h[1]); err != nil {
			t.Fatalf("header %q: %v", h[0], err)
		}
	}
	if o.body != "" {
		if _, err := tx.Body.Write([]byte(o.body)); err != nil {
			t.Fatal(err)
		}
	}
	return tx
}

func from(addr string, args ...string) *opes.Address { return &opes.Address{Addr: addr, Args: args} }

func mustCompile(t *testing.T, s Spec) *Condition {
	t.Helper()
	c, err := Compile(s)
	if err != nil {
		t.Fatalf("Compile(%+v): %v", s, err)
	}
	return c
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		tx   txOpts
		rcpt string // when set, evaluate at RCPT for this recipient
		want bool
	}{
		{"empty spec matches everything", Spec{}, txOpts{}, "", true},

		{"client v4 exact", Spec{Client: []string{"192.0.2.1"}}, txOpts{addr: "192.0.2.1"}, "", true},
		{"client v4 other", Spec{Client: []string{"192.0.2.1"}}, txOpts{addr: "192.0.2.2"}, "", false},
		{"client v4 cidr", Spec{Client: []string{"198.51.100.0/24"}}, txOpts{addr: "198.51.100.77"}, "", true},
		{"client v4 cidr outside", Spec{Client: []string{"198.51.100.0/24"}}, txOpts{addr: "198.51.101.1"}, "", false},
		{"client cidr host bits are masked", Spec{Client: []string{"198.51.100.9/24"}}, txOpts{addr: "198.51.100.200"}, "", true},
		{"client list is OR", Spec{Client: []string{"10.0.0.0/8", "2001:db8::/32"}}, txOpts{addr: "2001:db8:1::5"}, "", true},
		{"client v6 outside", Spec{Client: []string{"2001:db8::/32"}}, txOpts{addr: "2001:db9::1"}, "", false},
		{"client v4-mapped address matches v4 entry", Spec{Client: []string{"192.0.2.0/24"}}, txOpts{addr: "::ffff:192.0.2.10"}, "", true},
		{"client zoned address matches plain v6", Spec{Client: []string{"fe80::/10"}}, txOpts{addr: "fe80::1%eth0"}, "", true},
		{"client unknown (unix socket) never matches", Spec{Client: []string{"0.0.0.0/0"}}, txOpts{}, "", false},

		{"helo regex case-insensitive", Spec{Helo: []string{`^mail\.example\.org$`}}, txOpts{helo: "MAIL.Example.ORG"}, "", true},
		{"helo regex no match", Spec{Helo: []string{`^mail\.example\.org$`}}, txOpts{helo: "mail.example.org.evil"}, "", false},
		{"helo (?-i) restores case", Spec{Helo: []string{`(?-i)^localhost$`}}, txOpts{helo: "LOCALHOST"}, "", false},
		{"helo empty never matches an anchored regex", Spec{Helo: []string{`^\[`}}, txOpts{}, "", false},

		{"auth exact case-insensitive", Spec{Auth: []string{"Alice"}}, txOpts{auth: "alice"}, "", true},
		{"auth other user", Spec{Auth: []string{"alice"}}, txOpts{auth: "bob"}, "", false},
		{"auth star any user", Spec{Auth: []string{"*"}}, txOpts{auth: "bob"}, "", true},
		{"auth star unauthenticated", Spec{Auth: []string{"*"}}, txOpts{}, "", false},
		{"authenticated true", Spec{Authenticated: ptr(true)}, txOpts{auth: "x"}, "", true},
		{"authenticated true, not authed", Spec{Authenticated: ptr(true)}, txOpts{}, "", false},
		{"authenticated false", Spec{Authenticated: ptr(false)}, txOpts{}, "", true},
		{"authenticated false, authed", Spec{Authenticated: ptr(false)}, txOpts{auth: "x"}, "", false},
		{"tls true", Spec{TLS: ptr(true)}, txOpts{tls: true}, "", true},
		{"tls true plaintext", Spec{TLS: ptr(true)}, txOpts{}, "", false},
		{"tls false plaintext", Spec{TLS: ptr(false)}, txOpts{}, "", true},

		{"sender exact case-insensitive", Spec{Sender: []string{"Boss@Example.org"}}, txOpts{sender: from("boss@EXAMPLE.ORG")}, "", true},
		{"sender with brackets in config", Spec{Sender: []string{"<boss@example.org>"}}, txOpts{sender: from("boss@example.org")}, "", true},
		{"sender exact no match", Spec{Sender: []string{"boss@example.org"}}, txOpts{sender: from("boss@example.org.evil")}, "", false},
		{"sender null reverse-path", Spec{Sender: []string{"<>"}}, txOpts{sender: from("")}, "", true},
		{"sender null reverse-path, real sender", Spec{Sender: []string{"<>"}}, txOpts{sender: from("a@b.example")}, "", false},
		{"sender before MAIL never matches", Spec{Sender: []string{"<>"}}, txOpts{}, "", false},
		{"sender_domain exact", Spec{SenderDomain: []string{"Example.org"}}, txOpts{sender: from("a@EXAMPLE.org")}, "", true},
		{"sender_domain exact excludes subdomain", Spec{SenderDomain: []string{"example.org"}}, txOpts{sender: from("a@mx.example.org")}, "", false},
		{"sender_domain dot matches subdomain", Spec{SenderDomain: []string{".example.org"}}, txOpts{sender: from("a@mx.example.org")}, "", true},
		{"sender_domain dot matches deep subdomain", Spec{SenderDomain: []string{".example.org"}}, txOpts{sender: from("a@a.b.example.org")}, "", true},
		{"sender_domain dot excludes the domain itself", Spec{SenderDomain: []string{".example.org"}}, txOpts{sender: from("a@example.org")}, "", false},
		{"sender_domain dot is a label boundary", Spec{SenderDomain: []string{".example.org"}}, txOpts{sender: from("a@badexample.org")}, "", false},
		{"sender_domain trailing dot in config", Spec{SenderDomain: []string{"example.org."}}, txOpts{sender: from("a@example.org")}, "", true},
		{"sender_domain null sender", Spec{SenderDomain: []string{"example.org"}}, txOpts{sender: from("")}, "", false},
		{"sender_domain address literal", Spec{SenderDomain: []string{"[192.0.2.1]"}}, txOpts{sender: from("a@[192.0.2.1]")}, "", true},
		{"sender_regex case-insensitive", Spec{SenderRegex: []string{`^bounce-[0-9]+@`}}, txOpts{sender: from("BOUNCE-42@lists.example")}, "", true},
		{"sender_regex no match", Spec{SenderRegex: []string{`^bounce-[0-9]+@`}}, txOpts{sender: from("bounce-x@lists.example")}, "", false},
		{"sender keys are ANDed", Spec{Sender: []string{"a@example.org"}, SenderDomain: []string{"example.net"}}, txOpts{sender: from("a@example.org")}, "", false},

		{"rcpt at RCPT tests that recipient", Spec{Recipient: []string{"trap@example.org"}}, txOpts{rcpts: []string{"user@example.org"}}, "TRAP@example.org", true},
		{"rcpt at RCPT ignores the others", Spec{Recipient: []string{"trap@example.org"}}, txOpts{rcpts: []string{"trap@example.org"}}, "user@example.org", false},
		{"rcpt outside RCPT: any accepted", Spec{Recipient: []string{"trap@example.org"}}, txOpts{rcpts: []string{"user@example.org", "trap@example.org"}}, "", true},
		{"rcpt outside RCPT: refused ones do not count", Spec{Recipient: []string{"trap@example.org"}}, txOpts{rcpts: []string{"user@example.org"}, refused: []string{"trap@example.org"}}, "", false},
		{"rcpt outside RCPT: none yet", Spec{Recipient: []string{"trap@example.org"}}, txOpts{}, "", false},
		{"recipient_domain subdomain", Spec{RecipientDomain: []string{".example.org"}}, txOpts{}, "x@lists.example.org", true},
		{"recipient_regex", Spec{RecipientRegex: []string{`^postmaster@`}}, txOpts{}, "PostMaster@example.org", true},
		{"recipient keys describe one recipient", Spec{Recipient: []string{"a@example.org", "b@example.net"}, RecipientDomain: []string{"example.net"}},
			txOpts{rcpts: []string{"a@example.org", "c@example.net"}}, "", false},
		{"recipient keys one recipient satisfies all", Spec{Recipient: []string{"a@example.org", "b@example.net"}, RecipientDomain: []string{"example.net"}},
			txOpts{rcpts: []string{"a@example.org", "b@example.net"}}, "", true},

		{"header regex", Spec{Header: []string{"X-Spam-Flag: ^yes$"}}, txOpts{headers: [][2]string{{"x-spam-flag", " YES"}}}, "", true},
		{"header any field of that name", Spec{Header: []string{"Received: from evil"}},
			txOpts{headers: [][2]string{{"Received", "from good"}, {"Received", "from evil.example"}}}, "", true},
		{"header value is unfolded", Spec{Header: []string{`Subject: ^hello world$`}}, txOpts{headers: [][2]string{{"Subject", "hello\r\n world"}}}, "", true},
		{"header no such field", Spec{Header: []string{"X-Spam-Flag: yes"}}, txOpts{headers: [][2]string{{"Subject", "yes"}}}, "", false},
		{"header presence", Spec{Header: []string{"List-Id:"}}, txOpts{headers: [][2]string{{"List-ID", "<l.example>"}}}, "", true},
		{"header presence absent", Spec{Header: []string{"List-Id:"}}, txOpts{headers: [][2]string{{"Subject", "x"}}}, "", false},
		{"header list is OR", Spec{Header: []string{"X-A: 1", "X-B: 2"}}, txOpts{headers: [][2]string{{"X-B", "2"}}}, "", true},

		{"size_over body", Spec{SizeOver: 10}, txOpts{body: "01234567890"}, "", true},
		{"size_over body equal is not over", Spec{SizeOver: 10}, txOpts{body: "0123456789"}, "", false},
		{"size_over declared SIZE before the body", Spec{SizeOver: 1000}, txOpts{sender: from("a@b.example", "BODY=8BITMIME", "size=5000")}, "", true},
		{"size_over declared SIZE small", Spec{SizeOver: 1000}, txOpts{sender: from("a@b.example", "SIZE=500")}, "", false},
		{"size_over bad SIZE ignored", Spec{SizeOver: 1000}, txOpts{sender: from("a@b.example", "SIZE=lots")}, "", false},

		{"keys are ANDed: all hold", Spec{Client: []string{"192.0.2.0/24"}, Sender: []string{"a@example.org"}, TLS: ptr(true)},
			txOpts{addr: "192.0.2.5", sender: from("a@example.org"), tls: true}, "", true},
		{"keys are ANDed: one fails", Spec{Client: []string{"192.0.2.0/24"}, Sender: []string{"a@example.org"}, TLS: ptr(true)},
			txOpts{addr: "192.0.2.5", sender: from("a@example.org")}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustCompile(t, tt.spec)
			tx := newTx(t, tt.tx)
			var rcpt *opes.Recipient
			if tt.rcpt != "" {
				rcpt = &opes.Recipient{Address: opes.Address{Addr: tt.rcpt}}
				tx.Recipients = append(tx.Recipients, rcpt)
			}
			if got := c.Match(tx, rcpt); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchNilSafety(t *testing.T) {
	var c *Condition
	if !c.Match(&opes.Transaction{}, nil) || !c.Empty() || c.Needs() != (opes.Needs{}) || c.EarliestStage() != opes.StageConnect {
		t.Error("a nil *Condition must behave as the empty condition")
	}
	// A transaction without connection or header must not panic.
	full := mustCompile(t, Spec{Client: []string{"::/0"}, Helo: []string{"x"}, Header: []string{"A: b"}, TLS: ptr(false)})
	if full.Match(&opes.Transaction{}, nil) {
		t.Error("conditions on absent data must not match")
	}
	if !mustCompile(t, Spec{}).Match(nil, nil) {
		t.Error("empty condition must match a nil transaction")
	}
}

func TestCompileErrors(t *testing.T) {
	long := strings.Repeat("a", MaxPatternLen+1)
	tests := []struct {
		name  string
		spec  Spec
		field string
		msg   string
	}{
		{"bad address", Spec{Client: []string{"192.0.2.1", "10.0.0.0/8", "example.org"}}, "client[3]", "not an IP address or CIDR"},
		{"bad cidr", Spec{Client: []string{"192.0.2.0/33"}}, "client[1]", "not an IP address or CIDR"},
		{"empty client", Spec{Client: []string{""}}, "client[1]", "empty"},
		{"zoned client", Spec{Client: []string{"fe80::1%eth0"}}, "client[1]", "zone"},
		{"mapped cidr", Spec{Client: []string{"::ffff:192.0.2.0/120"}}, "client[1]", "IPv4-mapped"},
		{"bad helo regex", Spec{Helo: []string{"ok", "(unclosed"}}, "helo[2]", "regular expression"},
		{"empty helo regex", Spec{Helo: []string{""}}, "helo[1]", "empty"},
		{"long regex", Spec{SenderRegex: []string{long}}, "sender_regex[1]", "longer than 1000"},
		{"bad recipient regex", Spec{RecipientRegex: []string{"a**"}}, "recipient_regex[1]", "regular expression"},
		{"auth control char", Spec{Auth: []string{"al\nice"}}, "auth[1]", "control"},
		{"auth empty", Spec{Auth: []string{""}}, "auth[1]", "empty"},
		{"sender with space", Spec{Sender: []string{"a b@example.org"}}, "sender[1]", "0x20"},
		{"sender empty", Spec{Sender: []string{""}}, "sender[1]", "empty"},
		{"null recipient", Spec{Recipient: []string{"ok@example.org", "<>"}}, "recipient[2]", "only a sender"},
		{"sender_domain with @", Spec{SenderDomain: []string{"a@example.org"}}, "sender_domain[1]", "0x40"},
		{"sender_domain empty", Spec{SenderDomain: []string{"."}}, "sender_domain[1]", "empty domain"},
		{"recipient_domain empty label", Spec{RecipientDomain: []string{"example..org"}}, "recipient_domain[1]", "empty label"},
		{"recipient_domain literal subdomain", Spec{RecipientDomain: []string{".[192.0.2.1]"}}, "recipient_domain[1]", "no subdomains"},
		{"header without colon", Spec{Header: []string{"X-Spam yes"}}, "header[1]", "Name: regex"},
		{"header empty name", Spec{Header: []string{": yes"}}, "header[1]", "empty"},
		{"header name with space", Spec{Header: []string{"X Spam: yes"}}, "header[1]", "0x20"},
		{"header bad regex", Spec{Header: []string{"X-A: ok", "X-B: [z-a]"}}, "header[2]", "regular expression"},
		{"negative size", Spec{SizeOver: -1}, "size_over", "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(tt.spec)
			var fe *opes.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v (%T) is not a *opes.FieldError", err, err)
			}
			if fe.Field != tt.field {
				t.Errorf("Field = %q, want %q", fe.Field, tt.field)
			}
			if !strings.Contains(fe.Err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", fe.Err, tt.msg)
			}
		})
	}
}

func TestStagesAndNeeds(t *testing.T) {
	conn, helo, mail, rcpt, hdrs, eom := opes.StageConnect, opes.StageHelo, opes.StageMail, opes.StageRcpt, opes.StageHeaders, opes.StageEOM
	tests := []struct {
		name     string
		spec     Spec
		earliest opes.Stage
		needs    opes.Needs
		tooEarly string // CheckStage(earliest-1) error; "" when earliest is connect
	}{
		{"empty", Spec{}, conn, opes.Needs{}, ""},
		{"client", Spec{Client: []string{"192.0.2.1"}}, conn, opes.Needs{Stages: opes.StagesOf(conn)}, ""},
		{"tls", Spec{TLS: ptr(true)}, helo, opes.Needs{Stages: opes.StagesOf(helo)}, "tls is not known before helo"},
		{"helo", Spec{Helo: []string{"x"}}, helo, opes.Needs{Stages: opes.StagesOf(helo)}, "helo is not known before helo"},
		{"auth", Spec{Auth: []string{"*"}}, mail, opes.Needs{Stages: opes.StagesOf(mail)}, "auth is not known before mail"},
		{"authenticated", Spec{Authenticated: ptr(false)}, mail, opes.Needs{Stages: opes.StagesOf(mail)}, "authenticated is not known before mail"},
		{"sender", Spec{Sender: []string{"<>"}}, mail, opes.Needs{Stages: opes.StagesOf(mail)}, "sender is not known before mail"},
		{"sender_domain", Spec{SenderDomain: []string{"x.example"}}, mail, opes.Needs{Stages: opes.StagesOf(mail)}, "sender_domain is not known before mail"},
		{"recipient", Spec{Recipient: []string{"a@b.example"}}, rcpt, opes.Needs{Stages: opes.StagesOf(rcpt)}, "recipient is not known before rcpt"},
		{"recipient_regex", Spec{RecipientRegex: []string{"x"}}, rcpt, opes.Needs{Stages: opes.StagesOf(rcpt)}, "recipient_regex is not known before rcpt"},
		{"header", Spec{Header: []string{"X: y"}}, hdrs, opes.Needs{Stages: opes.StagesOf(hdrs), Headers: true}, "header is not known before headers"},
		{"size_over", Spec{SizeOver: 1}, eom, opes.Needs{Stages: opes.StagesOf(eom), Body: true}, "size_over is not known before eom"},
		{"mixed: latest wins, all stages needed", Spec{Client: []string{"192.0.2.1"}, Recipient: []string{"a@b.example"}, Header: []string{"X:"}},
			hdrs, opes.Needs{Stages: opes.StagesOf(conn, rcpt, hdrs), Headers: true}, "header is not known before headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustCompile(t, tt.spec)
			if got := c.EarliestStage(); got != tt.earliest {
				t.Errorf("EarliestStage = %v, want %v", got, tt.earliest)
			}
			if got := c.Needs(); got != tt.needs {
				t.Errorf("Needs = %+v (%v), want %+v (%v)", got, got.Stages, tt.needs, tt.needs.Stages)
			}
			if err := c.CheckStage(tt.earliest); err != nil {
				t.Errorf("CheckStage(%v) = %v, want nil", tt.earliest, err)
			}
			if tt.earliest > conn {
				err := c.CheckStage(tt.earliest - 1)
				if err == nil || err.Error() != tt.tooEarly {
					t.Errorf("CheckStage(%v) = %v, want %q", tt.earliest-1, err, tt.tooEarly)
				}
			}
			if got, want := c.Empty(), tt.name == "empty"; got != want {
				t.Errorf("Empty = %v, want %v", got, want)
			}
		})
	}
}

// TestSpecTOML checks the key names the policy file uses.
func TestSpecTOML(t *testing.T) {
	src := `
client = ["192.0.2.0/24"]
helo = ["^mx"]
auth = ["*"]
authenticated = true
tls = true
sender = ["<>"]
sender_domain = [".example.org"]
sender_regex = ["x"]
recipient = ["a@example.net"]
recipient_domain = ["example.net"]
recipient_regex = ["^a@"]
header = ["X-A: b"]
size_over = 10
`
	var s Spec
	md, err := toml.Decode(src, &s)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("undecoded keys %v", u)
	}
	c := mustCompile(t, s)
	want := opes.Needs{Stages: opes.StagesOf(opes.StageConnect, opes.StageHelo, opes.StageMail, opes.StageRcpt, opes.StageHeaders, opes.StageEOM), Headers: true, Body: true}
	if c.Needs() != want {
		t.Errorf("Needs = %+v, want %+v: a key was not decoded", c.Needs(), want)
	}
}

// TestThroughProcessor runs conditions as rule conditions in a real
// session, where the transaction's stage is set by the processor.
func TestThroughProcessor(t *testing.T) {
	const sys = "https://mx.example.net/opes/"
	big := mustCompile(t, Spec{SizeOver: 1000})
	trap := mustCompile(t, Spec{Recipient: []string{"trap@example.org"}})
	pol := &opes.Policy{
		System: opes.System{URI: sys},
		Rules: []*opes.Rule{
			{Name: "big-mail", Stage: opes.StageMail, When: big, Verdict: &opes.Verdict{Kind: opes.Reject}, URI: sys + "rule/big-mail"},
			{Name: "trap", Stage: opes.StageRcpt, When: trap, Verdict: &opes.Verdict{Kind: opes.Reject}, URI: sys + "rule/trap"},
			{Name: "big-eom", Stage: opes.StageEOM, When: big, Verdict: &opes.Verdict{Kind: opes.Reject}, URI: sys + "rule/big-eom"},
		},
	}
	p, err := opes.NewProcessor(pol, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr("192.0.2.1")
	if o := s.Mail(ctx, opes.Address{Addr: "a@example.org", Args: []string{"SIZE=5000"}}); o.Kind != opes.Reject {
		t.Fatalf("MAIL with SIZE=5000: %v, want reject", o.Kind)
	}

	// The declared size is only an estimate: at the end of the message
	// the real body decides.
	if o := s.Mail(ctx, opes.Address{Addr: "a@example.org", Args: []string{"SIZE=500"}}); o.Kind != opes.Continue {
		t.Fatalf("MAIL with SIZE=500: %v", o.Kind)
	}
	if o := s.Rcpt(ctx, opes.Address{Addr: "trap@example.org"}); o.Kind != opes.Reject {
		t.Fatalf("RCPT trap: %v, want reject", o.Kind)
	}
	if o := s.Rcpt(ctx, opes.Address{Addr: "user@example.org"}); o.Kind != opes.Continue {
		t.Fatalf("RCPT user: %v, want continue", o.Kind)
	}
	if trap.Match(s.Transaction(), nil) {
		t.Error("the refused trap recipient must not count as an accepted recipient")
	}
	s.Data(ctx)
	s.EndOfHeaders(ctx)
	if o := s.BodyChunk(make([]byte, 1001)); o != nil {
		t.Fatalf("body: %v", o.Kind)
	}
	if o := s.EndOfMessage(ctx, ""); o.Kind != opes.Reject {
		t.Errorf("EOM with 1001 octets and SIZE=500: %v, want reject", o.Kind)
	}
	s.Abort()

	// A declared size that grows after MAIL (the rule at MAIL saw none)
	// is ignored at the end of the message: the body is judged.
	s.Mail(ctx, opes.Address{Addr: "a@example.org"})
	s.Rcpt(ctx, opes.Address{Addr: "user@example.org"})
	s.Transaction().Sender.Args = []string{"SIZE=999999"}
	s.Data(ctx)
	s.EndOfHeaders(ctx)
	s.BodyChunk([]byte("short"))
	if o := s.EndOfMessage(ctx, ""); o.Kind != opes.Continue {
		t.Errorf("EOM with a 5-octet body and SIZE=999999: %v, want continue", o.Kind)
	}
}
