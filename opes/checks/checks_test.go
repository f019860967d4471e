package checks

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx1.example.net/opes/"

func TestNewErrors(t *testing.T) {
	tests := []struct{ name, src, field, msg string }{
		{"nothing enabled", "[options]\n", "helo", "no check is enabled"},
		{"bad action", "[options]\nhelo = true\naction = \"drop\"", "action", "want tag or reject"},
		{"local names without helo", "[options]\nfrom_mismatch = true\nlocal_names = [\"mx.example.net\"]", "local_names", "helo = true"},
		{"bad local name", "[options]\nhelo = true\nlocal_names = [\"mx.example.net\", \"bad_name\"]", "local_names[2]", "not a valid domain"},
		{"dnsbl without resolver", "[options]\ndnsbl = [\"zen.spamhaus.org\"]", "resolver", "system resolver is never used"},
		{"resolver host name", "[options]\ndnsbl = [\"zen.spamhaus.org\"]\nresolver = \"dns.example:53\"", "resolver", "not IP or IP:port"},
		{"resolver port 0", "[options]\ndnsbl = [\"zen.spamhaus.org\"]\nresolver = \"127.0.0.1:0\"", "resolver", "port 0"},
		{"bad zone", "[options]\ndnsbl = [\"zen spamhaus\"]\nresolver = \"127.0.0.1\"", "dnsbl[1]", "not a valid zone"},
		{"zone twice", "[options]\ndnsbl = [\"a.example\", \"A.example.\"]\nresolver = \"127.0.0.1\"", "dnsbl[2]", "listed twice"},
		{"bad timeout", "[options]\ndnsbl = [\"a.example\"]\nresolver = \"127.0.0.1\"\ntimeout = \"2\"", "timeout", "not a duration"},
		{"huge timeout", "[options]\ndnsbl = [\"a.example\"]\nresolver = \"127.0.0.1\"\ntimeout = \"2m\"", "timeout", "between 0 and 30s"},
		{"bad dnsbl stage", "[options]\ndnsbl = [\"a.example\"]\nresolver = \"127.0.0.1\"\ndnsbl_stage = \"rcpt\"", "dnsbl_stage", "connect or mail"},
		{"resolver without dnsbl", "[options]\nhelo = true\nresolver = \"127.0.0.1\"", "resolver", "only used with dnsbl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nhelo = \"yes\"\n", "checks")
}

func TestResolverForms(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1": "127.0.0.1:53", "127.0.0.1:5353": "127.0.0.1:5353", "::1": "[::1]:53", "[::1]": "[::1]:53", "[::1]:54": "[::1]:54"} {
		ap, err := parseResolver(in)
		if err != nil || ap.String() != want {
			t.Errorf("parseResolver(%q) = %v, %v; want %s", in, ap, err, want)
		}
	}
}

func TestNeeds(t *testing.T) {
	c, h, m, eom := opes.StageConnect, opes.StageHelo, opes.StageMail, opes.StageEOM
	const bl = "dnsbl = [\"a.example\"]\nresolver = \"127.0.0.1\"\n"
	tests := []struct {
		name, src string
		want      opes.Needs
	}{
		{"helo tag", "[options]\nhelo = true", opes.Needs{Stages: opes.StagesOf(h, m, eom)}},
		{"helo reject", "[options]\nhelo = true\naction = \"reject\"", opes.Needs{Stages: opes.StagesOf(h, m)}},
		{"from reject", "[options]\nfrom_mismatch = true\naction = \"reject\"", opes.Needs{Stages: opes.StagesOf(eom), Headers: true}},
		{"dnsbl connect reject", "[options]\n" + bl + "action = \"reject\"", opes.Needs{Stages: opes.StagesOf(c, m)}},
		{"dnsbl mail reject", "[options]\n" + bl + "dnsbl_stage = \"mail\"\naction = \"reject\"", opes.Needs{Stages: opes.StagesOf(m)}},
		{"all tag", "[options]\nhelo = true\nfrom_mismatch = true\n" + bl, opes.Needs{Stages: opes.StagesOf(c, h, m, eom), Headers: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := servicetest.MustNew(t, New, tt.src).Needs(); got != tt.want {
				t.Errorf("Needs = %v %+v, want %v %+v", got.Stages, got, tt.want.Stages, tt.want)
			}
		})
	}
}

