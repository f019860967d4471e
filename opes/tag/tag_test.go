package tag

import (
	"context"
	"net/netip"
	"reflect"
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
		{"nothing to do", "[options]\n", "header", "header or subject_prefix is required"},
		{"only blanks", "[options]\nheader = \"  \"\nsubject_prefix = \" \"", "header", "header or subject_prefix is required"},
		{"header without colon", "[options]\nheader = \"X-Tag external\"", "header", `is not "Name: value"`},
		{"header name with space", "[options]\nheader = \"X Tag: external\"", "header", "0x20"},
		{"header empty name", "[options]\nheader = \": external\"", "header", "empty"},
		{"header empty value", "[options]\nheader = \"X-Tag:\"", "header", "empty value"},
		{"header value with CRLF", "[options]\nheader = \"X-Tag: a\\r\\nBcc: victim@example.org\"", "header", "0x0d"},
		{"header value non-ASCII", "[options]\nheader = \"X-Tag: extérieur\"", "header", "printable US-ASCII"},
		{"header value too long", "[options]\nheader = \"X-Tag: " + strings.Repeat("x", 992) + "\"", "header", "longer than 991"},
		{"trace field", "[options]\nheader = \"OPES-Via: https://evil.example/\"", "header", "trace field"},
		{"second Subject", "[options]\nheader = \"subject: hi\"", "header", "at most one Subject"},
		{"prefix with control", "[options]\nsubject_prefix = \"[EXT]\\u0007\"", "subject_prefix", "0x07"},
		{"prefix non-ASCII", "[options]\nsubject_prefix = \"[EXTERNE→]\"", "subject_prefix", "printable US-ASCII"},
		{"prefix too long", "[options]\nsubject_prefix = \"" + strings.Repeat("x", 101) + "\"", "subject_prefix", "longer than 100"},
		{"bad when", "[options]\nsubject_prefix = \"[X]\"\n[options.when]\nclient = [\"10.0.0.0/8\", \"nope\"]", "when.client[2]", "not an IP address"},
		{"bad when header", "[options]\nsubject_prefix = \"[X]\"\n[options.when]\nheader = [\"X-A (\"]", "when.header[1]", "Name: regex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nheader = 5\n", "tag")
}

func TestNeeds(t *testing.T) {
	eom := opes.StageEOM
	tests := []struct {
		name string
		src  string
		want opes.Needs
	}{
		{"header only", "[options]\nheader = \"X-Tag: a\"", opes.Needs{Stages: opes.StagesOf(eom)}},
		{"subject reads the header", "[options]\nsubject_prefix = \"[X]\"", opes.Needs{Stages: opes.StagesOf(eom), Headers: true}},
		{"when header reads the header", "[options]\nheader = \"X-Tag: a\"\n[options.when]\nheader = [\"List-Id:\"]",
			opes.Needs{Stages: opes.StagesOf(opes.StageHeaders, eom), Headers: true}},
		{"when client and sender", "[options]\nheader = \"X-Tag: a\"\n[options.when]\nclient = [\"::/0\"]\nauthenticated = false",
			opes.Needs{Stages: opes.StagesOf(opes.StageConnect, opes.StageMail, eom)}},
		{"when size", "[options]\nheader = \"X-Tag: big\"\n[options.when]\nsize_over = 1000000",
			opes.Needs{Stages: opes.StagesOf(eom), Body: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servicetest.MustNew(t, New, tt.src).Needs(); got != tt.want {
				t.Errorf("Needs = %+v (%v), want %+v (%v)", got, got.Stages, tt.want, tt.want.Stages)
			}
		})
	}
}

type field struct{ Name, Value string }

func fields(h *opes.Header) []field {
	var out []field
	for _, f := range h.Fields() {
		out = append(out, field{f.Name, f.Value})
	}
	return out
}

