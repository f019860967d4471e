package acl

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.example.net/opes/"

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		field string
		msg   string
	}{
		{"no entries", ``, "entry", "at least one entry"},
		{"missing action", `[[options.entry]]
client = ["192.0.2.1"]`, "entry[1].action", "required"},
		{"unknown action", `[[options.entry]]
action = "deny"
[[options.entry]]
action = "drop"`, "entry[2].action", `unknown action "drop"`},
		{"unknown stage", `[[options.entry]]
action = "deny"
stage = "quit"`, "entry[1].stage", `unknown stage "quit"`},
		{"stage before the data exists", `[[options.entry]]
action = "allow"
[[options.entry]]
action = "deny"
[[options.entry]]
action = "deny"
stage = "mail"
recipient = ["spamtrap@example.org"]`, "entry[3].stage", "recipient is not known before rcpt"},
		{"header at rcpt", `[[options.entry]]
action = "deny"
stage = "rcpt"
header = ["X-Spam: yes"]`, "entry[1].stage", "header is not known before headers"},
		{"bad condition value", `[[options.entry]]
action = "deny"
client = ["192.0.2.1", "not-an-ip"]`, "entry[1].client[2]", "not an IP address"},
		{"bad regex", `[[options.entry]]
action = "deny"
sender_regex = ["("]`, "entry[1].sender_regex[1]", "regular expression"},
		{"deny with 4xx", `[[options.entry]]
action = "deny"
code = 450`, "entry[1].code", "not a 5xx"},
		{"tempfail with 5xx", `[[options.entry]]
action = "tempfail"
code = 550`, "entry[1].code", "not a 4xx"},
		{"code out of range", `[[options.entry]]
action = "deny"
code = 5500`, "entry[1].code", "not a 5xx"},
		{"enhanced class differs from code", `[[options.entry]]
action = "deny"
code = 550
enhanced = "4.7.1"`, "entry[1].enhanced", "does not match"},
		{"enhanced class differs from action", `[[options.entry]]
action = "tempfail"
enhanced = "5.7.1"`, "entry[1].enhanced", "does not match"},
		{"enhanced malformed", `[[options.entry]]
action = "deny"
enhanced = "5.7"`, "entry[1].enhanced", "class.subject.detail"},
		{"reply on allow", `[[options.entry]]
action = "allow"
reply = "welcome"`, "entry[1].reply", "allow entry sends no reply"},
		{"code on allow", `[[options.entry]]
action = "allow"
code = 250`, "entry[1].code", "allow entry sends no reply"},
		{"reply with control character", `[[options.entry]]
action = "deny"
reply = "no\r\n250 ok"`, "entry[1].reply", "0x0d"},
		{"reply non-ASCII", `[[options.entry]]
action = "deny"
reply = "déjà"`, "entry[1].reply", "printable US-ASCII"},
		{"reply too long", `[[options.entry]]
action = "deny"
reply = "` + strings.Repeat("x", 201) + `"`, "entry[1].reply", "longer than 200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
}

func TestNewDecodeError(t *testing.T) {
	servicetest.WantDecodeError(t, New, "[[options.entry]]\naction = 5\n", "acl")
	if _, err := New(nil); err == nil {
		t.Fatal("no options must be an error: an acl without entries does nothing")
	}
}

func TestNeeds(t *testing.T) {
	conn, helo, mail, rcpt, hdrs, eom := opes.StageConnect, opes.StageHelo, opes.StageMail, opes.StageRcpt, opes.StageHeaders, opes.StageEOM
	tests := []struct {
		name string
		src  string
		want opes.Needs
	}{
		{"client at default stage", `[[options.entry]]
action = "deny"
client = ["192.0.2.0/24"]`, opes.Needs{Stages: opes.StagesOf(conn)}},
		{"client read at rcpt", `[[options.entry]]
action = "deny"
stage = "rcpt"
client = ["192.0.2.0/24"]`, opes.Needs{Stages: opes.StagesOf(conn, rcpt)}},
		{"several stages", `[[options.entry]]
action = "deny"
helo = ["^localhost$"]
[[options.entry]]
action = "deny"
sender = ["<>"]
recipient = ["a@example.org"]`, opes.Needs{Stages: opes.StagesOf(helo, mail, rcpt)}},
		{"header entry", `[[options.entry]]
action = "deny"
header = ["X-Spam-Flag: yes"]`, opes.Needs{Stages: opes.StagesOf(hdrs), Headers: true}},
		{"size entry", `[[options.entry]]
action = "deny"
size_over = 100`, opes.Needs{Stages: opes.StagesOf(eom), Body: true}},
		{"unconditional entry defaults to connect", `[[options.entry]]
action = "tempfail"`, opes.Needs{Stages: opes.StagesOf(conn)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servicetest.MustNew(t, New, tt.src).Needs(); got != tt.want {
				t.Errorf("Needs = %+v (%v), want %+v (%v)", got, got.Stages, tt.want, tt.want.Stages)
			}
		})
	}
}

// call runs the hook of stage st.
func call(t *testing.T, stx opes.ServiceTx, st opes.Stage, rcpt *opes.Recipient) opes.Verdict {
	t.Helper()
	ctx := context.Background()
	var v opes.Verdict
	var err error
	switch st {
	case opes.StageConnect:
		v, err = stx.Connect(ctx)
	case opes.StageHelo:
		v, err = stx.Helo(ctx)
	case opes.StageMail:
		v, err = stx.Mail(ctx)
	case opes.StageRcpt:
		v, err = stx.Rcpt(ctx, rcpt)
	case opes.StageData:
		v, err = stx.Data(ctx)
	case opes.StageHeaders:
		v, err = stx.Headers(ctx)
	case opes.StageEOM:
		v, err = stx.EndOfMessage(ctx)
	}
	if err != nil {
		t.Fatalf("%v hook: %v", st, err)
	}
	return v
}

func TestDecide(t *testing.T) {
	const entries = `
[[options.entry]]
action = "allow"
client = ["192.0.2.10"]
[[options.entry]]
action = "deny"
client = ["192.0.2.0/24"]
reply = "Your network is blocked"
[[options.entry]]
action = "tempfail"
helo = ["^localhost$"]
code = 421
enhanced = "4.7.0"
[[options.entry]]
action = "deny"
sender_domain = [".spam.example"]
code = 553
[[options.entry]]
action = "allow"
recipient = ["postmaster@example.org"]
[[options.entry]]
action = "deny"
recipient_domain = ["example.org"]
auth = ["*"]
authenticated = true
[[options.entry]]
action = "deny"
recipient = ["spamtrap@example.org", "postmaster@example.org"]
reply = "Mailbox is a spam trap"
[[options.entry]]
action = "deny"
stage = "mail"
client = ["198.51.100.0/24"]
[[options.entry]]
action = "deny"
header = ["X-Mailer: ^BulkBlaster"]
[[options.entry]]
action = "tempfail"
stage = "eom"
recipient = ["slow@example.org"]
`
	svc := servicetest.MustNew(t, New, entries)
	allowed := opes.Verdict{Kind: opes.Continue, Action: "analyzed"}
	denied := func(r opes.Reply) opes.Verdict {
		return opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "access policy", Reply: r}
	}
	tempfailed := func(r opes.Reply) opes.Verdict {
		return opes.Verdict{Kind: opes.TempFail, Action: "rejected", Reason: "access policy", Reply: r}
	}
	tests := []struct {
		name   string
		addr   string
		helo   string
		auth   string
		sender string
		rcpts  []string // accepted before the stage
		stage  opes.Stage
		rcpt   string
		header [2]string
		want   opes.Verdict
	}{
		{"allow beats a later deny", "192.0.2.10", "", "", "", nil, opes.StageConnect, "", [2]string{}, allowed},
		{"deny network with reply text", "192.0.2.11", "", "", "", nil, opes.StageConnect, "", [2]string{}, denied(opes.Reply{Text: "Your network is blocked"})},
		{"no entry matches", "203.0.113.1", "", "", "", nil, opes.StageConnect, "", [2]string{}, allowed},
		{"mail-stage client entry is not tried at connect", "198.51.100.1", "", "", "", nil, opes.StageConnect, "", [2]string{}, allowed},
		{"mail-stage client entry fires at mail", "198.51.100.1", "", "", "a@example.net", nil, opes.StageMail, "", [2]string{}, denied(opes.Reply{})},
		{"connect allow does not exempt later stages", "192.0.2.10", "", "", "a@x.spam.example", nil, opes.StageMail, "", [2]string{}, denied(opes.Reply{Code: 553})},
		{"tempfail with codes", "203.0.113.1", "LOCALHOST", "", "", nil, opes.StageHelo, "", [2]string{}, tempfailed(opes.Reply{Code: 421, Enhanced: "4.7.0"})},
		{"subdomain sender", "203.0.113.1", "mx", "", "bulk@mx.spam.example", nil, opes.StageMail, "", [2]string{}, denied(opes.Reply{Code: 553})},
		{"apex domain is not a subdomain", "203.0.113.1", "mx", "", "bulk@spam.example", nil, opes.StageMail, "", [2]string{}, allowed},
		{"spam trap recipient", "203.0.113.1", "mx", "", "a@example.net", nil, opes.StageRcpt, "SpamTrap@example.org", [2]string{}, denied(opes.Reply{Text: "Mailbox is a spam trap"})},
		{"other recipient", "203.0.113.1", "mx", "", "a@example.net", nil, opes.StageRcpt, "user@example.org", [2]string{}, allowed},
		{"allow for postmaster stops the trap entry", "203.0.113.1", "mx", "", "a@example.net", nil, opes.StageRcpt, "postmaster@example.org", [2]string{}, allowed},
		{"authenticated users may not send to example.org", "203.0.113.1", "mx", "alice", "a@example.net", nil, opes.StageRcpt, "user@example.org", [2]string{}, denied(opes.Reply{})},
		{"header entry", "203.0.113.1", "mx", "", "a@example.net", []string{"u@example.org"}, opes.StageHeaders, "", [2]string{"X-Mailer", "bulkblaster 2.0"}, denied(opes.Reply{})},
		{"header entry no match", "203.0.113.1", "mx", "", "a@example.net", []string{"u@example.org"}, opes.StageHeaders, "", [2]string{"X-Mailer", "mutt"}, allowed},
		{"recipient entry at eom looks at accepted recipients", "203.0.113.1", "mx", "", "a@example.net", []string{"u@example.org", "slow@example.org"}, opes.StageEOM, "", [2]string{}, tempfailed(opes.Reply{})},
		{"no entries at data", "192.0.2.11", "localhost", "", "a@x.spam.example", []string{"spamtrap@example.org"}, opes.StageData, "", [2]string{}, allowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := &opes.Transaction{
				Conn:   &opes.Connection{Addr: netip.MustParseAddr(tt.addr), Helo: tt.helo, AuthUser: tt.auth},
				Header: opes.NewHeader(),
			}
			if tt.sender != "" {
				tx.Sender = &opes.Address{Addr: tt.sender}
			}
			for _, r := range tt.rcpts {
				tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}})
			}
			var rcpt *opes.Recipient
			if tt.rcpt != "" {
				rcpt = &opes.Recipient{Address: opes.Address{Addr: tt.rcpt}}
				tx.Recipients = append(tx.Recipients, rcpt)
			}
			if tt.header[0] != "" {
				if err := tx.Header.Add(tt.header[0], tt.header[1]); err != nil {
					t.Fatal(err)
				}
			}
			stx := svc.Begin(tx)
			defer stx.Close()
			if got := call(t, stx, tt.stage, rcpt); got != tt.want {
				t.Errorf("verdict = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func newProcessor(t *testing.T, src string) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "access", Kind: "acl", URI: sysURI + "svc/access", Impl: servicetest.MustNew(t, New, src)}
	return servicetest.NewProcessor(t, sysURI, opes.StageConnect, opes.Limits{}, spec)
}

// TestProcessorRefusesOneRecipient is RFC 4496 §4.8 through the real
// pipeline: the trap recipient is refused at RCPT with the trace in the
// reply, the other recipient is accepted and the message delivered.
func TestProcessorRefusesOneRecipient(t *testing.T) {
	p := newProcessor(t, `
[[options.entry]]
action = "deny"
recipient = ["spamtrap@example.org"]
reply = "Mailbox is a spam trap"
code = 550
enhanced = "5.7.1"
`)
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr("203.0.113.9")
	for _, o := range []*opes.Outcome{s.Connect(ctx), s.Helo(ctx, "mx.example.net"), s.Mail(ctx, opes.Address{Addr: "a@example.net"})} {
		if o.Kind != opes.Continue {
			t.Fatalf("before RCPT: %v", o.Kind)
		}
	}
	o := s.Rcpt(ctx, opes.Address{Addr: "spamtrap@example.org"})
	if o.Kind != opes.Reject || o.Reply == nil {
		t.Fatalf("trap RCPT: %+v, want reject with a reply", o)
	}
	reply := o.Reply.String()
	for _, want := range []string{
		"550-5.7.1 Mailbox is a spam trap\r\n",
		"550-5.7.1 OPES-System: " + sysURI + "; id=" + o.TraceID + "\r\n",
		"550-5.7.1 OPES-Via: " + sysURI + "svc/access; action=rejected; bypassable=no\r\n",
		"550 5.7.1 Policy, privacy and bypass: " + sysURI,
	} {
		if !strings.Contains(reply, want) {
			t.Errorf("reply lacks %q:\n%s", want, reply)
		}
	}
	if o := s.Rcpt(ctx, opes.Address{Addr: "user@example.org"}); o.Kind != opes.Continue {
		t.Fatalf("second RCPT: %v, want continue", o.Kind)
	}
	s.Data(ctx)
	s.Header("Subject", " hi")
	s.EndOfHeaders(ctx)
	s.BodyChunk([]byte("hello\r\n"))
	eom := s.EndOfMessage(ctx, "")
	if eom.Kind != opes.Continue {
		t.Fatalf("EOM: %v", eom.Kind)
	}
	if eom.TraceID != o.TraceID {
		t.Errorf("trace id changed between RCPT (%s) and EOM (%s)", o.TraceID, eom.TraceID)
	}
	if got := s.Transaction().AcceptedRecipients(); len(got) != 1 || got[0].Addr != "user@example.org" {
		t.Errorf("accepted recipients = %v", got)
	}
}

func TestProcessorTempfailAtMail(t *testing.T) {
	p := newProcessor(t, `
[[options.entry]]
action = "allow"
auth = ["*"]
[[options.entry]]
action = "tempfail"
sender_domain = ["example.org"]
`)
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr("203.0.113.9")
	s.Connect(ctx)
	o := s.Mail(ctx, opes.Address{Addr: "forged@example.org"})
	if o.Kind != opes.TempFail || o.Reply == nil {
		t.Fatalf("MAIL: %+v, want tempfail", o)
	}
	// No reply text configured: the processor's default text and the
	// verdict's reason.
	if first := strings.SplitN(o.Reply.String(), "\r\n", 2)[0]; first != "451-4.7.1 Sender temporarily refused by OPES policy (access policy)" {
		t.Errorf("first reply line = %q", first)
	}

	// The same sender, authenticated, is allowed by the first entry.
	s.Abort()
	s.Conn().AuthUser = "alice"
	if o := s.Mail(ctx, opes.Address{Addr: "alice@example.org"}); o.Kind != opes.Continue {
		t.Fatalf("authenticated MAIL: %v, want continue", o.Kind)
	}

	// A later transaction on the same connection is checked again.
	s.Abort()
	s.Conn().AuthUser = ""
	if o := s.Mail(ctx, opes.Address{Addr: "forged@example.org"}); o.Kind != opes.TempFail {
		t.Fatalf("third MAIL: %v, want tempfail", o.Kind)
	}
}