func TestFormatFindings(t *testing.T) {
	short := []Finding{{Name: "helo-not-fqdn"}, {Name: "dnsbl=zen.spamhaus.org"}}
	if got := formatFindings(short); got != "helo-not-fqdn, dnsbl=zen.spamhaus.org" {
		t.Errorf("short = %q", got)
	}
	var long []Finding
	for _, z := range []string{"zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "dnsbl.sorbs.net", "psbl.surriel.com"} {
		long = append(long, Finding{Name: "dnsbl=" + z})
	}
	got := formatFindings(long)
	for i, l := range strings.Split(got, "\r\n") {
		if n := len(l); i == 0 && n+len(HeaderField)+2 > 78 || n > 78 {
			t.Errorf("line %d has %d octets: %q", i, n, l)
		}
	}
	if strings.Count(got, "\r\n\t") == 0 || strings.ReplaceAll(got, "\r\n\t", " ") != "dnsbl=zen.spamhaus.org, dnsbl=bl.spamcop.net, dnsbl=b.barracudacentral.org, dnsbl=dnsbl.sorbs.net, dnsbl=psbl.surriel.com" {
		t.Errorf("long = %q", got)
	}
}

// message drives one SMTP transaction through a processor whose rule
// runs the service from connect on; it stops at the first refusal and
// returns that outcome, or the end-of-message one.
type message struct {
	client string
	helo   string
	sender string
	from   []string
}

// processor runs svc from connect on.
func processor(t *testing.T, svc opes.Service) *opes.Processor {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "checks", Kind: "checks", URI: sysURI + "svc/checks", Bypassable: true, Impl: svc}
	return servicetest.NewProcessor(t, sysURI, opes.StageConnect, opes.Limits{}, spec)
}

func runMessage(t *testing.T, svc opes.Service, m message) (opes.Stage, *opes.Outcome) {
	t.Helper()
	p := processor(t, svc)
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr(m.client)
	if o := s.Connect(ctx); o.Kind != opes.Continue {
		return opes.StageConnect, o
	}
	if o := s.Helo(ctx, m.helo); o.Kind != opes.Continue {
		return opes.StageHelo, o
	}
	if o := s.Mail(ctx, opes.Address{Addr: m.sender}); o.Kind != opes.Continue {
		return opes.StageMail, o
	}
	s.Rcpt(ctx, opes.Address{Addr: "b@example.org"})
	s.Data(ctx)
	for _, f := range m.from {
		s.Header("From", " "+f)
	}
	s.Header("Subject", " hi")
	s.EndOfHeaders(ctx)
	s.BodyChunk([]byte("hi\r\n"))
	return opes.StageEOM, s.EndOfMessage(ctx, "4XyZ1Q")
}

func TestProcessorTag(t *testing.T) {
	srv := startDNS(t, testZones())
	svc := servicetest.MustNew(t, New, "[options]\nhelo = true\nfrom_mismatch = true\ndnsbl = [\"clean.example\", \"bl.example\"]\nresolver = \""+srv.addr+"\"\ntimeout = \"500ms\"\n")
	tests := []struct {
		name  string
		m     message
		field string // "" = none added
		via   string
	}{
		{"all findings", message{client: "203.0.113.5", helo: "localhost", sender: "a@example.com", from: []string{"Bank <x@evil.example>"}},
			"dnsbl=bl.example, helo-not-fqdn, from-mismatch", "svc/checks; action=header-added"},
		{"clean", message{client: "203.0.113.6", helo: "mail.example.com", sender: "a@example.com", from: []string{"a@example.com"}},
			"", "svc/checks; action=analyzed"},
		{"listed v6", message{client: "2001:db8::1", helo: "[IPv6:2001:db8::1]", sender: "", from: []string{"x@evil.example"}},
			"dnsbl=bl.example", "svc/checks; action=header-added"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, o := runMessage(t, svc, tt.m)
			if st != opes.StageEOM || o.Kind != opes.Continue {
				t.Fatalf("refused at %v: %v", st, o.Reply)
			}
			var got []string
			var via string
			for _, c := range o.HeaderChanges {
				switch c.Name {
				case HeaderField:
					if c.Kind != opes.AppendField {
						t.Errorf("change %+v is not an append", c)
					}
					got = append(got, c.Value)
				case opes.FieldVia:
					via = c.Value
				}
			}
			if tt.field == "" && len(got) != 0 || tt.field != "" && (len(got) != 1 || got[0] != tt.field) {
				t.Errorf("%s = %q, want %q", HeaderField, got, tt.field)
			}
			if !strings.Contains(via, tt.via) {
				t.Errorf("OPES-Via %q lacks %q", via, tt.via)
			}
		})
	}
}

