package policy

import (
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

const sys = "[system]\nuri = \"https://mx.example.org/opes/\"\n"

// TestParseRules checks how rules come out of small files.
func TestParseRules(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		stage opes.Stage
		rname string
		when  bool
		kind  opes.VerdictKind
		reply opes.Reply
	}{
		{"no condition", "[[rule]]\nverdict = \"reject\"", opes.StageConnect, "rule-1", false, opes.Reject, opes.Reply{}},
		{"empty condition", "[[rule]]\nverdict = \"accept\"\nwhen = {}", opes.StageConnect, "rule-1", false, opes.Accept, opes.Reply{}},
		{"helo", "[[rule]]\nverdict = \"tempfail\"\nwhen = { helo = ['x'] }", opes.StageHelo, "rule-1", true, opes.TempFail, opes.Reply{}},
		{"sender", "[[rule]]\nverdict = \"reject\"\nwhen = { sender = ['<>'] }", opes.StageMail, "rule-1", true, opes.Reject, opes.Reply{}},
		{"recipient", "[[rule]]\nverdict = \"discard\"\ncode = 554\nwhen = { recipient = ['a@b'] }", opes.StageRcpt, "rule-1", true, opes.Discard, opes.Reply{Code: 554}},
		{"mixed", "[[rule]]\nverdict = \"reject\"\nwhen = { client = ['::1'], recipient_domain = ['b'] }", opes.StageRcpt, "rule-1", true, opes.Reject, opes.Reply{}},
		{"header", "[[rule]]\nverdict = \"quarantine\"\nwhen = { header = ['X-Spam:'] }", opes.StageHeaders, "rule-1", true, opes.Quarantine, opes.Reply{}},
		{"size", "[[rule]]\nverdict = \"reject\"\nenhanced = \"5.3.4\"\nwhen = { size_over = 1000 }", opes.StageEOM, "rule-1", true, opes.Reject, opes.Reply{Enhanced: "5.3.4"}},
		{"later stage", "[[rule]]\nname = \"late\"\nstage = \"eom\"\nverdict = \"continue\"\nwhen = { client = ['::1'] }", opes.StageEOM, "late", true, opes.Continue, opes.Reply{}},
		{"stage alias", "[[rule]]\nstage = \"end-of-data\"\nverdict = \"tempfail\"\ncode = 452\nreply = \"later\"", opes.StageEOM, "rule-1", false, opes.TempFail, opes.Reply{Code: 452, Text: "later"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("t.toml", []byte(sys+tt.src))
			if err != nil {
				t.Fatal(err)
			}
			r := cfg.Policy.Rules[0]
			if r.Stage != tt.stage || r.Name != tt.rname || (r.When != nil) != tt.when || r.Verdict == nil ||
				r.Verdict.Kind != tt.kind || r.Verdict.Reply != tt.reply {
				t.Errorf("rule = %+v, verdict %+v", r, r.Verdict)
			}
			if r.URI != "https://mx.example.org/opes/rule/"+tt.rname {
				t.Errorf("URI = %q", r.URI)
			}
		})
	}
}

