package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

const quarantinePolicy = `
[system]
uri = "https://mx.it.example/opes/"

[consent]
recipients = ["@example.net", "@example.org", "@example.test", "@x.test", "@y.test"]

[[rule]]
name = "hold"
stage = "eom"
verdict = "quarantine"
reason = "held for review"
[rule.when]
header = ["Subject: hold-me"]
`

// TestQuarantineHeldByTheMTA: a quarantine verdict accepts the message
// (250) and the MTA keeps it out of delivery — Postfix in its hold queue,
// Sendmail in its quarantine with our reason — instead of dropping it.
func TestQuarantineHeldByTheMTA(t *testing.T) {
	t.Parallel()
	Require(t)
	for _, mta := range []string{"postfix", "sendmail"} {
		t.Run(mta, func(t *testing.T) {
			t.Parallel()
			if mta == "sendmail" {
				Require(t, SendmailBinaries...)
			}
			sink := StartSink(t)
			m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: quarantinePolicy})
			var addr string
			var queue func() string
			switch mta {
			case "postfix":
				pf := StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})
				addr, queue = pf.Addr(), pf.Queue
			case "sendmail":
				sm := StartSendmail(t, SendmailOptions{Milter: m.SendmailSpec(), MilterFlags: "T", RelayTo: sink.Addr()})
				addr, queue = sm.Addr(), sm.QuarantineQueue
			}
			tr := SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, message("hold-me"))
			r, ok := tr.DataReply()
			if !ok || r.Code != 250 {
				t.Fatalf("quarantined message not accepted:\n%s", tr)
			}
			tr = SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, message("deliver-me"))
			if !tr.Accepted() {
				t.Fatalf("ordinary message:\n%s", tr)
			}
			sink.WaitDump(t, HasHeader("Subject", "deliver-me"), 10*time.Second)
			for _, d := range sink.Dumps() {
				if strings.Contains(string(d.Message), "hold-me") {
					t.Fatalf("quarantined message was delivered")
				}
			}
			q := queue()
			switch mta {
			case "postfix":
				// postqueue -p marks held messages with '!' after the id.
				if !regexp.MustCompile(`(?m)^[0-9A-F]+!`).MatchString(q) {
					t.Errorf("no held message in the Postfix queue (reply %q):\n%s", r.Raw, q)
				}
			case "sendmail":
				if !strings.Contains(q, "QUARANTINE: held for review") {
					t.Errorf("Sendmail's quarantine lacks our reason:\n%s", q)
				}
			}
		})
	}
}