func TestEndOfMessage(t *testing.T) {
	const (
		both   = "[options]\nheader = \"X-OPES-Tag: external\"\nsubject_prefix = \"[EXTERNAL]\"\n"
		prefix = "[options]\nsubject_prefix = \"[EXTERNAL]\"\n"
		header = "[options]\nheader = \"X-OPES-Tag: external\"\n"
	)
	tests := []struct {
		name    string
		src     string
		auth    string
		rcpts   []string // accepted
		refused []string
		in      []field
		want    []field
		action  string
	}{
		{"header added", header, "", nil, nil,
			[]field{{"Subject", "hello"}},
			[]field{{"Subject", "hello"}, {"X-OPES-Tag", "external"}}, "header-added"},
		{"subject marked", prefix, "", nil, nil,
			[]field{{"From", "a@example.net"}, {"Subject", "hello"}},
			[]field{{"From", "a@example.net"}, {"Subject", "[EXTERNAL] hello"}}, "tagged"},
		{"only the first Subject is marked", prefix, "", nil, nil,
			[]field{{"Subject", "one"}, {"Subject", "two"}},
			[]field{{"Subject", "[EXTERNAL] one"}, {"Subject", "two"}}, "tagged"},
		{"folding kept", prefix, "", nil, nil,
			[]field{{"Subject", "a long subject\r\n\tcontinued"}},
			[]field{{"Subject", "[EXTERNAL] a long subject\r\n\tcontinued"}}, "tagged"},
		{"value starting with a fold", prefix, "", nil, nil,
			[]field{{"Subject", "\r\n hello"}},
			[]field{{"Subject", "[EXTERNAL] hello"}}, "tagged"},
		{"encoded words kept", prefix, "", nil, nil,
			[]field{{"Subject", "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="}},
			[]field{{"Subject", "[EXTERNAL] =?UTF-8?Q?Gr=C3=BC=C3=9Fe?="}}, "tagged"},
		{"already marked", prefix, "", nil, nil,
			[]field{{"Subject", "[EXTERNAL] hello"}},
			[]field{{"Subject", "[EXTERNAL] hello"}}, "analyzed"},
		{"already marked, other case", prefix, "", nil, nil,
			[]field{{"Subject", "[external]hello"}},
			[]field{{"Subject", "[external]hello"}}, "analyzed"},
		{"already marked inside an encoded word", prefix, "", nil, nil,
			[]field{{"Subject", "=?UTF-8?Q?[EXTERNAL]_Gr=C3=BC=C3=9Fe?="}},
			[]field{{"Subject", "=?UTF-8?Q?[EXTERNAL]_Gr=C3=BC=C3=9Fe?="}}, "analyzed"},
		{"prefix elsewhere does not count", prefix, "", nil, nil,
			[]field{{"Subject", "Re: [EXTERNAL] hello"}},
			[]field{{"Subject", "[EXTERNAL] Re: [EXTERNAL] hello"}}, "tagged"},
		{"no Subject: one is added", prefix, "", nil, nil,
			[]field{{"From", "a@example.net"}},
			[]field{{"From", "a@example.net"}, {"Subject", "[EXTERNAL]"}}, "tagged"},
		{"empty Subject", prefix, "", nil, nil,
			[]field{{"Subject", ""}},
			[]field{{"Subject", "[EXTERNAL]"}}, "tagged"},
		{"both", both, "", nil, nil,
			[]field{{"Subject", "hello"}},
			[]field{{"Subject", "[EXTERNAL] hello"}, {"X-OPES-Tag", "external"}}, "tagged"},
		{"both, subject already marked", both, "", nil, nil,
			[]field{{"Subject", "[EXTERNAL] hello"}},
			[]field{{"Subject", "[EXTERNAL] hello"}, {"X-OPES-Tag", "external"}}, "header-added"},
		{"when does not match", both + "[options.when]\nauthenticated = false\n", "alice", nil, nil,
			[]field{{"Subject", "hello"}},
			[]field{{"Subject", "hello"}}, "analyzed"},
		{"when matches", both + "[options.when]\nauthenticated = false\n", "", nil, nil,
			[]field{{"Subject", "hello"}},
			[]field{{"Subject", "[EXTERNAL] hello"}, {"X-OPES-Tag", "external"}}, "tagged"},
		{"when recipient: an accepted one", header + "[options.when]\nrecipient_domain = [\"example.org\"]\n", "", []string{"x@example.net", "y@example.org"}, nil,
			nil, []field{{"X-OPES-Tag", "external"}}, "header-added"},
		{"when recipient: refused ones do not count", header + "[options.when]\nrecipient_domain = [\"example.org\"]\n", "", []string{"x@example.net"}, []string{"y@example.org"},
			nil, nil, "analyzed"},
		{"when header", header + "[options.when]\nheader = [\"List-Id:\"]\n", "", nil, nil,
			[]field{{"List-Id", "<l.example.org>"}},
			[]field{{"List-Id", "<l.example.org>"}, {"X-OPES-Tag", "external"}}, "header-added"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := &opes.Transaction{
				Conn:   &opes.Connection{Addr: netip.MustParseAddr("203.0.113.5"), AuthUser: tt.auth},
				Sender: &opes.Address{Addr: "a@example.net"},
				Header: opes.NewHeader(),
			}
			for _, r := range tt.rcpts {
				tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}})
			}
			for _, r := range tt.refused {
				tx.Recipients = append(tx.Recipients, &opes.Recipient{Address: opes.Address{Addr: r}, Refused: true})
			}
			for _, f := range tt.in {
				if err := tx.Header.Add(f.Name, f.Value); err != nil {
					t.Fatal(err)
				}
			}
			stx := servicetest.MustNew(t, New, tt.src).Begin(tx)
			defer stx.Close()
			v, err := stx.EndOfMessage(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if want := (opes.Verdict{Kind: opes.Continue, Action: tt.action}); v != want {
				t.Errorf("verdict = %+v, want %+v", v, want)
			}
			// Header.Add stores values with CRLF folding.
			want := tt.want
			if got := fields(tx.Header); !reflect.DeepEqual(got, want) {
				t.Errorf("header =\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// TestEndOfMessageBadSubject: a Subject that cannot be rewritten safely is
// an error for the service's on_error policy, not silently left unmarked.
func TestEndOfMessageBadSubject(t *testing.T) {
	p, err := opes.NewProcessor(&opes.Policy{System: opes.System{URI: sysURI}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := p.NewSession()
	defer s.Close()
	s.Header("Subject", " hello\x1bworld") // raw ISO-2022-JP style escape from the wire
	tx := s.Transaction()
	stx := servicetest.MustNew(t, New, "[options]\nsubject_prefix = \"[EXTERNAL]\"\n").Begin(tx)
	defer stx.Close()
	if _, err := stx.EndOfMessage(context.Background()); err == nil || !strings.Contains(err.Error(), "tag: mark subject") {
		t.Fatalf("err = %v, want a mark subject error", err)
	}
}

// TestProcessor runs the service in the real pipeline and checks the
// header as the MTA will deliver it.
func TestProcessor(t *testing.T) {
	svc := servicetest.MustNew(t, New, `
[options]
header = "X-OPES-Tag: external"
subject_prefix = "[EXTERNAL]"
[options.when]
authenticated = false
`)
	spec := &opes.ServiceSpec{Name: "tag", Kind: "tag", URI: sysURI + "svc/tag", Bypassable: true, Impl: svc}
	p := servicetest.NewProcessor(t, sysURI, opes.StageMail, opes.Limits{}, spec)
	sent := [][2]string{{"From", " a@example.net"}, {"Subject", " Quarterly\r\n report"}, {"To", " b@example.org"}}
	var in []opes.HeaderField
	for _, f := range sent {
		in = append(in, opes.HeaderField{Name: f[0], Value: f[1]})
	}
	o := servicetest.Deliver(t, p, sent, "hi\r\n")
	if o.Kind != opes.Continue {
		t.Fatalf("EOM: %v", o.Kind)
	}
	var subject, tagField bool
	for _, c := range o.HeaderChanges {
		switch {
		case c.Kind == opes.ChangeField && c.Name == "Subject" && c.Index == 1 && c.Value == "[EXTERNAL] Quarterly\r\n report":
			subject = true
		case c.Kind == opes.AppendField && c.Name == "X-OPES-Tag" && c.Value == "external":
			tagField = true
		}
	}
	if !subject || !tagField {
		t.Errorf("changes %+v lack the Subject change (%v) or the appended field (%v)", o.HeaderChanges, subject, tagField)
	}
	got := opes.FormatHeader(opes.ApplyChanges(in, o.HeaderChanges))
	want := "OPES-System: " + sysURI + "; id=4XyZ1Q\r\n" +
		"OPES-Via: " + sysURI + "; id=4XyZ1Q,\r\n\t" + sysURI + "svc/tag; action=tagged\r\n" +
		"From: a@example.net\r\n" +
		"Subject: [EXTERNAL] Quarterly\r\n report\r\n" +
		"To: b@example.org\r\n" +
		"X-OPES-Tag: external\r\n"
	if got != want {
		t.Errorf("delivered header:\n%s\nwant:\n%s", got, want)
	}
}
