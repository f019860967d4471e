package integration

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// TestTransactionRecordsThroughPostfix: one JSON line per transaction,
// with the Postfix queue id, the size counted by the processor and the
// refused recipient, addresses reduced to their domain as configured.
func TestTransactionRecordsThroughPostfix(t *testing.T) {
	t.Parallel()
	dir := TempDir(t)
	records, incidents := filepath.Join(dir, "tx.jsonl"), filepath.Join(dir, "incidents.jsonl")
	var mu sync.Mutex
	var hooked []opes.TransactionRecord
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rec opes.TransactionRecord
		if err := json.NewDecoder(r.Body).Decode(&rec); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		mu.Lock()
		hooked = append(hooked, rec)
		mu.Unlock()
	}))
	defer hook.Close()
	policy := `
[system]
uri = "` + itSystem + `"
[consent]
recipients = ["@example.net", "@example.org", "@example.test", "@x.test", "@y.test"]
[report]
transactions = "` + records + `"
incidents = "` + incidents + `"
webhook = "` + hook.URL + `"
addresses = "domain"
measure_size = true
[[service]]
name = "access"
kind = "acl"
[[service.options.entry]]
stage = "rcpt"
action = "deny"
recipient = ["trap@example.net"]
[[rule]]
name = "all"
run = ["access"]
`
	sink, _, addr := mtaStack(t, "postfix", MilterOptions{Policy: policy})
	msg := message("recorded")
	tr := SendMail(t, addr, "alice@example.org", []string{"trap@example.net", "bob@example.net"}, msg)
	if !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	dr, _ := tr.DataReply()
	qid := regexp.MustCompile(`queued as ([0-9A-Za-z]+)`).FindStringSubmatch(dr.Raw)
	sink.WaitDump(t, HasHeader("Subject", "recorded"), 10*time.Second)
	// A clean message: a record, but no incident.
	if tr := SendMail(t, addr, "alice@example.org", []string{"bob@example.net"}, message("clean")); !tr.Accepted() {
		t.Fatalf("clean message:\n%s", tr)
	}
	sink.WaitDump(t, HasHeader("Subject", "clean"), 10*time.Second)

	var recs []opes.TransactionRecord
	deadline := time.Now().Add(5 * time.Second)
	for len(recs) < 2 && time.Now().Before(deadline) {
		recs = readRecords(t, records)
		time.Sleep(50 * time.Millisecond)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	// Only the transaction with the refused recipient is an incident, in
	// the incidents file and at the webhook.
	if inc := readRecords(t, incidents); len(inc) != 1 || inc[0].TraceID != recs[0].TraceID {
		t.Errorf("incidents %+v", inc)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(hooked)
		mu.Unlock()
		if n > 0 {
			break
		}
	}
	mu.Lock()
	if len(hooked) != 1 || hooked[0].TraceID != recs[0].TraceID || hooked[0].Sender != "@example.org" {
		t.Errorf("webhook got %+v", hooked)
	}
	mu.Unlock()
	r := recs[0]
	if qid == nil || r.QueueID != qid[1] {
		t.Errorf("queue id %q, reply %v", r.QueueID, qid)
	}
	if r.Sender != "@example.org" || len(r.Recipients) != 2 || r.Recipients[0] != (opes.RecipientInfo{Addr: "@example.net", Refused: true}) ||
		r.Recipients[1] != (opes.RecipientInfo{Addr: "@example.net"}) {
		t.Errorf("envelope in record: %+v %+v", r.Sender, r.Recipients)
	}
	if r.Outcome.Verdict != "accept" || r.Outcome.Stage != "eom" || r.Client != "127.0.0.1" {
		t.Errorf("record %+v", r)
	}
	// Postfix adds Date and Message-ID only to messages without them;
	// the body as sent is the size the MTA passed on.
	body := msg[strings.Index(string(msg), "\n\n")+2:]
	if r.Size != int64(len(strings.ReplaceAll(string(body), "\n", "\r\n"))) {
		t.Errorf("size %d, body %d octets (CRLF)", r.Size, len(body))
	}
	if len(r.Services) != 1 || r.Services[0].Action != "rejected" {
		t.Errorf("services %+v", r.Services)
	}
}

func readRecords(t *testing.T, path string) []opes.TransactionRecord {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []opes.TransactionRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r opes.TransactionRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}
