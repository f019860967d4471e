package integration

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSoak is a bounded soak through one real Postfix and one opes-milter
// (issue 8): messages of mixed kinds are sent concurrently, and a
// reconciliation shows that every message is accounted for exactly once,
// in the way its kind says:
//
//   - refused: the sender's domain is denied by an acl at MAIL; the client
//     got a 5xx with the trace (OPES-System) and keeps the message;
//   - quarantined: a rule holds it; it is in our store (admin API), with
//     the Postfix queue id as trace id, and nowhere else;
//   - discarded: a rule discards it after the data; the sender got a
//     delivery report (at the sink, null sender) whose text/rfc822-headers
//     part names its Message-ID;
//   - delivered: at the sink, with our trace on top.
//
// A message tempfailed under load is sent again (at most three tries),
// as a client would; a duplicate that this produced would show up in the
// reconciliation.
//
// Its size is bounded for an ordinary test run; for a bigger soak:
//
//	OPES_SOAK_MESSAGES=5000 OPES_SOAK_WORKERS=16 go test -count=1 -timeout 30m -run TestSoak ./integration/
func TestSoak(t *testing.T) {
	n := envInt(t, "OPES_SOAK_MESSAGES", 1000)
	workers := envInt(t, "OPES_SOAK_WORKERS", 8)
	Require(t)

	dir := TempDir(t)
	writeTokens(t, dir)
	adminAddr := FreeAddr(t)
	sink := StartSink(t)
	m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: soakPolicy(dir, adminAddr, sink.Addr())})
	pf := StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})
	token := randomToken()

	// Send.
	results := make([]soakResult, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				results[i] = sendSoak(t, pf.Addr(), i, token)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	sent := time.Since(start)

	// What the sink must receive: every accepted message that is
	// delivered or reported.
	want := 0
	for i, r := range results {
		if r.err != "" {
			t.Errorf("message %d (%s): %s", i, soakKindOf(i), r.err)
		}
		if r.accepted && (soakKindOf(i) == soakDelivered || soakKindOf(i) == soakReported) {
			want++
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	deadline := time.Now().Add(60*time.Second + time.Duration(n)*30*time.Millisecond)
	var msgs [][]byte
	for {
		msgs = sink.Messages()
		if len(msgs) >= want && pf.QueueEmpty() {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after %v: %d of %d messages and reports at the sink; Postfix queue:\n%s",
				time.Since(start).Round(time.Second), len(msgs), want, pf.Queue())
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(time.Second) // a duplicate still on its way would arrive now
	msgs = sink.Messages()
	settled := time.Since(start)

	// Reconcile: where each message ended up.
	found := make([][]soakKind, n)
	note := func(i int, k soakKind) { found[i] = append(found[i], k) }
	for i, r := range results {
		if r.refused {
			note(i, soakRefused)
		}
	}
	for _, raw := range msgs {
		d := ParseDump(raw)
		if d.Mail == "" {
			i, err := soakReportIndex(d, token)
			if err != nil {
				t.Errorf("report at the sink: %v\n%s", err, d.Message)
				continue
			}
			note(i, soakReported)
			continue
		}
		i, ok := soakIndex(d.Header().Get("Message-Id"), token)
		if !ok {
			t.Errorf("unknown message at the sink (from %s):\n%s", d.Mail, d.Message)
			continue
		}
		note(i, soakDelivered)
		sys := unfoldField(strings.Split(string(d.Message), "\n"), 0)
		if want := "OPES-System: " + itSystem + "; id=" + results[i].queueID; sys != want {
			t.Errorf("message %d delivered with %q on top, want %q", i, sys, want)
		}
	}
	for b := 0; b <= (n-1)/soakBucket; b++ {
		items := listQuarantine(t, adminAddr, fmt.Sprintf("@b%d.example.net", b))
		if len(items) >= 1000 {
			t.Fatalf("bucket %d: %d quarantine items, more than the API lists at once", b, len(items))
		}
		for _, it := range items {
			i, ok := -1, len(it.Recipients) == 1
			if ok {
				i, ok = soakRecipientIndex(it.Recipients[0])
			}
			if !ok || i >= n {
				t.Errorf("unknown quarantine item %+v", it)
				continue
			}
			note(i, soakQuarantined)
			if it.TraceID != results[i].queueID || it.Sender != soakSender(i) || it.Status != "held" {
				t.Errorf("message %d quarantined as %+v, want trace id %s, sender %s, held", i, it, results[i].queueID, soakSender(i))
			}
		}
	}

	counts := map[soakKind]int{}
	bad := 0
	for i, f := range found {
		if len(f) == 1 && f[0] == soakKindOf(i) {
			counts[f[0]]++
			continue
		}
		if bad++; bad <= 20 {
			t.Errorf("message %d (%s, queue id %s): found as %v, want exactly once as %s",
				i, soakKindOf(i), results[i].queueID, f, soakKindOf(i))
		}
	}
	if bad > 20 {
		t.Errorf("... %d messages not accounted for exactly once", bad)
	}
	retried := 0
	for _, r := range results {
		retried += r.tries - 1
	}
	t.Logf("soak: %d messages, %d workers: %d delivered with trace, %d refused with trace, %d quarantined, %d reported by NDR; %d tempfail(s) retried; sent in %v, settled in %v",
		n, workers, counts[soakDelivered], counts[soakRefused], counts[soakQuarantined], counts[soakReported],
		retried, sent.Round(time.Millisecond), settled.Round(time.Millisecond))
}

// soakPolicy: an acl refuses senders in refused.example at MAIL, a rule
// quarantines senders in held.example (in the store), a rule discards mail
// from dropped.example after the data (the report goes through the sink),
// and every message is tagged.
func soakPolicy(dir, adminAddr, sink string) string {
	return `[system]
uri = "` + itSystem + `"
privacy_url = "` + itSystem + `privacy"

[consent]
all = true
` + storePolicy(dir, adminAddr, sink, "", "") + `
[[service]]
name = "access"
kind = "acl"
[[service.options.entry]]
stage = "mail"
action = "deny"
sender_domain = ["refused.example"]
reply = "Sender refused by policy"

[[service]]
name = "external"
kind = "tag"
[service.options]
subject_prefix = "[EXT]"

[[rule]]
name = "everyone"
run = ["access", "external"]
` + holdRule(`sender_domain = ["held.example"]`) +
		dropRule(`sender_domain = ["dropped.example"]`)
}

type soakKind string

const (
	soakRefused     soakKind = "refused"
	soakQuarantined soakKind = "quarantined"
	soakReported    soakKind = "reported"
	soakDelivered   soakKind = "delivered"
)

// soakKindOf is what the policy does to message i.
func soakKindOf(i int) soakKind {
	switch i % 5 {
	case 0:
		return soakRefused
	case 1:
		return soakQuarantined
	case 2:
		return soakReported
	}
	return soakDelivered
}

func soakSender(i int) string {
	domain := map[soakKind]string{soakRefused: "refused.example", soakQuarantined: "held.example",
		soakReported: "dropped.example", soakDelivered: "example.org"}[soakKindOf(i)]
	return fmt.Sprintf("s%d@%s", i, domain)
}

// soakBucket messages share a recipient domain, so that one admin API
// request (at most 1000 items) lists all their quarantined ones.
const soakBucket = 800

func soakRecipient(i int) string { return fmt.Sprintf("r%d@b%d.example.net", i, i/soakBucket) }

var soakRcptRE = regexp.MustCompile(`^r(\d+)@b(\d+)\.example\.net$`)

func soakRecipientIndex(rcpt string) (int, bool) {
	m := soakRcptRE.FindStringSubmatch(rcpt)
	if m == nil {
		return 0, false
	}
	i, err := strconv.Atoi(m[1])
	return i, err == nil && soakRecipient(i) == rcpt
}

func soakMessageID(i int, token string) string {
	return fmt.Sprintf("soak-%d.%s@example.org", i, token)
}

// soakIndex is the message number in a Message-ID of this run.
func soakIndex(msgID, token string) (int, bool) {
	id := strings.Trim(strings.TrimSpace(msgID), "<>")
	num, ok := strings.CutPrefix(id, "soak-")
	if !ok {
		return 0, false
	}
	num, ok = strings.CutSuffix(num, "."+token+"@example.org")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(num)
	return i, err == nil && i >= 0
}

// soakReportIndex is the message a report at the sink is about; it must
// be addressed to that message's sender.
func soakReportIndex(d Dump, token string) (int, error) {
	id, err := reportedMessageID(d.Message)
	if err != nil {
		return 0, err
	}
	i, ok := soakIndex(id, token)
	if !ok {
		return 0, fmt.Errorf("report names Message-ID %q, not one of ours", id)
	}
	if len(d.Rcpts) != 1 || d.Rcpts[0] != soakSender(i) {
		return 0, fmt.Errorf("report on message %d sent to %v, want its sender %s", i, d.Rcpts, soakSender(i))
	}
	return i, nil
}

// soakMessage is message i: every tenth has a ~20 KiB body.
func soakMessage(i int, token string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\nTo: <%s>\nSubject: soak %d\nMessage-ID: <%s>\nDate: %s\n\n",
		soakSender(i), soakRecipient(i), i, soakMessageID(i, token), time.Now().Format(time.RFC1123Z))
	lines := 3
	if i%10 == 9 {
		lines = 300
	}
	for l := range lines {
		fmt.Fprintf(&b, "Line %d of soak message %d: the quick brown fox jumps over the lazy dog.\n", l, i)
	}
	return []byte(b.String())
}

// soakResult is what the SMTP client was told about one message.
type soakResult struct {
	tries    int
	accepted bool   // 250 at the end of data
	queueID  string // from that 250
	refused  bool   // 5xx with the trace
	err      string // any other outcome
}

// sendSoak sends message i, again after a tempfail (three tries in all).
func sendSoak(t *testing.T, addr string, i int, token string) soakResult {
	var res soakResult
	for res.tries = 1; ; res.tries++ {
		tr, err := trySendMail(t, addr, soakSender(i), []string{soakRecipient(i)}, soakMessage(i, token))
		var last Reply
		if err == nil && len(tr.Steps) > 0 {
			for _, s := range tr.Steps {
				if s.Cmd == "QUIT" {
					break
				}
				last = s.Reply
			}
		}
		switch {
		case err == nil && tr.Accepted():
			if res.queueID = queueID(last); res.queueID == "" {
				res.err = "accepted without a queue id: " + last.String()
			}
			res.accepted = true
			return res
		case err == nil && last.Class() == 5:
			if mail, _ := tr.Reply("MAIL"); mail.Class() != 5 || !mail.Contains("OPES-System: "+itSystem) {
				res.err = "refused other than at MAIL with the trace:\n" + tr.String()
			}
			res.refused = true
			return res
		case res.tries < 3 && (err != nil || last.Class() == 4 || tr.Err != nil):
			time.Sleep(time.Duration(res.tries) * 200 * time.Millisecond)
			continue
		case err != nil:
			res.err = err.Error()
		default:
			res.err = "neither accepted nor refused:\n" + tr.String()
		}
		return res
	}
}

// envInt reads a positive integer from the environment, def if unset.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
