package integration

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// TestTransactionRecordsThroughPostfix: one JSON line per transaction,
// with the Postfix queue id, the size counted by the processor and the
// refused recipient, addresses reduced to their domain as configured.
func TestTransactionRecordsThroughPostfix(t *testing.T) {
	t.Parallel()
	records := filepath.Join(TempDir(t), "tx.jsonl")
	policy := `
[system]
uri = "` + itSystem + `"
[report]
transactions = "` + records + `"
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

	var recs []opes.TransactionRecord
	deadline := time.Now().Add(5 * time.Second)
	for len(recs) == 0 && time.Now().Before(deadline) {
		recs = readRecords(t, records)
		time.Sleep(50 * time.Millisecond)
	}
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
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
