package spamengine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/spamlevel"
)

// TestMarkingApply: the header changes and the verdict for every way a
// scanned message can leave a spam engine service without a refusal.
func TestMarkingApply(t *testing.T) {
	owned := []string{"X-Spam-Score", "X-Spam-Status", "X-Spam-Levels"}
	ours := []opes.HeaderField{{Name: "X-Spam-Score", Value: "7.0"}, {Name: "X-Spam-Status", Value: "Yes, score=7.0"}}
	tests := []struct {
		name    string
		subject string // "" = no Subject field
		fields  []opes.HeaderField
		prefix  string
		level   spamlevel.Level
		kind    opes.VerdictKind
		action  string
		want    string // the header afterwards
	}{
		{"nothing to do keeps the sender's fields", "hi", nil, "", spamlevel.Ham, opes.Continue, "analyzed",
			"Subject:hi\r\nX-Spam-Score:-100\r\nX-Spam-Levels:x\r\n"},
		{"ours replace every owned field", "hi", ours, "", spamlevel.Tag, opes.Continue, "header-added",
			"Subject:hi\r\nX-Spam-Score:7.0\r\nX-Spam-Status:Yes, score=7.0\r\n"},
		{"subject marked", "hi", ours, "[SPAM]", spamlevel.Tag, opes.Continue, "tagged",
			"Subject:[SPAM] hi\r\nX-Spam-Score:7.0\r\nX-Spam-Status:Yes, score=7.0\r\n"},
		{"subject marked without fields", "hi", nil, "[SPAM]", spamlevel.Tag, opes.Continue, "tagged",
			"Subject:[SPAM] hi\r\nX-Spam-Score:-100\r\nX-Spam-Levels:x\r\n"},
		{"no subject gets one", "", nil, "[SPAM]", spamlevel.Tag, opes.Continue, "tagged",
			"X-Spam-Score:-100\r\nX-Spam-Levels:x\r\nSubject:[SPAM]\r\n"},
		{"marked once only", "[spam] hi", ours, "[SPAM]", spamlevel.Tag, opes.Continue, "header-added",
			"Subject:[spam] hi\r\nX-Spam-Score:7.0\r\nX-Spam-Status:Yes, score=7.0\r\n"},
		{"quarantine keeps the changes", "hi", ours, "[SPAM]", spamlevel.Quarantine, opes.Quarantine, "quarantined",
			"Subject:[SPAM] hi\r\nX-Spam-Score:7.0\r\nX-Spam-Status:Yes, score=7.0\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := &opes.Transaction{Header: opes.NewHeader()}
			if tt.subject != "" {
				must(t, tx.Header.Add("Subject", tt.subject))
			}
			must(t, tx.Header.Add("X-Spam-Score", "-100"))
			must(t, tx.Header.Add("X-Spam-Levels", "x"))
			m := Marking{Engine: "spamd", Owned: owned, Fields: tt.fields, SubjectPrefix: tt.prefix}
			v, err := m.Apply(tx, tt.level, "spam score 7.0")
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != tt.kind || v.Action != tt.action || v.Reason != "spam score 7.0" {
				t.Errorf("verdict %+v, want %v/%s", v, tt.kind, tt.action)
			}
			// FormatHeader writes values as stored: an added value has no
			// leading space.
			if got := opes.FormatHeader(tx.Header.Fields()); got != tt.want {
				t.Errorf("header\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// TestMarkingApplyError: a field the header refuses is an error naming
// the engine and the field, never a verdict.
func TestMarkingApplyError(t *testing.T) {
	tx := &opes.Transaction{Header: opes.NewHeader()}
	m := Marking{Engine: "rspamd", Fields: []opes.HeaderField{{Name: "X-Spam-Status", Value: "Yes"}, {Name: "Bad Name", Value: "x"}}}
	if _, err := m.Apply(tx, spamlevel.Tag, "r"); err == nil || !strings.HasPrefix(err.Error(), "rspamd: add Bad Name: ") {
		t.Errorf("err = %v", err)
	}
}

func TestRefuse(t *testing.T) {
	v := Refuse("spam score 20.0", "Message refused as spam (score 20.0)")
	if v.Kind != opes.Reject || v.Action != "rejected" || v.Reason != "spam score 20.0" ||
		v.Reply.Enhanced != "5.7.1" || v.Reply.Text != "Message refused as spam (score 20.0)" {
		t.Errorf("verdict %+v", v)
	}
}

func TestRecipients(t *testing.T) {
	tx := &opes.Transaction{Recipients: []*opes.Recipient{
		{Address: opes.Address{Addr: "a@example.net"}},
		{Address: opes.Address{Addr: "refused@example.net"}, Refused: true},
		{Address: opes.Address{Addr: "b@example.net"}},
	}}
	if got := strings.Join(Recipients(tx), " "); got != "a@example.net b@example.net" {
		t.Errorf("got %q", got)
	}
	if got := Recipients(&opes.Transaction{}); got != nil {
		t.Errorf("no recipients: got %q", got)
	}
}

func TestCallError(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{errors.New("connection refused"), "spamd 127.0.0.1:783: connect: connection refused"},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), "spamd 127.0.0.1:783: connect: no answer within 2s: read: i/o timeout"},
		{context.DeadlineExceeded, "spamd 127.0.0.1:783: connect: no answer within 2s: context deadline exceeded"},
	}
	for _, tt := range tests {
		err := CallError("spamd", "127.0.0.1:783", "connect", 2*time.Second, tt.err)
		if err.Error() != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("got %q, want %q wrapping the cause", err, tt.want)
		}
	}
}

func TestClip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"SPAMD/1.1 0 EX_OK", "SPAMD/1.1 0 EX_OK"},
		{"a\r\nb\x00\xff", "a??b??"},
		{strings.Repeat("x", 64), strings.Repeat("x", 64)},
		{strings.Repeat("x", 65), strings.Repeat("x", 64) + "..."},
	}
	for _, tt := range tests {
		if got := Clip(tt.in); got != tt.want {
			t.Errorf("Clip(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormatScore(t *testing.T) {
	for f, want := range map[float64]string{0: "0.0", 7.25: "7.2", 7.26: "7.3", -1.5: "-1.5", 1000: "1000.0"} {
		if got := FormatScore(f); got != want {
			t.Errorf("FormatScore(%v) = %q, want %q", f, got, want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
