package integration

import (
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// Fault injection through real Postfix (issue 8): a scanner that is down,
// hung past its deadline or answering garbage; the report relay down; the
// quarantine full; opes-milter killed in the middle of a transaction. In
// every case the SMTP client is told: either a tempfail (it keeps the
// message and retries), or a 250 after which the message is delivered
// with a trace that says what was skipped, or is held in our store with
// its report queued. Never a silent loss.

// faultMessage is a small message with a Message-ID made from subject.
func faultMessage(subject string) []byte {
	return []byte("From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: " + subject +
		"\nMessage-ID: <" + subject + "@example.org>\n\nNothing in here but text.\n")
}

// sendFrom sends faultMessage(subject) from sender to bob@example.net and
// returns the reply to the end of data.
func sendFrom(t *testing.T, addr, sender, subject string) Reply {
	t.Helper()
	tr := SendMail(t, addr, sender, []string{"bob@example.net"}, faultMessage(subject))
	r, ok := tr.DataReply()
	if !ok {
		t.Fatalf("no reply to the end of data:\n%s", tr)
	}
	t.Logf("%s: %s", subject, r)
	return r
}

// checkFailureReply asserts a tempfail with the trace (PROFILE §3) that
// names the failed agent uri with the given status.
func checkFailureReply(t *testing.T, r Reply, uri, status string) {
	t.Helper()
	if r.Code != 451 || len(r.Lines) < 4 || !strings.HasPrefix(r.Lines[0], "451-4.3.0 ") {
		t.Fatalf("reply %s, want a multi-line 451 4.3.0", r)
	}
	if !strings.HasPrefix(r.Lines[1], "451-4.3.0 OPES-System: "+itSystem+"; id=") {
		t.Errorf("line 1 %q, want the OPES-System of %s", r.Lines[1], itSystem)
	}
	if !strings.HasPrefix(r.Lines[2], "451-4.3.0 OPES-Via: ") {
		t.Errorf("line 2 %q, want OPES-Via", r.Lines[2])
	}
	entry := viaEntryText(r, uri)
	if !strings.Contains(entry, "status="+status) {
		t.Errorf("OPES-Via entry of %s %q lacks status=%s; reply:\n%s", uri, entry, status, r.Raw)
	}
	if last := r.Lines[len(r.Lines)-1]; last != "451 4.3.0 Policy, privacy and bypass: "+itSystem+"privacy" {
		t.Errorf("last line %q", last)
	}
}

// viaEntryText is the OPES-Via entry of uri in a reply's trace, as text
// ("" if there is none).
func viaEntryText(r Reply, uri string) string {
	_, via, _ := strings.Cut(replyText(r), "OPES-Via: ")
	m := regexp.MustCompile(`(?:^|, )(` + regexp.QuoteMeta(uri) + `;[^,]*)`).FindStringSubmatch(via)
	if m == nil {
		return ""
	}
	return m[1]
}

// wantStatus checks the status parameter of uri's OPES-Via entry in a
// delivered message.
func wantStatus(t *testing.T, d Dump, uri, status string) {
	t.Helper()
	e := viaEntry(t, d, uri)
	if got, _ := e.Param("status"); got != status {
		t.Errorf("OPES-Via entry %s: status %q, want %q", e, got, status)
	}
}

// scannerPolicy has, for each name, a clamav service with that socket,
// run for mail from <name>@example.org: a required scanner (on_error by
// default: tempfail) and an optional one, "<name>-opt" (bypassable,
// on_error = "continue"). The "slow" ones have a 1 s deadline, the others
// 10 s.
func scannerPolicy(scanners map[string]string) string {
	var b strings.Builder
	b.WriteString(`[system]
uri = "` + itSystem + `"
privacy_url = "` + itSystem + `privacy"

[consent]
recipients = ["@example.net"]
`)
	for _, name := range []string{"av", "slow", "garbage"} {
		sock, timeout := scanners[name], "10s"
		if name == "slow" {
			timeout = "1s"
		}
		for _, opt := range []bool{false, true} {
			svc, extra := name, ""
			if opt {
				svc, extra = name+"-opt", "bypassable = true\non_error = \"continue\"\n"
			}
			fmt.Fprintf(&b, `
[[service]]
name = %q
kind = "clamav"
%s[service.options]
socket = %q
timeout = %q
connect_timeout = "1s"
action = "reject"

[[rule]]
name = %q
run = [%q]
[rule.when]
sender = ["%s@example.org"]
`, svc, extra, sock, timeout, "scan-"+svc, svc, svc)
		}
	}
	return b.String()
}

// TestFaultScanner: a real clamd, then clamd killed, a scanner that never
// answers and one that answers garbage. A required scanner's failure is a
// 451 4.3.0 whose trace names it (status=failed, or status=timeout past
// its deadline), and nothing is delivered; an optional scanner's failure
// lets the message through with the same status in its OPES-Via entry.
func TestFaultScanner(t *testing.T) {
	t.Parallel()
	Require(t)
	clamd := StartClamd(t)
	reqs := make(chan struct{}, 16)
	scanners := map[string]string{
		"av":      clamd.TCP(),
		"slow":    stallingScanner(t).Socket(),
		"garbage": garbageScanner(t, reqs).Socket(),
	}
	sink, m, addr := mtaStack(t, "postfix", MilterOptions{Policy: scannerPolicy(scanners)})
	svc := func(name string) string { return itSystem + "svc/" + name }
	var delivered []string
	// An optional scanner's failure lets the message through, traced with
	// the status of the failure.
	passesOptional := func(t *testing.T, scanner, subject, status, failure string) {
		t.Helper()
		if r := sendFrom(t, addr, scanner+"@example.org", subject); r.Code != 250 {
			t.Fatalf("optional scanner %s: %s, want 250", failure, r)
		}
		d := sink.WaitDump(t, HasHeader("Subject", subject), 15*time.Second)
		wantStatus(t, d, svc(scanner), status)
		delivered = append(delivered, subject)
	}

	t.Run("clamd up", func(t *testing.T) {
		for _, name := range []string{"av", "av-opt"} {
			subject := "up-" + name
			if r := sendFrom(t, addr, name+"@example.org", subject); r.Code != 250 {
				t.Fatalf("clean message with clamd up: %s", r)
			}
			d := sink.WaitDump(t, HasHeader("Subject", subject), 15*time.Second)
			wantAction(t, d, svc(name), "analyzed")
			if e := viaEntry(t, d, svc(name)); hasParam(e, "status") {
				t.Errorf("a successful scan traced with a status: %s", e)
			}
			delivered = append(delivered, subject)
		}
	})

	clamd.Kill()

	t.Run("clamd down", func(t *testing.T) {
		r := sendFrom(t, addr, "av@example.org", "down-av")
		checkFailureReply(t, r, svc("av"), "failed")
		if !strings.Contains(replyText(r), "bypassable=no") {
			t.Errorf("the failed required scanner is not marked bypassable=no:\n%s", r.Raw)
		}
	})

	t.Run("clamd down, optional", func(t *testing.T) {
		passesOptional(t, "av-opt", "down-av-opt", "failed", "down")
	})

	t.Run("scanner past its deadline", func(t *testing.T) {
		start := time.Now()
		r := sendFrom(t, addr, "slow@example.org", "slow")
		took := time.Since(start)
		checkFailureReply(t, r, svc("slow"), "timeout")
		// The scan waited for its 1 s deadline, not for an MTA timeout.
		if took < time.Second || took > 20*time.Second {
			t.Errorf("the stalled scan ended after %v, want about its 1s timeout", took)
		}
	})

	t.Run("scanner past its deadline, optional", func(t *testing.T) {
		passesOptional(t, "slow-opt", "slow-opt", "timeout", "stalled")
	})

	t.Run("scanner answers garbage", func(t *testing.T) {
		r := sendFrom(t, addr, "garbage@example.org", "garbage")
		checkFailureReply(t, r, svc("garbage"), "failed")
		select {
		case <-reqs:
		default:
			t.Fatal("the garbage scanner never got a whole INSTREAM request: the failure was not the garbage")
		}
		m.WaitLog(t, "unexpected clamd reply", 5*time.Second)
	})

	t.Run("scanner answers garbage, optional", func(t *testing.T) {
		passesOptional(t, "garbage-opt", "garbage-opt", "failed", "answering garbage")
	})

	// Only what was accepted reached the sink, once each.
	time.Sleep(500 * time.Millisecond)
	seen := map[string]int{}
	for _, d := range sink.Dumps() {
		seen[d.Header().Get("Subject")]++
	}
	for _, s := range delivered {
		if seen[s] != 1 {
			t.Errorf("%q delivered %d times, want once", s, seen[s])
		}
		delete(seen, s)
	}
	for s, n := range seen {
		t.Errorf("%q (%d copies) reached the sink though it was not accepted", s, n)
	}
}

// faultStorePolicy has an admin API, a store, store quarantine and report
// relay ndrRelay: mail from hold@example.org is quarantined, mail from
// drop@example.org discarded at the end of data (and reported).
func faultStorePolicy(dir, adminAddr, ndrRelay, storeExtra string) string {
	return `[system]
uri = "` + itSystem + `"
privacy_url = "` + itSystem + `privacy"

[consent]
recipients = ["@example.net"]
` + storePolicy(dir, adminAddr, ndrRelay, storeExtra, "") +
		holdRule(`sender = ["hold@example.org"]`) +
		dropRule(`sender = ["drop@example.org"]`)
}

// TestFaultNDRRelayDown: a discard after the data with the report relay
// down. The client gets 250 (the message is ours and dropped on purpose),
// and the report owed to the sender is durably in the outbox, with the
// failed attempt recorded, to be retried: not lost.
func TestFaultNDRRelayDown(t *testing.T) {
	t.Parallel()
	Require(t)
	dir := TempDir(t)
	writeTokens(t, dir)
	adminAddr := FreeAddr(t)
	deadRelay := FreeAddr(t) // nothing listens there
	sink, _, addr := mtaStack(t, "postfix", MilterOptions{Policy: faultStorePolicy(dir, adminAddr, deadRelay, "")})

	r := sendFrom(t, addr, "drop@example.org", "ndr-relay-down")
	if r.Code != 250 {
		t.Fatalf("discarded message: %s, want 250", r)
	}
	qid := queueID(r)

	var item outboxItem
	deadline := time.Now().Add(20 * time.Second)
	for {
		var found bool
		for _, it := range listOutbox(t, adminAddr) {
			if len(it.Recipients) == 1 && it.Recipients[0] == "drop@example.org" {
				item, found = it, true
			}
		}
		if found && item.Attempts >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report to drop@example.org with a failed attempt in the outbox within 20s (found: %v, %+v)", found, item)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("outbox: %+v", item)
	if item.LastError == "" {
		t.Errorf("the failed attempt left no last_error: %+v", item)
	}
	if item.Status != "queued" {
		t.Errorf("report status %q after a temporary failure, want queued (to be retried)", item.Status)
	}
	if item.Sender != "" {
		t.Errorf("report envelope sender %q, want the null reverse-path", item.Sender)
	}
	if qid != "" && item.TraceID != qid {
		t.Errorf("report trace id %q, want the queue id %q of the discarded message", item.TraceID, qid)
	}
	notDelivered(t, sink, "ndr-relay-down")
}

// TestFaultQuarantineFull: a quarantine verdict when the store's
// quarantine has no room. The message cannot be held, so it is not
// accepted: 451 4.3.0 with the trace, the client keeps it; nothing is
// delivered and nothing is stored. Mail that needs no quarantine still
// flows.
func TestFaultQuarantineFull(t *testing.T) {
	t.Parallel()
	Require(t)
	dir := TempDir(t)
	writeTokens(t, dir)
	adminAddr := FreeAddr(t)
	sink := StartSink(t)
	m := StartMilter(t, MilterOptions{Binary: milterBinary,
		Policy: faultStorePolicy(dir, adminAddr, sink.Addr(), "max_quarantine_size = 10")})
	pf := StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})

	r := sendFrom(t, pf.Addr(), "hold@example.org", "quarantine-full")
	// The rule decided to hold it; the system itself could not, and says so.
	checkFailureReply(t, r, itSystem, "failed")
	if e := viaEntryText(r, itSystem+"rule/hold"); !strings.Contains(e, "action=quarantined") {
		t.Errorf("the reply does not trace the quarantine verdict (entry %q):\n%s", e, r.Raw)
	}
	if !strings.Contains(r.Lines[0], "quarantine unavailable") {
		t.Errorf("the first line does not say why: %q", r.Lines[0])
	}
	notDelivered(t, sink, "quarantine-full")
	if items := listQuarantine(t, adminAddr, ""); len(items) != 0 {
		t.Errorf("the full quarantine stored %d item(s): %+v", len(items), items)
	}
	if !pf.QueueEmpty() {
		t.Errorf("Postfix kept a copy of the refused message:\n%s", pf.Queue())
	}

	if r := sendFrom(t, pf.Addr(), "alice@example.org", "quarantine-full-other"); r.Code != 250 {
		t.Fatalf("ordinary mail with the quarantine full: %s", r)
	}
	sink.WaitDump(t, HasHeader("Subject", "quarantine-full-other"), 15*time.Second)
}