func TestProcessorReject(t *testing.T) {
	srv := startDNS(t, testZones())
	bl := "dnsbl = [\"bl.example\"]\nresolver = \"" + srv.addr + "\"\ntimeout = \"500ms\"\n"
	tests := []struct {
		name  string
		src   string
		m     message
		stage opes.Stage
		text  string
	}{
		{"dnsbl at connect", "[options]\naction = \"reject\"\n" + bl, message{client: "203.0.113.5", helo: "mail.example.com", sender: "a@example.com"},
			opes.StageConnect, "Client listed in bl.example"},
		{"dnsbl at mail", "[options]\naction = \"reject\"\ndnsbl_stage = \"mail\"\n" + bl, message{client: "2001:db8::1", helo: "mail.example.com", sender: "a@example.com"},
			opes.StageMail, "Client listed in bl.example"},
		{"helo", "[options]\naction = \"reject\"\nhelo = true\n", message{client: "203.0.113.5", helo: "localhost", sender: "a@example.com"},
			opes.StageHelo, "HELO name is not a fully qualified domain"},
		{"from", "[options]\naction = \"reject\"\nfrom_mismatch = true\n", message{client: "203.0.113.5", helo: "x", sender: "a@example.com", from: []string{"b@example.org"}},
			opes.StageEOM, "Envelope sender domain does not match the From: domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, o := runMessage(t, servicetest.MustNew(t, New, tt.src), tt.m)
			if st != tt.stage || o.Kind != opes.Reject || o.Reply == nil {
				t.Fatalf("outcome at %v: %+v, want a refusal at %v", st, o, tt.stage)
			}
			r := o.Reply.String()
			for _, want := range []string{"550-5.7.1 " + tt.text, "svc/checks; action=rejected"} {
				if !strings.Contains(r, want) {
					t.Errorf("reply lacks %q:\n%s", want, r)
				}
			}
		})
	}
}

// TestProcessorTimeout: a dead list lets the mail pass, with
// status=timeout in the trace.
func TestProcessorTimeout(t *testing.T) {
	srv := startDNS(t, testZones())
	svc := servicetest.MustNew(t, New, "[options]\naction = \"reject\"\ndnsbl = [\"dead.example\"]\nresolver = \""+srv.addr+"\"\ntimeout = \"200ms\"\n")
	st, o := runMessage(t, svc, message{client: "203.0.113.5", helo: "mail.example.com", sender: "a@example.com"})
	if st != opes.StageEOM || o.Kind != opes.Continue {
		t.Fatalf("refused at %v: %v", st, o.Reply)
	}
	var via string
	for _, c := range o.HeaderChanges {
		if c.Name == opes.FieldVia {
			via = c.Value
		}
	}
	if !strings.Contains(via, "svc/checks; action=analyzed; status=timeout") {
		t.Errorf("OPES-Via %q lacks the timeout status", via)
	}
}

// TestSecondMessage: a second transaction on the connection starts at
// MAIL; the connect and HELO findings still apply to it.
func TestSecondMessage(t *testing.T) {
	srv := startDNS(t, testZones())
	svc := servicetest.MustNew(t, New, "[options]\nhelo = true\ndnsbl = [\"bl.example\"]\nresolver = \""+srv.addr+"\"\n")
	p := processor(t, svc)
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Conn().Addr = netip.MustParseAddr("203.0.113.5")
	s.Connect(ctx)
	s.Helo(ctx, "localhost")
	for i := range 2 {
		s.Mail(ctx, opes.Address{Addr: "a@example.com"})
		s.Rcpt(ctx, opes.Address{Addr: "b@example.org"})
		s.Data(ctx)
		s.EndOfHeaders(ctx)
		o := s.EndOfMessage(ctx, "")
		var got string
		for _, c := range o.HeaderChanges {
			if c.Name == HeaderField {
				got = c.Value
			}
		}
		if got != "dnsbl=bl.example, helo-not-fqdn" {
			t.Errorf("message %d: %s = %q", i+1, HeaderField, got)
		}
		s.Finish()
	}
}
