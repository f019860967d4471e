package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
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

const itPolicy = `
[system]
uri = "https://mx.it.example/opes/"
privacy_url = "https://mx.it.example/opes/privacy"

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

[[rule]]
name = "content"
stage = "eom"
verdict = "reject"
reason = "forbidden subject"
[rule.when]
header = ["Subject: refuse-me"]
`

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

func message(subject string) []byte {
	return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject + "\nMessage-ID: <" + subject + "@example.org>\n\nHello.\n")
}

var queuedAs = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

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

func TestTraceOnEveryDeliveredMessage(t *testing.T) {
	for _, unix := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "unix"}[unix], func(t *testing.T) {
			t.Parallel()
			sink, _, pf := mta(t, MilterOptions{Unix: unix})
			c := Dial(t, pf.Addr())
			c.Ehlo("client.example")
			var ids []string
			for i := range 2 { // two messages on one SMTP connection
				subject := fmt.Sprintf("trace-%d", i)
				if r := c.MailFrom("alice@example.org"); r.Code != 250 {
					t.Fatalf("MAIL: %s", r)
				}
				if r := c.RcptTo("bob@example.net"); r.Code != 250 {
					t.Fatalf("RCPT: %s", r)
				}
				r := c.Data(message(subject))
				m := queuedAs.FindStringSubmatch(r.Raw)
				if r.Code != 250 || m == nil {
					t.Fatalf("DATA: %s", r)
				}
				d := sink.WaitDump(t, HasHeader("Subject", subject), 10*time.Second)
				t.Logf("delivered:\n%s", d.Message)
				traceBlock(t, d, "https://localhost/opes/", m[1])
				if !strings.Contains(string(d.Message), "Received: from client.example") {
					t.Errorf("Postfix's Received missing:\n%s", d.Message)
				}
				ids = append(ids, m[1])
			}
			c.Quit()
			if ids[0] == ids[1] {
				t.Errorf("two messages share trace id %s", ids[0])
			}
		})
	}
}

func TestRefusalsCarryTraceThroughPostfix(t *testing.T) {
	t.Parallel()
	sink, _, pf := mta(t, MilterOptions{Policy: itPolicy})
	c := Dial(t, pf.Addr())
	c.Ehlo("client.example")

	// MAIL stage.
	checkTraceReply(t, c.MailFrom("blocked@example.org"), 550, "5.7.1", itSystem+"svc/access")
	c.Cmd("RSET")

	// RCPT stage: one recipient refused with the trace, the other accepted.
	if r := c.MailFrom("alice@example.org"); r.Code != 250 {
		t.Fatalf("MAIL: %s", r)
	}
	rr := c.RcptTo("trap@example.net")
	id := checkTraceReply(t, rr, 550, "5.7.1", itSystem+"svc/access")
	if !strings.Contains(rr.Lines[0], "Mailbox is a spam trap") {
		t.Errorf("configured reply text missing: %s", rr)
	}
	if r := c.RcptTo("bob@example.net"); r.Code != 250 {
		t.Fatalf("second RCPT: %s", r)
	}
	// Upstream trace fields (another OPES system before us) must pass
	// through byte for byte, folding included.
	upstream := "OPES-System: https://relay.upstream.example/opes/; id=UP77\n" +
		"OPES-Via: https://relay.upstream.example/opes/; id=UP77,\n" +
		"\thttps://relay.upstream.example/opes/svc/av;  action=analyzed\n" +
		"OPES-Bypass: *\n"
	if r := c.Data(append([]byte(upstream), message("split")...)); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "split"), 10*time.Second)
	if !strings.Contains(string(d.Message), upstream) {
		t.Errorf("upstream trace fields changed:\n%s", d.Message)
	}
	if len(d.Rcpts) != 1 || d.Rcpts[0] != "bob@example.net" {
		t.Errorf("delivered to %v", d.Rcpts)
	}
	via := traceBlock(t, d, itSystem, id) // same id as in the RCPT reply
	if len(via) != 2 || via[1].URI != itSystem+"svc/access" {
		t.Fatalf("OPES-Via entries %+v", via)
	}
	if a, _ := via[1].Param("action"); a != "rejected" {
		t.Errorf("acl action %q in the delivered trace", a)
	}

	// End of data.
	c.MailFrom("alice@example.org")
	c.RcptTo("bob@example.net")
	r := c.Data(message("refuse-me"))
	checkTraceReply(t, r, 554, "5.7.1", itSystem+"rule/content")
	if !r.Contains("forbidden subject") {
		t.Errorf("reason missing: %s", r)
	}
	c.Quit()
	time.Sleep(300 * time.Millisecond)
	for _, d := range sink.Dumps() {
		if strings.Contains(string(d.Message), "refuse-me") {
			t.Errorf("refused message reached the sink")
		}
	}
}

func TestMilterDownTempfails(t *testing.T) {
	t.Parallel()
	sink, m, pf := mta(t, MilterOptions{})
	tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("before"))
	if !tr.Accepted() {
		t.Fatalf("milter up, message not accepted:\n%s", tr)
	}
	sink.WaitDump(t, HasHeader("Subject", "before"), 10*time.Second)
	if err := m.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	tr = SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("after"))
	if tr.Accepted() {
		t.Fatalf("milter down but message accepted:\n%s", tr)
	}
	var tempfail bool
	for _, r := range tr.All() {
		if r.Class() == 5 {
			t.Errorf("permanent error while the milter is down: %s", r)
		}
		tempfail = tempfail || r.Code == 451
	}
	if !tempfail {
		t.Errorf("no 451 while the milter is down:\n%s", tr)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(sink.Dumps()); n != 1 {
		t.Errorf("%d messages at the sink, want only the one sent before the stop", n)
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
	t.Parallel()
	sink, m, pf := mta(t, MilterOptions{})
	c := Dial(t, pf.Addr())
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
}
