package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The OPES guarantees through real Postfix (issue 3): consent, an
// in-message bypass from a trusted network, a discard that becomes a
// report to the sender with the trace, a quarantine kept in our store and
// released through the admin API with a release record, and the
// disclosure page.

func guaranteePolicy(dir, sink, adminAddr string) string {
	return `[system]
uri = "` + itSystem + `"
operator = "Example Net Ltd"
privacy_policy = "Mail to our domains is scanned; trace records are kept for 30 days."
retention = "trace records 30 days, quarantine 30 days"

[consent]
party = "Example Net Ltd for example.net"
recipients = ["@example.net"]

[bypass]
trusted_networks = ["127.0.0.0/8"]
` + storePolicy(dir, adminAddr, sink, "", `release_relay = "`+sink+`"`) +
		tagExternal(true) +
		dropRule(`sender = ["dropme@example.org"]`) +
		holdRule(`sender = ["holdme@example.org"]`)
}

func TestGuaranteesThroughPostfix(t *testing.T) {
	t.Parallel()
	dir := TempDir(t)
	writeTokens(t, dir)
	adminAddr := FreeAddr(t)
	Require(t)
	sink := StartSink(t)
	m := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: guaranteePolicy(dir, sink.Addr(), adminAddr)})
	pf := StartPostfix(t, PostfixOptions{Milter: m.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})

	send := func(from, to, subject string, extra string) {
		t.Helper()
		msg := "From: <" + from + ">\nTo: <" + to + ">\nSubject: " + subject + "\nMessage-ID: <" + subject + "@example.org>\n" + extra + "\nHello.\n"
		if tr := SendMail(t, pf.Addr(), from, []string{to}, []byte(msg)); !tr.Accepted() {
			t.Fatalf("%s not accepted:\n%s", subject, tr)
		}
	}

	t.Run("consent", func(t *testing.T) {
		send("alice@example.org", "bob@example.net", "consented", "")
		d := sink.WaitDump(t, HasHeader("Subject", "[EXTERNAL] consented"), 15*time.Second)
		if !strings.Contains(string(d.Message), "svc/external; action=tagged") {
			t.Errorf("trace:\n%s", d.Message)
		}
		send("alice@example.org", "carol@elsewhere.test", "not-consented", "")
		d = sink.WaitDump(t, HasHeader("Subject", "not-consented"), 15*time.Second)
		if !strings.Contains(string(d.Message), "consent=none") || strings.Contains(string(d.Message), "svc/external") {
			t.Errorf("a non-consenting recipient's mail was processed:\n%s", d.Message)
		}
	})

	t.Run("in-message bypass", func(t *testing.T) {
		send("alice@example.org", "bob@example.net", "bypassed", "OPES-Bypass: *\n")
		d := sink.WaitDump(t, HasHeader("Subject", "bypassed"), 15*time.Second)
		msg := strings.ReplaceAll(string(d.Message), "\n\t", " ")
		if !strings.Contains(msg, "svc/external; bypass=honored; status=skipped") || !strings.Contains(msg, "OPES-Bypass: *") {
			t.Errorf("bypass not honoured, or the field was removed:\n%s", msg)
		}
	})

	t.Run("discard sends a report", func(t *testing.T) {
		send("dropme@example.org", "bob@example.net", "dropped", "")
		raw := sink.WaitMessage(t, func(raw []byte) bool {
			d := ParseDump(raw)
			return d.Mail == "" && len(d.Rcpts) == 1 && d.Rcpts[0] == "dropme@example.org"
		}, 30*time.Second)
		d := ParseDump(raw)
		msg := string(d.Message)
		for _, want := range []string{"multipart/report", "report-type=delivery-status", "Final-Recipient: rfc822; bob@example.net",
			"X-OPES-System: " + itSystem, "rule/drop", "OPES-System: " + itSystem, "Subject: dropped", "Auto-Submitted: auto-replied"} {
			if !strings.Contains(msg, want) {
				t.Errorf("report lacks %q:\n%s", want, msg)
			}
		}
		for _, dd := range sink.Dumps() {
			if dd.Header().Get("Subject") == "dropped" {
				t.Errorf("the discarded message was delivered")
			}
		}
	})

	var qid string
	t.Run("quarantine in the store", func(t *testing.T) {
		send("holdme@example.org", "bob@example.net", "held", "")
		// The message is ours now: Postfix discards its copy.
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && qid == "" {
			var items []struct {
				ID     string `json:"id"`
				Sender string `json:"sender"`
				Status string `json:"status"`
			}
			apiJSON(t, "GET", "http://"+adminAddr+"/api/v1/quarantine", &items)
			for _, it := range items {
				if it.Sender == "holdme@example.org" && it.Status == "held" {
					qid = it.ID
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if qid == "" {
			t.Fatal("quarantined message not in the store")
		}
		apiJSON(t, "POST", "http://"+adminAddr+"/api/v1/quarantine/"+qid+"/release", nil)
		d := sink.WaitDump(t, HasHeader("Subject", "held"), 15*time.Second)
		msg := strings.ReplaceAll(string(d.Message), "\n\t", " ")
		if !strings.Contains(msg, "action=quarantined; released=") || d.Mail != "holdme@example.org" || len(d.Rcpts) != 1 || d.Rcpts[0] != "bob@example.net" {
			t.Errorf("released message: from %q to %v\n%s", d.Mail, d.Rcpts, msg)
		}
		b, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
		if err != nil || !strings.Contains(string(b), `"kind":"quarantine-release"`) || !strings.Contains(string(b), `"actor":"api:ops"`) {
			t.Errorf("audit log lacks the release: %v\n%s", err, b)
		}
	})

	t.Run("disclosure page", func(t *testing.T) {
		code, body := httpGet(t, "http://"+adminAddr+"/opes/")
		if code != 200 || !strings.Contains(body, "Example Net Ltd") || !strings.Contains(body, itSystem+"svc/external") {
			t.Errorf("page: %d\n%s", code, body)
		}
		_, metricsBody := httpGet(t, "http://"+adminAddr+"/metrics")
		for _, want := range []string{`opes_milter_bypass_decisions_total{decision="honored",reason=""} 1`,
			`opes_milter_quarantine_held 0`, `opes_milter_outbox{status="queued"} `} {
			if !strings.Contains(metricsBody, want) {
				t.Errorf("/metrics lacks %q:\n%s", want, grepLines(metricsBody, "opes_milter_"))
			}
		}
		// The API without a token is refused.
		resp, err := http.Post("http://"+adminAddr+"/api/v1/quarantine/"+qid+"/release", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("release without a token: %d", resp.StatusCode)
		}
	})
}

func apiJSON(t *testing.T, method, url string, out any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	authorize(req)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: %v\n%s", url, err, b)
		}
	}
}
