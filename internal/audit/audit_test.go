package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func readEvents(t *testing.T, path string) []Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("line %d is not an event: %v: %q", len(evs)+1, err, sc.Text())
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

func openT(t *testing.T, path string) *Log {
	t.Helper()
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestRecordReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openT(t, path)
	at := time.Date(2026, 2, 3, 4, 5, 6, 7000, time.FixedZone("CET", 3600))
	want := []Event{
		{Time: at, Kind: KindBypassDecision, TraceID: "t-1", Actor: "smtp:192.0.2.7", Subject: "<bob@example.org>",
			Service: "https://opes.example.org/svc/spam", Decision: "honored", Reason: "out-of-band preference",
			Detail: map[string]string{"preference": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}},
		{Time: at, Kind: KindQuarantinePut, Subject: "01ARZ3NDEKTSV4RRFFQ69G5FAW"},
	}
	for _, e := range want {
		if err := l.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now().Add(-time.Second)
	if err := l.Record(Event{Kind: KindNDRSent, Subject: "queue-1"}); err != nil {
		t.Fatal(err)
	}
	got := readEvents(t, path)
	if len(got) != 3 {
		t.Fatalf("%d events, want 3", len(got))
	}
	for i, w := range want {
		w.Time = w.Time.UTC()
		if !reflect.DeepEqual(got[i], w) {
			t.Errorf("event %d =\n%+v\nwant\n%+v", i, got[i], w)
		}
	}
	if got[2].Time.Before(before) || got[2].Time.After(time.Now()) || got[2].Kind != KindNDRSent {
		t.Errorf("defaulted time: %+v", got[2])
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), `"subject":"<bob@example.org>"`) || !strings.Contains(string(raw), `"time":"2026-02-03T03:05:06.000007Z"`) {
		t.Errorf("unexpected encoding:\n%s", raw)
	}
	if strings.Contains(string(raw), `"reason":""`) {
		t.Errorf("empty fields are written:\n%s", raw)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&^0o640 != 0 {
		t.Errorf("mode %v allows more than 0640", fi.Mode().Perm())
	}
}

func TestAppendsToExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(`{"time":"2026-01-01T00:00:00Z","kind":"ndr-queued"}`+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	l := openT(t, path)
	if err := l.Record(Event{Kind: KindNDRFailed}); err != nil {
		t.Fatal(err)
	}
	got := readEvents(t, path)
	if len(got) != 2 || got[0].Kind != KindNDRQueued || got[1].Kind != KindNDRFailed {
		t.Errorf("events %+v", got)
	}
}

// TestNoForgedLines: whatever a client puts in a value stays inside its
// JSON string.
func TestNoForgedLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openT(t, path)
	evil := []string{
		"bob@example.org\r\n{\"time\":\"2026-01-01T00:00:00Z\",\"kind\":\"bypass-decision\",\"decision\":\"honored\"}",
		"x\ny\rz",
		"line\u2028separator\u2029para\u0085nel",
		"\x00\x1b[31mred",
		"\xff\xfeinvalid UTF-8",
		`"quoted" \ backslash </script>`,
	}
	for _, v := range evil {
		e := Event{Kind: KindBypassRequest, Subject: v, Reason: v, Detail: map[string]string{v: v}}
		if err := l.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "\n"); n != len(evil) {
		t.Fatalf("%d lines for %d records:\n%s", n, len(evil), raw)
	}
	if strings.ContainsAny(string(raw), "\r\u2028\u2029\x00\x1b") {
		t.Errorf("raw control or separator characters in the file:\n%q", raw)
	}
	got := readEvents(t, path)
	for i, v := range evil {
		if got[i].Kind != KindBypassRequest || got[i].Decision != "" {
			t.Errorf("record %d changed kind/decision: %+v", i, got[i])
		}
		want := string([]rune(v)) // each invalid byte becomes U+FFFD, as in encoding/json
		if got[i].Subject != want || got[i].Reason != want || got[i].Detail[want] != want {
			t.Errorf("record %d: value %q came back as %q", i, v, got[i].Subject)
		}
	}
}

// TestConcurrentWriters: goroutines on one Log and a second Log on the
// same file (as a second process would have) produce whole lines only.
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	logs := []*Log{openT(t, path), openT(t, path)}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := logs[w%2]
			for i := 0; i < each; i++ {
				err := l.Record(Event{Kind: KindPreferenceAdd, Subject: fmt.Sprintf("w%d-%d", w, i),
					Reason: strings.Repeat("r", 3000)})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for _, e := range readEvents(t, path) {
		if seen[e.Subject] || len(e.Reason) != 3000 {
			t.Errorf("duplicate or damaged record %q", e.Subject)
		}
		seen[e.Subject] = true
	}
	if len(seen) != writers*each {
		t.Errorf("%d records, want %d", len(seen), writers*each)
	}
}

func TestReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := openT(t, path)
	if err := l.Record(Event{Kind: KindQuarantineRelease, Subject: "1"}); err != nil {
		t.Fatal(err)
	}
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	// Until Reopen, records follow the renamed file.
	if err := l.Record(Event{Kind: KindQuarantineRelease, Subject: "2"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(Event{Kind: KindQuarantineDelete, Subject: "3"}); err != nil {
		t.Fatal(err)
	}
	subjects := func(evs []Event) (s []string) {
		for _, e := range evs {
			s = append(s, e.Subject)
		}
		return s
	}
	if got := subjects(readEvents(t, rotated)); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Errorf("rotated file has %v", got)
	}
	if got := subjects(readEvents(t, path)); !reflect.DeepEqual(got, []string{"3"}) {
		t.Errorf("new file has %v", got)
	}

	// A failed reopen keeps the old file.
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil { // the path is now a directory
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Error("Reopen onto a directory succeeded")
	}
	if err := l.Record(Event{Kind: KindQuarantineExpire, Subject: "4"}); err != nil {
		t.Fatalf("Record after a failed Reopen: %v", err)
	}
	if got := subjects(readEvents(t, rotated)); !reflect.DeepEqual(got, []string{"3", "4"}) {
		t.Errorf("after failed reopen the old file has %v", got)
	}
}

func TestCloseAndErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing", "audit.log")); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
	l, err := Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(Event{}); err == nil {
		t.Error("an event without kind was recorded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := l.Record(Event{Kind: KindNDRSent}); !errors.Is(err, ErrClosed) {
		t.Errorf("Record after Close: %v", err)
	}
	if err := l.Reopen(); !errors.Is(err, ErrClosed) {
		t.Errorf("Reopen after Close: %v", err)
	}
}

func TestHugeRecordBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openT(t, path)
	detail := map[string]string{}
	for i := 0; i < 100; i++ {
		detail[fmt.Sprint("header-", i)] = strings.Repeat("v", 2000)
	}
	if err := l.Record(Event{Kind: KindBypassRequest, Reason: strings.Repeat("é", 5000), Detail: detail}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if len(raw) > maxRecord {
		t.Errorf("record of %d bytes", len(raw))
	}
	got := readEvents(t, path)
	if len(got) != 1 || got[0].Detail["truncated"] == "" || got[0].Kind != KindBypassRequest {
		t.Errorf("truncated record: %+v", got)
	}
}

func BenchmarkRecord(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := Event{Kind: KindBypassDecision, TraceID: "t-1", Actor: "smtp:192.0.2.7", Subject: "bob@example.org",
		Service: "https://opes.example.org/svc/spam", Decision: "honored", Reason: "preference"}
	for b.Loop() {
		if err := l.Record(e); err != nil {
			b.Fatal(err)
		}
	}
}