func TestParseServices(t *testing.T) {
	cfg, err := Parse("t.toml", []byte(sys+`
[[service]]
name = "a"
kind = "tag"
options = { header = "X-A: 1" }
[[service]]
name = "b"
kind = "tag"
bypassable = true
options = { header = "X-B: 1" }
[[service]]
name = "unused"
kind = "tag"
on_error = "reject"
required_for_delivery = true
options = { subject_prefix = "[U]" }
[[rule]]
run = ["b", "a"]
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	if len(p.Services) != 3 {
		t.Fatalf("%d services", len(p.Services))
	}
	// on_error stays "default" when not given: the processor resolves it
	// from bypassable and required_for_delivery.
	for i, want := range []struct {
		name  string
		onErr opes.OnError
		byp   bool
		req   bool
	}{{"a", opes.OnErrorDefault, false, false}, {"b", opes.OnErrorDefault, true, false}, {"unused", opes.OnErrorReject, false, true}} {
		s := p.Services[i]
		if s.Name != want.name || s.OnError != want.onErr || s.Bypassable != want.byp || s.RequiredForDelivery != want.req ||
			s.URI != "https://mx.example.org/opes/svc/"+want.name || s.Impl == nil {
			t.Errorf("service %d = %+v", i+1, s)
		}
	}
	if r := p.Rules[0]; len(r.Run) != 2 || r.Run[0] != p.Services[1] || r.Run[1] != p.Services[0] {
		t.Errorf("run = %v", r.Run)
	}
}

// TestParseErrors covers single problems the golden files do not, each
// asserted as the exact line.
func TestParseErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{"", "t.toml:1:1: system.uri: is required: the OPES system URI, e.g. uri = \"https://mx1.example.net/opes/\""},
		{"[system]\nuri = \"https://mx.example.org/opes\"",
			`t.toml:2:7: system.uri: URI "https://mx.example.org/opes" must end with "/": service URIs are formed by appending "svc/<name>"`},
		{"[system]\nuri = \"https://user@mx.example.org/opes/\"",
			`t.toml:2:7: system.uri: URI "https://user@mx.example.org/opes/" must not contain user information`},
		{"[system]\nuri = \"/opes/\"", `t.toml:2:7: system.uri: URI "/opes/" is not absolute`},
		{"[system]\nuri = \"https://mx.example.org/op es/\"", `t.toml:2:7: system.uri: URI "https://mx.example.org/op es/" contains ' '`},
		{sys + "privacy_url = \"https://mx.example.org/a b\"", `t.toml:3:15: system.privacy_url: URL "https://mx.example.org/a b" contains a space`},
		{sys + "[milter]\nlisten = \"unix:relative.sock\"", `t.toml:4:10: milter.listen: socket "unix:relative.sock": socket path "relative.sock" is not absolute`},
		{sys + "[milter]\nread_timeout = \"-1s\"", `t.toml:4:16: milter.read_timeout: duration -1s is negative`},
		{sys + "[[service]]\nname = \"a\"\nkind = \"tag\"\noptions = { header = \"X: 1\" }\n[[service]]\nname = \"b\"\nkind = \"tag\"\nuri = \"https://mx.example.org/opes/svc/a\"\noptions = { header = \"X: 1\" }",
			`t.toml:10:7: service[2].uri: URI "https://mx.example.org/opes/svc/a" is already used by service[1] (line 3)`},
		{sys + "[[rule]]\nname = \"rule-2\"\nverdict = \"accept\"\n[[rule]]\nverdict = \"accept\"",
			`t.toml:6:1: rule[2]: rule "rule-2" is already defined at line 4`},
		{sys + "[[service]]\nname = \"t\"\nkind = \"tag\"\nuri = \"https://mx.example.org/opes/rule/r\"\noptions = { header = \"X: 1\" }\n[[rule]]\nname = \"r\"\nrun = [\"t\"]",
			`t.toml:9:8: rule[1].name: URI "https://mx.example.org/opes/rule/r" is already used by service[1] (line 3)`},
		{sys + "[[rule]]\nverdict = \"discard\"\ncode = 451", `t.toml:5:8: rule[1].code: 451 is not a 5xx reply code, as verdict "discard" needs`},
		{sys + "[[rule]]\nverdict = \"reject\"\ncode = 5500", `t.toml:5:8: rule[1].code: 5500 is not a 5xx reply code, as verdict "reject" needs`},
		{sys + "[[rule]]\nverdict = \"reject\"\nenhanced = \"5.7\"", `t.toml:5:12: rule[1].enhanced: enhanced code "5.7" is not class.subject.detail`},
		{sys + "[[rule]]\nverdict = \"reject\"\nreply = \"" + strings.Repeat("x", 201) + "\"", `t.toml:5:9: rule[1].reply: longer than 200 bytes`},
		{sys + "[[rule]]\ncode = 550\nrun = []", "t.toml:3:1: rule[1]: neither runs a service nor sets a verdict (give it run = [...], verdict = \"...\" or both)\n" +
			`t.toml:4:1: rule[1].code: needs a reject, tempfail or discard verdict`},
		{sys + "[[rule]]\nverdict = \"accept\"\nwhen = { Client = [\"::1\"] }", `t.toml:5:10: rule[1].when: unknown key "Client"; did you mean "client"?`},
		{sys + "[[rule]]\nverdict = \"accept\"\nwhen = { size_over = -1 }", `t.toml:5:22: rule[1].when.size_over: must not be negative, got -1`},
		{sys + "[[rule]]\nverdict = \"accept\"\nwhen = { authenticated = \"yes\", tls = 1 }",
			"t.toml:5:26: rule[1].when.authenticated: expected a boolean (true or false), found a string\n" +
				"t.toml:5:39: rule[1].when.tls: expected a boolean (true or false), found an integer"},
		{sys + "[[service]]\nname = \"t\"\nkind = \"tag\"\n[service.options]\nheader = \"X: 1\"\nwhen = { client = 5 }",
			`t.toml:8:19: service[1].options.when.client: expected an array, found an integer`},
		{sys + "[[service]]\nname = \"t\"\nkind = \"tag\"\n[service.options]\nheader = \"X: 1\"\n[service.options.when]\nclient = [\"bogus\"]",
			`t.toml:9:11: service[1].options.when.client[1]: "bogus" is not an IP address or CIDR`},
		{sys + "[milter]\nsocket_mode = \"rw-rw----\"", `t.toml:4:15: milter.socket_mode: "rw-rw----" is not an octal mode such as "0660"`},
		{sys + "[milter]\nsocket_mode = \"0444\"", `t.toml:4:15: milter.socket_mode: "0444": the owner must be able to write the socket`},
		{sys + "[admin]\nlisten = \"0.0.0.0:10029\"", `t.toml:4:10: admin.listen: "0.0.0.0:10029" is not a loopback address; set allow_remote = true to expose the admin listener`},
		{sys + "[admin]\nlisten = \"10029\"", `t.toml:4:10: admin.listen: "10029" is not host:port, e.g. "127.0.0.1:10029"`},
		{sys + "[report]\ntransactions = \"tx.jsonl\"\naddresses = \"some\"", "t.toml:4:16: report.transactions: \"tx.jsonl\" is not an absolute path\n" +
			`t.toml:5:13: report.addresses: "some": want full, domain or none`},
		{"rule = [1]\n" + sys, `t.toml:1:9: rule[1]: expected a table, found an integer`},
		{sys + "[[service]]\nname = \"" + strings.Repeat("n", 500) + "\"\nkind = \"tag\"\noptions = { header = \"X: 1\" }",
			`t.toml:4:8: service[1].name: service URI: URI longer than 384 octets`},
	}
	for _, tt := range tests {
		_, err := Parse("t.toml", []byte(tt.src))
		if err == nil {
			t.Errorf("no error for\n%s", tt.src)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("for\n%s\ngot\n%v\nwant\n%s", tt.src, err, tt.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"name", "kind", "uri", "bypassable", "required_for_delivery", "on_error", "options", "privacy_url"}
	tests := []struct{ in, want string }{
		{"kindd", `; did you mean "kind"?`},
		{"on-error", `; did you mean "on_error"?`},
		{"optoins", `; did you mean "options"?`},
		{"Name", `; did you mean "name"?`},
		{"privacy", `; did you mean "privacy_url"?`},
		{"required", `; did you mean "required_for_delivery"?`},
		{"colour", ""},
		{"x", ""},
		{"u", ""},
	}
	for _, tt := range tests {
		if got := suggest(tt.in, known); got != tt.want {
			t.Errorf("suggest(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestErrorsFormat(t *testing.T) {
	es := Errors{{File: "a.toml", Line: 3, Col: 1, Msg: "late"}, {File: "a.toml", Line: 1, Col: 5, Msg: "early"}, {File: "a.toml", Line: 3, Col: 1, Msg: "late"}}
	if got, want := es.sorted().Error(), "a.toml:1:5: early\na.toml:3:1: late"; got != want {
		t.Errorf("got %q; want %q", got, want)
	}
}
