package integration

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The miltertest scripts (integration/miltertest/*.lua) drive the daemon
// with OpenDKIM's miltertest, a milter client built on libmilter's own
// definitions: a second, independent implementation of the MTA side next
// to go-milter's client and the real Postfix. What each script checks is
// written at its top.

// mtRefusePolicy is the policy refuse.lua expects.
const mtRefusePolicy = `
[system]
uri = "https://mx.mt.example/opes/"

[consent]
recipients = ["@example.net", "@example.org", "@example.test", "@x.test", "@y.test"]

[[service]]
name = "access"
kind = "acl"
[[service.options.entry]]
stage = "mail"
action = "deny"
sender = ["blocked@example.org"]
[[service.options.entry]]
stage = "rcpt"
action = "deny"
recipient = ["trap@example.net"]
reply = "Mailbox is a spam trap"

[[rule]]
name = "everyone"
run = ["access"]
`

// mtTagPolicy is the policy placement.lua expects.
const mtTagPolicy = `
[system]
uri = "https://mx.mt.example/opes/"

[consent]
recipients = ["@example.net", "@example.org", "@example.test", "@x.test", "@y.test"]

[[service]]
name = "external"
kind = "tag"
[service.options]
header = "X-OPES-Tag: external"
subject_prefix = "[EXTERNAL]"

[[rule]]
run = ["external"]
`

// mtScripts pairs each script with the policy it expects ("" = the
// embedded default).
var mtScripts = []struct{ script, policy string }{
	{"default.lua", ""},
	{"refuse.lua", mtRefusePolicy},
	{"placement.lua", mtTagPolicy},
}

// runMiltertest runs one script against the milter socket sock (in
// miltertest's syntax, which is ours: inet:PORT@HOST or unix:/path) with
// extra -D definitions. It returns miltertest's output and its exit error.
func runMiltertest(t *testing.T, sock, script string, defs ...string) (string, error) {
	t.Helper()
	bin := mustBin(t, "miltertest")
	dir, err := filepath.Abs("miltertest")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-D", "sock=" + sock, "-D", "lib=" + filepath.Join(dir, "common.lua")}
	for _, d := range defs {
		args = append(args, "-D", d)
	}
	args = append(args, "-s", filepath.Join(dir, script))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), errors.New("miltertest timed out after 60 s")
	}
	return string(out), err
}

func TestMiltertestScripts(t *testing.T) {
	Require(t, "miltertest")
	for _, s := range mtScripts {
		for _, unix := range []bool{false, true} {
			name := strings.TrimSuffix(s.script, ".lua") + "/inet"
			if unix {
				name = strings.TrimSuffix(s.script, ".lua") + "/unix"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: s.policy, Unix: unix})
				out, err := runMiltertest(t, m.listen, s.script)
				if err != nil {
					t.Fatalf("miltertest -D sock=%s -s %s: %v\n%s", m.listen, s.script, err, out)
				}
				if want := "*** " + s.script + ": all passed"; !strings.Contains(out, want) {
					t.Fatalf("miltertest exited 0 but the script did not reach %q:\n%s", want, out)
				}
			})
		}
	}
}

// TestMiltertestScriptsCanFail runs every script with one expectation
// made wrong, or against the wrong policy, and wants miltertest to exit
// non-zero with the script's FAIL line: a script that cannot fail proves
// nothing.
func TestMiltertestScriptsCanFail(t *testing.T) {
	Require(t, "miltertest")
	cases := []struct {
		name, script, policy string
		def                  string // -D definition, may be empty
		want                 string // after "FAIL: "
	}{
		{"default/system", "default.lua", "", "system=https://wrong.example/opes/", "OPES-System value [ https://localhost/opes/; id=MTQ1A2B3C]"},
		{"default/negotiation", "default.lua", mtRefusePolicy, "", "negotiation: SMFIP_NOCONNECT not requested"},
		{"refuse/mail", "refuse.lua", mtRefusePolicy, "blocked=alice@example.org", "mailfrom alice@example.org: reply continue, want replycode"},
		{"refuse/rcpt", "refuse.lua", mtRefusePolicy, "trap=nobody@example.net", "rcptto nobody@example.net: reply continue, want replycode"},
		{"refuse/system", "refuse.lua", mtRefusePolicy, "system=https://wrong.example/opes/", "OPES-System value"},
		{"placement/system", "placement.lua", mtTagPolicy, "system=https://wrong.example/opes/", "OPES-System value"},
		{"placement/policy", "placement.lua", mtRefusePolicy, "", "negotiation: SMFIP_NOHDRS requested"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: c.policy})
			var defs []string
			if c.def != "" {
				defs = append(defs, c.def)
			}
			out, err := runMiltertest(t, m.listen, c.script, defs...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("miltertest %s with %q: want a non-zero exit, got %v:\n%s", c.script, c.def, err, out)
			}
			if !strings.Contains(out, "FAIL: "+c.want) {
				t.Fatalf("miltertest %s with %q failed, but not with FAIL: %s:\n%s", c.script, c.def, c.want, out)
			}
		})
	}
}
