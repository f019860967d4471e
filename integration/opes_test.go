package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// milterBinary is built once for the whole test binary by TestMain.
var milterBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "opes-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	milterBinary, err = BuildMilter(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

const itSystem = "https://mx.it.example/opes/"

// itPolicy is cases/policies/acl.toml: access control at HELO, MAIL and
// RCPT, and a content rule at the end of data.
var itPolicy = casePolicy("acl.toml")

// casePolicy reads a policy of the integration cases (cases/policies/).
func casePolicy(name string) string {
	b, err := os.ReadFile(filepath.Join("cases", "policies", name))
	if err != nil {
		panic(fmt.Sprintf("integration: %v", err))
	}
	return string(b)
}

// mta starts a sink, opes-milter and Postfix wired together.
func mta(t *testing.T, o MilterOptions) (*Sink, *Milter, *Postfix) {
	t.Helper()
	Require(t)
	o.Binary = milterBinary
	sink := StartSink(t)
	m := StartMilter(t, o)
	pf := StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})
	return sink, m, pf
}

// startMTA starts the named MTA ("postfix" or "sendmail", see caseMTAs)
// with milter m, tempfailing when it is down, relaying to sink. It returns
// the SMTP address and the MTA's host name.
func startMTA(t *testing.T, name string, m *Milter, sink *Sink) (addr, host string) {
	t.Helper()
	switch name {
	case "postfix":
		return StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()}).Addr(), "mta.example.test"
	case "sendmail":
		return StartSendmail(t, SendmailOptions{Milter: m.SendmailSpec(), MilterFlags: "T", RelayTo: sink.Addr()}).Addr(), SendmailHost
	}
	t.Fatalf("unknown MTA %q", name)
	return "", ""
}

// mtaStack starts a sink, opes-milter and the named MTA wired together
// and returns the MTA's SMTP address.
func mtaStack(t *testing.T, name string, o MilterOptions) (*Sink, *Milter, string) {
	t.Helper()
	Require(t)
	o.Binary = milterBinary
	sink := StartSink(t)
	m := StartMilter(t, o)
	addr, _ := startMTA(t, name, m, sink)
	return sink, m, addr
}

func message(subject string) []byte {
	return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject + "\nMessage-ID: <" + subject + "@example.org>\n\nHello.\n")
}

// traceBlock checks the delivered header: our OPES-System first, then
// OPES-Via, both parsing with the PROFILE §2 grammar, id = queue id.
func traceBlock(t *testing.T, d Dump, system, queueID string) []opes.TraceEntry {
	t.Helper()
	lines := strings.Split(string(d.Message), "\n")
	sys, via := unfoldField(lines, 0), unfoldField(lines, 1)
	if !strings.HasPrefix(sys, opes.FieldSystem+": ") || !strings.HasPrefix(via, opes.FieldVia+": ") {
		t.Fatalf("trace block not on top:\n%s", d.Message)
	}
	se, err := opes.ParseTraceList(strings.TrimPrefix(sys, opes.FieldSystem+": "), 10)
	if err != nil || len(se) != 1 || se[0].URI != system {
		t.Fatalf("OPES-System %q: %v", sys, err)
	}
	if id, _ := se[0].Param("id"); queueID != "" && id != queueID {
		t.Errorf("trace id %q, want the Postfix queue id %q", id, queueID)
	}
	ve, err := opes.ParseTraceList(strings.TrimPrefix(via, opes.FieldVia+": "), 50)
	if err != nil || ve[0].URI != system {
		t.Fatalf("OPES-Via %q: %v", via, err)
	}
	for _, l := range lines {
		if l == "" {
			break
		}
		if len(l) > 78 {
			t.Errorf("header line over 78 octets: %q", l)
		}
	}
	return ve
}

// unfoldField returns the n-th header field (0-based), unfolded.
func unfoldField(lines []string, n int) string {
	i := -1
	var cur []string
	for _, l := range lines {
		if l == "" {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			if i == n {
				cur = append(cur, strings.TrimLeft(l, " \t"))
			}
			continue
		}
		i++
		if i > n {
			break
		}
		if i == n {
			cur = []string{l}
		}
	}
	return strings.Join(cur, " ")
}

// checkTraceReply asserts PROFILE §3 on a reply that came through Postfix.
func checkTraceReply(t *testing.T, r Reply, code int, enhanced, agent string) string {
	t.Helper()
	if r.Code != code || len(r.Lines) < 4 {
		t.Fatalf("reply %s, want a multi-line %d", r, code)
	}
	c := fmt.Sprint(code)
	want := []string{c + "-" + enhanced + " ", c + "-" + enhanced + " OPES-System: " + itSystem + "; id=", c + "-" + enhanced + " OPES-Via: "}
	for i, w := range want {
		if !strings.HasPrefix(r.Lines[i], w) {
			t.Errorf("line %d %q does not start with %q", i, r.Lines[i], w)
		}
	}
	if last := r.Lines[len(r.Lines)-1]; last != c+" "+enhanced+" Policy, privacy and bypass: "+itSystem+"privacy" {
		t.Errorf("last line %q", last)
	}
	if !r.Contains(agent + "; action=rejected; bypassable=no") {
		t.Errorf("deciding agent %s missing from %s", agent, r)
	}
	id := strings.TrimPrefix(r.Lines[1], c+"-"+enhanced+" OPES-System: "+itSystem+"; id=")
	return id
}

