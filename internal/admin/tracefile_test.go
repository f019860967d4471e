package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/report"
	"github.com/opesmilter/opes-milter/opes"
)

// writeRecords writes transaction records the way the daemon does.
func writeRecords(t testing.TB, path string, ids ...string) {
	t.Helper()
	w, err := report.Open(path, func(err error) { t.Error(err) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i, id := range ids {
		w.Report(&opes.TransactionRecord{TraceID: id, QueueID: fmt.Sprintf("Q%d", i), Start: time.Unix(1700000000, 0).UTC(),
			Sender: "a@example.org", Recipients: []opes.RecipientInfo{{Addr: "b@example.net"}},
			Outcome: opes.OutcomeInfo{Stage: "eom", Verdict: "accept"}})
	}
}

func TestTraceFileLookup(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "transactions.jsonl")
	tf := TraceFile{Path: path}
	if recs, err := tf.Lookup(ctx, "X"); err != nil || recs != nil {
		t.Fatalf("missing file: %v %v", recs, err)
	}
	var ids []string
	for i := range 500 {
		ids = append(ids, fmt.Sprintf("T%04d", i))
	}
	ids = append(ids, "T0007") // a second record for one id
	writeRecords(t, path, ids...)

	recs, err := tf.Lookup(ctx, "T0007")
	if err != nil || len(recs) != 2 {
		t.Fatalf("T0007: %d records, %v", len(recs), err)
	}
	var rec opes.TransactionRecord
	if err := json.Unmarshal(recs[1], &rec); err != nil || rec.TraceID != "T0007" || rec.QueueID != "Q500" {
		t.Errorf("second record: %+v %v", rec, err)
	}
	// An id that is a substring of others matches only itself.
	if recs, _ := tf.Lookup(ctx, "T000"); len(recs) != 0 {
		t.Errorf("substring matched %d records", len(recs))
	}
	// The id appearing in another field is no match.
	if recs, _ := tf.Lookup(ctx, "Q7"); len(recs) != 0 {
		t.Errorf("queue id matched as trace id")
	}

	// Bounded: at most MaxMatches records, and only the newest MaxBytes.
	if recs, _ := (TraceFile{Path: path, MaxMatches: 1}).Lookup(ctx, "T0007"); len(recs) != 1 {
		t.Errorf("MaxMatches 1: %d", len(recs))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	lineLen := fi.Size() / int64(len(ids))
	small := TraceFile{Path: path, MaxBytes: 10*lineLen + lineLen/2}
	if recs, _ := small.Lookup(ctx, "T0003"); len(recs) != 0 {
		t.Errorf("a record outside the window was found")
	}
	if recs, _ := small.Lookup(ctx, "T0495"); len(recs) != 1 {
		t.Errorf("a record inside the window: %d", len(recs))
	}
	// The partial first line of the window is skipped, not misparsed.
	if recs, _ := small.Lookup(ctx, "T0489"); len(recs) != 0 {
		t.Errorf("the cut first line matched")
	}
	// A cancelled context stops the scan.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tf.Lookup(cctx, "T0001"); err == nil {
		t.Error("cancelled lookup succeeded")
	}
}

func TestTraceFileHostileContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "transactions.jsonl")
	huge := `{"trace_id":"BIG","x":"` + strings.Repeat("a", maxRecordLine+10) + `"}`
	content := strings.Join([]string{
		`not json BIG`,
		huge,
		`{"trace_id":"BIG","n":1}`,
		`{"trace_id":["BIG"]}`,
		`{"trace_id":"BIG","n":2}`, // no newline at the end
	}, "\n")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := TraceFile{Path: path}.Lookup(context.Background(), "BIG")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || string(recs[0]) != `{"trace_id":"BIG","n":1}` || string(recs[1]) != `{"trace_id":"BIG","n":2}` {
		t.Errorf("records: %q", recs)
	}
}

func BenchmarkTraceFileLookup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "transactions.jsonl")
	var ids []string
	for i := range 20000 {
		ids = append(ids, fmt.Sprintf("T%06d", i))
	}
	writeRecords(b, path, ids...)
	tf := TraceFile{Path: path}
	b.ResetTimer()
	for b.Loop() {
		if recs, err := tf.Lookup(context.Background(), "T010000"); err != nil || len(recs) != 1 {
			b.Fatal(recs, err)
		}
	}
}