// TestFaultMilterKilled: opes-milter killed with SIGKILL while Postfix is
// receiving a message's data. Postfix (milter_default_action = tempfail)
// answers the end of data with a 4xx: the client keeps the message and
// nothing is delivered. A milter restarted on the same socket serves the
// next session, with the trace.
func TestFaultMilterKilled(t *testing.T) {
	t.Parallel()
	policy := `[system]
uri = "` + itSystem + `"

[consent]
recipients = ["@example.net"]
` + tagExternal(false)
	sink, m, pf := mta(t, MilterOptions{Policy: policy})

	c := Dial(t, pf.Addr())
	c.Ehlo("client.example.test")
	if r := c.MailFrom("alice@example.org"); r.Code != 250 {
		t.Fatalf("MAIL: %s", r)
	}
	if r := c.RcptTo("bob@example.net"); r.Code != 250 {
		t.Fatalf("RCPT: %s", r)
	}
	if r := c.Cmd("DATA"); r.Code != 354 {
		t.Fatalf("DATA: %s", r)
	}
	data := EncodeData(faultMessage("killed-mid-data"))
	half := len(data) / 2
	// The first half of the message goes out raw (no reply is due yet);
	// the rest, with the final dot, through the client so that the reply
	// is recorded.
	if _, err := c.w.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	if err := c.w.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let smtpd read it
	if err := m.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("opes-milter exit after SIGKILL: %v", err)
	}
	r, err := c.exchange(".", data[half:])
	t.Logf("end of data after the kill: %s (%v)", r, err)
	if err != nil {
		t.Fatalf("end of data: %v\n%s", err, c.Transcript())
	}
	// Postfix's own tempfail (milter_default_action): the milter is dead.
	if r.Class() != 4 || r.Raw != "451 4.7.1 Service unavailable - try again later\r\n" {
		t.Fatalf("end of data with the milter killed: %s, want Postfix's 451 4.7.1 tempfail", r)
	}
	c.Quit()
	log := pf.WaitLog(t, "milter-reject: END-OF-MESSAGE", 5*time.Second)
	if !strings.Contains(log, "warning: milter "+m.PostfixSpec()+": ") {
		t.Errorf("Postfix did not log the dead milter %s:\n%s", m.PostfixSpec(), log)
	}
	notDelivered(t, sink, "killed-mid-data")
	if !pf.QueueEmpty() {
		t.Errorf("Postfix queued the tempfailed message:\n%s", pf.Queue())
	}

	// A restart on the same socket: mail flows again, traced and tagged.
	m.Restart(t)
	r = sendFrom(t, pf.Addr(), "alice@example.org", "after-restart")
	if r.Code != 250 {
		t.Fatalf("after the restart: %s", r)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "[EXTERNAL] after-restart"), 15*time.Second)
	wantAction(t, d, itSystem+"svc/external", "tagged")
}

func hasParam(e opes.TraceEntry, name string) bool {
	_, ok := e.Param(name)
	return ok
}
