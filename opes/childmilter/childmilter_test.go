package childmilter

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

func TestOptionErrors(t *testing.T) {
	tests := []struct {
		toml  string
		field string
	}{
		{``, "socket"},
		{`socket = "  "`, "socket"},
		{`socket = "tcp:127.0.0.1:8891"`, "socket"},
		{`socket = "unix:relative.sock"`, "socket"},
		{`socket = "inet:99999@127.0.0.1"`, "socket"},
		{`socket = "inet:8891@127.0.0.1"` + "\nconnect_timeout = \"soon\"", "connect_timeout"},
		{`socket = "inet:8891@127.0.0.1"` + "\ncommand_timeout = \"0s\"", "command_timeout"},
		{`socket = "inet:8891@127.0.0.1"` + "\neom_timeout = \"10m\"", "eom_timeout"},
		{`socket = "inet:8891@127.0.0.1"` + "\nstages = []", "stages"},
		{`socket = "inet:8891@127.0.0.1"` + "\nstages = [\"mail\", \"quit\"]", "stages[2]"},
		{`socket = "inet:8891@127.0.0.1"` + "\nmacros = [\"i\", \"{if_addr}\"]", "macros[2]"},
	}
	for _, tc := range tests {
		_, err := New(optiontest.Decoder(t, "[options]\n"+tc.toml))
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%q: error %v, want a FieldError at %s", tc.toml, err, tc.field)
		}
	}
	if _, err := New(optiontest.Decoder(t, "[options]\nsocket = 8891")); err == nil {
		t.Error("a socket that is not a string was accepted")
	}
}

func TestOptions(t *testing.T) {
	all := opes.Needs{Stages: opes.AllStages, Headers: true, Body: true}
	tests := []struct {
		toml             string
		network, address string
		needs            opes.Needs
		macros           []string
		timeouts         [3]time.Duration
	}{{
		toml:    `socket = "inet:8891@127.0.0.1"`,
		network: "tcp4", address: "127.0.0.1:8891", needs: all, macros: knownMacroNames(),
		timeouts: [3]time.Duration{DefaultConnectTimeout, DefaultCommandTimeout, DefaultEOMTimeout},
	}, {
		toml:    `socket = "inet:127.0.0.1:8891"` + "\nconnect_timeout = \"1s\"\ncommand_timeout = \"2s\"\neom_timeout = \"3s\"",
		network: "tcp4", address: "127.0.0.1:8891", needs: all, macros: knownMacroNames(),
		timeouts: [3]time.Duration{time.Second, 2 * time.Second, 3 * time.Second},
	}, {
		toml:    `socket = "local:/run/opendkim/opendkim.sock"` + "\nstages = [\"rcpt\"]\nmacros = []",
		network: "unix", address: "/run/opendkim/opendkim.sock", needs: opes.Needs{Stages: opes.StagesOf(opes.StageRcpt)},
		timeouts: [3]time.Duration{DefaultConnectTimeout, DefaultCommandTimeout, DefaultEOMTimeout},
	}, {
		toml:    `socket = "unix:/run/m.sock"` + "\nstages = [\"helo\", \"header\"]\nmacros = [\"{i}\", \"auth_authen\", \"{daemon_name}\", \"j\"]",
		network: "unix", address: "/run/m.sock", needs: opes.Needs{Stages: opes.StagesOf(opes.StageHelo, opes.StageHeaders), Headers: true},
		macros:   []string{"i", "{auth_authen}", "{daemon_name}", "j"},
		timeouts: [3]time.Duration{DefaultConnectTimeout, DefaultCommandTimeout, DefaultEOMTimeout},
	}, {
		toml:    `socket = "inet6:8891@[::1]"` + "\nstages = [\"eod\"]",
		network: "tcp6", address: "[::1]:8891", needs: opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true},
		macros:   knownMacroNames(),
		timeouts: [3]time.Duration{DefaultConnectTimeout, DefaultCommandTimeout, DefaultEOMTimeout},
	}}
	for _, tc := range tests {
		s := newService(t, tc.toml)
		if s.network != tc.network || s.address != tc.address {
			t.Errorf("%q: dials %s %s", tc.toml, s.network, s.address)
		}
		if s.Needs() != tc.needs {
			t.Errorf("%q: needs %+v, want %+v", tc.toml, s.Needs(), tc.needs)
		}
		got := slices.Sorted(maps.Keys(s.macros))
		if want := slices.Sorted(slices.Values(tc.macros)); !slices.Equal(got, want) {
			t.Errorf("%q: macros %q, want %q", tc.toml, got, want)
		}
		if d := [3]time.Duration{s.connectTimeout, s.commandTimeout, s.eomTimeout}; d != tc.timeouts {
			t.Errorf("%q: timeouts %v, want %v", tc.toml, d, tc.timeouts)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		code int
		raw  string
		want opes.Reply
	}{
		{550, "550 5.7.1 Command rejected", opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "Command rejected"}},
		{451, "451 4.7.1 Greylisted, try again later", opes.Reply{Code: 451, Enhanced: "4.7.1", Text: "Greylisted, try again later"}},
		{550, "550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 third", opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "first line second third"}},
		{550, "550 no enhanced code", opes.Reply{Code: 550, Text: "no enhanced code"}},
		{550, "550 4.7.1 wrong class", opes.Reply{Code: 550, Text: "4.7.1 wrong class"}},
		{554, "554 5.7.1", opes.Reply{Code: 554, Enhanced: "5.7.1"}},
		{550, "550 5.7.1 bell\x07 and\ttab", opes.Reply{Code: 550, Enhanced: "5.7.1", Text: "bell? and tab"}},
		{550, "550 5.7.1 " + strings.Repeat("x", 300), opes.Reply{Code: 550, Enhanced: "5.7.1", Text: strings.Repeat("x", maxReplyText)}},
		{421, "421 4.3.2 going down\r\n", opes.Reply{Code: 421, Enhanced: "4.3.2", Text: "going down"}},
	}
	for _, tc := range tests {
		if got := parseReply(tc.code, tc.raw); got != tc.want {
			t.Errorf("parseReply(%d, %q) = %+v, want %+v", tc.code, tc.raw, got, tc.want)
		}
	}
}

// FuzzParseReply: whatever the child sends, the reply text is one line of
// printable ASCII within bounds, and an enhanced code is kept only when
// it is valid for the code.
func FuzzParseReply(f *testing.F) {
	f.Add(550, "550 5.7.1 Command rejected")
	f.Add(451, "451-4.7.1 a\r\n451 4.7.1 b")
	f.Add(554, "554 5.7.1\x00\r\n\n")
	f.Fuzz(func(t *testing.T, code int, raw string) {
		if code < 400 || code > 599 {
			return // go-milter refuses such codes before us
		}
		r := parseReply(code, raw)
		if r.Code != code || len(r.Text) > maxReplyText {
			t.Fatalf("%+v", r)
		}
		for i := 0; i < len(r.Text); i++ {
			if c := r.Text[i]; c < 0x20 || c > 0x7e {
				t.Fatalf("byte 0x%02x in text %q", c, r.Text)
			}
		}
		if r.Enhanced != "" && opes.CheckEnhancedCode(code, r.Enhanced) != nil {
			t.Fatalf("invalid enhanced code kept: %+v", r)
		}
	})
}
