package integration

import (
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/pgtest"
)

// TestSharedPostgresStore: two opes-milter daemons (two MX hosts) share
// one real PostgreSQL store. A recipient's out-of-band preference recorded
// through the first daemon's admin API is honoured by the second for mail
// that arrives through Postfix, and the second's quarantine is visible
// through the first.
func TestSharedPostgresStore(t *testing.T) {
	t.Parallel()
	Require(t)
	if _, err := pgtest.BinDir(); err != nil {
		t.Fatalf("PostgreSQL is needed (apt-get install postgresql): %v", err)
	}
	dir := TempDir(t)
	dsn := pgtest.Start(t)
	writeTokens(t, dir)
	policy := func(adminAddr string) string {
		// Each host keeps its own audit log; preference changes need one.
		return `[system]
uri = "` + itSystem + `"

[consent]
recipients = ["@example.net"]

[admin]
listen = "` + adminAddr + `"
token_file = "` + filepath.Join(dir, "tokens") + `"

[store]
backend = "postgres"
dsn = "` + dsn + `"

[quarantine]
mode = "store"

[audit]
log = "` + filepath.Join(dir, adminAddr+".audit.jsonl") + `"
` + tagExternal(true) + `
[[rule]]
name = "hold"
stage = "mail"
verdict = "quarantine"
[rule.when]
sender = ["holdme@example.org"]
`
	}
	adminA, adminB := FreeAddr(t), FreeAddr(t)
	StartMilter(t, MilterOptions{Binary: milterBinary, Policy: policy(adminA)}) // host A: management only here
	sink := StartSink(t)
	mB := StartMilter(t, MilterOptions{Binary: milterBinary, Policy: policy(adminB)})
	pf := StartPostfix(t, PostfixOptions{Milter: mB.PostfixSpec(), DefaultAction: "tempfail", RelayTo: sink.Addr()})

	// The preference, recorded on A.
	body, _ := json.Marshal(map[string]any{"recipient": "bob@example.net", "sender": "@example.org", "kind": "non-opes-version"})
	req, _ := http.NewRequest("POST", "http://"+adminA+"/api/v1/bypass", bytes.NewReader(body))
	authorize(req)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST /api/v1/bypass on A: %d", resp.StatusCode)
	}

	// Mail through B honours it.
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("shared-pref")); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "shared-pref"), 15*time.Second)
	if msg := strings.ReplaceAll(string(d.Message), "\n\t", " "); !strings.Contains(msg, "svc/external; bypass=honored; status=skipped") {
		t.Errorf("B did not honour the preference recorded on A:\n%s", msg)
	}
	// Another recipient is tagged as usual.
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"carol@example.net"}, message("no-pref")); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	sink.WaitDump(t, HasHeader("Subject", "[EXTERNAL] no-pref"), 15*time.Second)

	// B quarantines; A lists it.
	if tr := SendMail(t, pf.Addr(), "holdme@example.org", []string{"bob@example.net"}, message("held-shared")); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		var items []struct {
			Sender string `json:"sender"`
			Status string `json:"status"`
		}
		apiJSON(t, "GET", "http://"+adminA+"/api/v1/quarantine", &items)
		if len(items) == 1 && items[0].Sender == "holdme@example.org" && items[0].Status == "held" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A does not see B's quarantine: %+v", items)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
