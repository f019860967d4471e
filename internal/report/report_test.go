package report

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func readLines(t *testing.T, path string) []opes.TransactionRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []opes.TransactionRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r opes.TransactionRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestWriterPrivacyAndReopen(t *testing.T) {
	dir := t.TempDir()
	rec := &opes.TransactionRecord{TraceID: "Q1", Sender: "alice@example.org", Size: 42,
		Recipients: []opes.RecipientInfo{{Addr: "bob@example.net"}, {Addr: "trap@example.net", Refused: true}},
		Outcome:    opes.OutcomeInfo{Stage: "eom", Verdict: "accept"}}
	want := map[Addresses][3]string{
		AddressesFull:   {"alice@example.org", "bob@example.net", "trap@example.net"},
		AddressesDomain: {"@example.org", "@example.net", "@example.net"},
		AddressesNone:   {"", "", ""},
	}
	for mode, w := range want {
		path := filepath.Join(dir, string(mode)+".jsonl")
		wr, err := Open(path, func(err error) { t.Error(err) })
		if err != nil {
			t.Fatal(err)
		}
		Redact{Level: mode, Next: wr}.Report(rec)
		_ = wr.Close()
		got := readLines(t, path)
		if len(got) != 1 || got[0].Sender != w[0] || got[0].Recipients[0].Addr != w[1] || got[0].Recipients[1].Addr != w[2] ||
			!got[0].Recipients[1].Refused || got[0].Size != 42 || got[0].TraceID != "Q1" {
			t.Errorf("%s: %+v", mode, got)
		}
	}
	if rec.Sender != "alice@example.org" {
		t.Error("Report changed the caller's record")
	}

	// Rotation: the file is moved away, Reopen starts a new one.
	path := filepath.Join(dir, "rot.jsonl")
	wr, err := Open(path, func(err error) { t.Error(err) })
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	wr.Report(rec)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := wr.Reopen(); err != nil {
		t.Fatal(err)
	}
	wr.Report(rec)
	if n1, n2 := len(readLines(t, path+".1")), len(readLines(t, path)); n1 != 1 || n2 != 1 {
		t.Errorf("after rotation: %d and %d lines", n1, n2)
	}
	if _, err := ParseAddresses("some"); err == nil {
		t.Error("bad addresses level accepted")
	}
}