// With the milter stopped, both MTAs tempfail (never accept, never refuse
// for good) and nothing more reaches the sink: Postfix with
// milter_default_action = tempfail, Sendmail with F=T.
func TestMilterDownTempfails(t *testing.T) {
	for _, name := range caseMTAs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sink, m, addr := mtaStack(t, name, MilterOptions{})
			tr := SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, message("before"))
			if !tr.Accepted() {
				t.Fatalf("milter up, message not accepted:\n%s", tr)
			}
			sink.WaitDump(t, HasHeader("Subject", "before"), 10*time.Second)
			if err := m.Stop(); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			tr = SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, message("after"))
			t.Logf("milter down:\n%s", tr)
			if tr.Accepted() {
				t.Fatalf("milter down but message accepted:\n%s", tr)
			}
			want := map[string]string{
				"postfix":  "451 4.7.1 Service unavailable - try again later",
				"sendmail": "451 4.3.2 Please try again later",
			}[name]
			var tempfail bool
			for _, st := range tr.Steps {
				r := st.Reply
				if r.Class() == 5 {
					t.Errorf("permanent error while the milter is down: %s: %s", st.Cmd, r)
				}
				verb, _, _ := strings.Cut(st.Cmd, " ")
				if (verb == "MAIL" || verb == "RCPT" || verb == ".") && r.Positive() {
					t.Errorf("%s accepted while the milter is down: %s", st.Cmd, r)
				}
				tempfail = tempfail || (r.Code == 451 && len(r.Lines) == 1 && r.Lines[0] == want)
			}
			if !tempfail {
				t.Errorf("no %q while the milter is down:\n%s", want, tr)
			}
			time.Sleep(300 * time.Millisecond)
			if n := len(sink.Dumps()); n != 1 {
				t.Errorf("%d messages at the sink, want only the one sent before the stop", n)
			}
		})
	}
}

func TestReloadValidatesAndKeepsRunningPolicy(t *testing.T) {
	t.Parallel()
	sink, m, pf := mta(t, MilterOptions{Policy: "[system]\nuri = \"" + itSystem + "\"\n"})
	tr := SendMail(t, pf.Addr(), "blocked@example.org", []string{"bob@example.net"}, message("allowed"))
	if !tr.Accepted() {
		t.Fatalf("trace-only policy refused:\n%s", tr)
	}
	sink.WaitDump(t, HasHeader("Subject", "allowed"), 10*time.Second)

	if err := os.WriteFile(m.ConfigPath(), []byte(itPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m.WaitLog(t, "reloaded", 5*time.Second)
	c := Dial(t, pf.Addr())
	c.Ehlo("client.example")
	checkTraceReply(t, c.MailFrom("blocked@example.org"), 550, "5.7.1", itSystem+"svc/access")
	c.Quit()

	if err := os.WriteFile(m.ConfigPath(), []byte("[system]\nuri = \"not a uri\"\n[[rule]]\nverdict = \"maybe\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m.WaitLog(t, "reload refused", 5*time.Second)
	c = Dial(t, pf.Addr())
	c.Ehlo("client.example")
	checkTraceReply(t, c.MailFrom("blocked@example.org"), 550, "5.7.1", itSystem+"svc/access")
	c.Quit()
}

// TestGarbageOnTheSocket writes what used to crash go-milter, and random
// bytes, to the running daemon's socket; Postfix mail keeps flowing.
func TestGarbageOnTheSocket(t *testing.T) {
	t.Parallel()
	sink, m, pf := mta(t, MilterOptions{})
	optneg := []byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff}
	random := make([]byte, 8192)
	for i := range random {
		random[i] = byte(i*7919 + i/3)
	}
	payloads := [][]byte{
		{0, 0, 0, 0},
		append(append([]byte{}, optneg...), 0, 0, 0, 0),
		append(append([]byte{}, optneg...), append([]byte{0, 0, 0, 10, 'C'}, "hostname!"...)...),
		append(append([]byte{}, optneg...), append([]byte{0, 0, 0, 5, 'R'}, "a@b"...)...),
		random,
	}
	addr := strings.TrimPrefix(m.PostfixSpec(), "inet:")
	for _, p := range payloads {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("daemon gone: %v", err)
		}
		_, _ = c.Write(p)
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}
	m.WaitLog(t, "malformed packet", 5*time.Second)
	tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("after-garbage"))
	if !tr.Accepted() {
		t.Fatalf("mail after garbage:\n%s", tr)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "after-garbage"), 10*time.Second)
	traceBlock(t, d, "https://localhost/opes/", "")
}

// TestSIGTERMDrainsSessions stops the daemon while an SMTP session is in
// the middle of a transaction: that message still gets its trace and is
// delivered, then the daemon exits cleanly.
func TestSIGTERMDrainsSessions(t *testing.T) {
	for _, name := range caseMTAs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sink, m, addr := mtaStack(t, name, MilterOptions{})
			c := Dial(t, addr)
			c.Ehlo("client.example")
			if r := c.MailFrom("alice@example.org"); r.Code != 250 {
				t.Fatalf("MAIL: %s", r)
			}
			if r := c.RcptTo("bob@example.net"); r.Code != 250 {
				t.Fatalf("RCPT: %s", r)
			}
			if err := m.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			m.WaitLog(t, "draining sessions", 5*time.Second)
			r := c.Data(message("in-flight"))
			if r.Code != 250 {
				t.Fatalf("in-flight message: %s", r)
			}
			c.Quit()
			d := sink.WaitDump(t, HasHeader("Subject", "in-flight"), 10*time.Second)
			traceBlock(t, d, "https://localhost/opes/", "")
			if err := m.Stop(); err != nil {
				t.Fatalf("exit after drain: %v", err)
			}
			if !strings.Contains(m.Log(), "opes-milter: stopped") {
				t.Errorf("no clean stop in the log:\n%s", m.Log())
			}
		})
	}
}
