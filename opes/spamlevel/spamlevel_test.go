package spamlevel

import (
	"errors"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func f(v float64) *float64 { return &v }

func TestSetLevel(t *testing.T) {
	tests := []struct {
		name   string
		set    Set
		score  float64
		engine Level
		want   Level
	}{
		{"engine decides all", Set{}, 16, Reject, Reject},
		{"engine tag", Set{}, 7, Tag, Tag},
		{"engine quarantine", Set{}, 7, Quarantine, Quarantine},
		{"engine ham", Set{}, 1, Ham, Ham},
		{"raised reject tags", Set{Reject: 20}, 16, Reject, Tag},
		{"raised reject, raised tag", Set{Reject: 20, Tag: 17}, 16, Reject, Ham},
		{"lowered reject", Set{Reject: 10}, 12, Tag, Reject},
		{"at the threshold", Set{Reject: 10}, 10, Ham, Reject},
		{"quarantine local", Set{Quarantine: 10, Reject: 20}, 12, Tag, Quarantine},
		{"quarantine local, engine reject still rejects below", Set{Quarantine: 10}, 16, Reject, Reject},
		{"tag local below engine", Set{Tag: 3}, 4, Ham, Tag},
		{"tag local above engine", Set{Tag: 10}, 7, Tag, Ham},
		{"negative score", Set{Tag: 1}, -5, Ham, Ham},
	}
	for _, tt := range tests {
		if got := tt.set.Level(tt.score, tt.engine); got != tt.want {
			t.Errorf("%s: Level(%v, %v) = %v, want %v", tt.name, tt.score, tt.engine, got, tt.want)
		}
	}
}

func table(t *testing.T, def Set, entries ...RecipientOptions) *Table {
	t.Helper()
	tb, err := NewTable(def, entries)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestFor(t *testing.T) {
	tb := table(t, Set{Reject: 15},
		RecipientOptions{Name: "joe", Match: []string{"Joe@Example.org"}, RejectScore: f(5)},
		RecipientOptions{Match: []string{"@example.net", "@Example.ORG"}, TagScore: f(2)},
	)
	for addr, want := range map[string]string{
		"joe@example.org":     "joe", // first entry wins over the domain
		"JOE@EXAMPLE.ORG":     "joe",
		"ann@example.org":     "recipient-2",
		"bob@example.net":     "recipient-2",
		"bob@sub.example.net": DefaultName, // no subdomains: the [consent] forms
		"bob@example.com":     DefaultName,
		"":                    DefaultName,
	} {
		if name, _ := tb.For(addr); name != want {
			t.Errorf("For(%q) = %s, want %s", addr, name, want)
		}
	}
	// Inheritance: a score not given is the service's.
	if _, s := tb.For("ann@example.org"); s != (Set{Tag: 2, Reject: 15}) {
		t.Errorf("inherited set = %+v", s)
	}
	if _, s := tb.For("joe@example.org"); s != (Set{Reject: 5}) {
		t.Errorf("joe's set = %+v", s)
	}
}

func TestDecide(t *testing.T) {
	tb := table(t, Set{Reject: 15, Quarantine: 10, Tag: 5},
		RecipientOptions{Name: "strict", Match: []string{"@strict.example"}, RejectScore: f(6), QuarantineScore: f(0), TagScore: f(3)},
		RecipientOptions{Name: "lenient", Match: []string{"@lenient.example"}, RejectScore: f(0), QuarantineScore: f(0), TagScore: f(20)},
		RecipientOptions{Name: "hold", Match: []string{"@hold.example"}, QuarantineScore: f(4), TagScore: f(0)},
	)
	const (
		strict  = "a@strict.example"
		lenient = "b@lenient.example"
		hold    = "c@hold.example"
		other   = "d@other.example"
	)
	tests := []struct {
		name    string
		score   float64
		engine  Level
		rcpts   []string
		want    Level
		classes string
	}{
		{"one class reject", 7, Ham, []string{strict}, Reject, "strict=reject"},
		{"all reject", 16, Ham, []string{strict, other}, Reject, "strict=reject; default=reject"},
		{"one delivers: tag", 7, Ham, []string{strict, other}, Tag, "strict=reject; default=tag"},
		{"one wants it clean: still tagged", 7, Ham, []string{strict, lenient}, Tag, "strict=reject; lenient=ham"},
		{"lenient alone", 7, Tag, []string{lenient}, Ham, "lenient=ham"},
		{"0 hands the level to the engine", 7, Reject, []string{lenient}, Reject, "lenient=reject"},
		{"reject and quarantine: quarantine", 7, Ham, []string{strict, hold}, Quarantine, "strict=reject; hold=quarantine"},
		{"quarantine and delivery: tag", 11, Ham, []string{hold, lenient}, Tag, "hold=quarantine; lenient=ham"},
		{"everyone ham", 1, Ham, []string{strict, other, lenient}, Ham, "strict=ham; default=ham; lenient=ham"},
		{"duplicates collapse", 4, Ham, []string{strict, "x@strict.example", other}, Tag, "strict=tag; default=ham"},
		{"no recipients: default set", 12, Ham, nil, Quarantine, "default=quarantine"},
	}
	for _, tt := range tests {
		d := tb.Decide(tt.score, tt.engine, tt.rcpts)
		if d.Level != tt.want || d.HeaderValue("X") != tt.classes {
			t.Errorf("%s: level %v %q, want %v %q", tt.name, d.Level, d.HeaderValue("X"), tt.want, tt.classes)
		}
	}
}

func TestHeaderValueFolds(t *testing.T) {
	var d Decision
	for i := 0; i < 101; i++ {
		d.Classes = append(d.Classes, Class{Name: strings.Repeat("n", 30) + string(rune('a'+i%26)), Level: Quarantine})
	}
	v := d.HeaderValue("X-Spam-Levels")
	lines := strings.Split(v, "\r\n")
	for i, line := range lines {
		if n := len(line) + len("X-Spam-Levels: ")*btoi(i == 0); n > 78 {
			t.Fatalf("line %d of %d octets: %q", i, n, line)
		}
		if i > 0 && !strings.HasPrefix(line, "\t") {
			t.Fatalf("continuation line without white space: %q", line)
		}
	}
	if len(lines) < 50 {
		t.Errorf("%d lines for 101 classes", len(lines))
	}
	if strings.Count(v, "=quarantine") != 101 {
		t.Errorf("lost classes: %q", v)
	}
}

func TestNewTableErrors(t *testing.T) {
	tests := []struct {
		name    string
		def     Set
		entries []RecipientOptions
		field   string
		msg     string
	}{
		{"negative", Set{Reject: -1}, nil, "reject_score", "not a score"},
		{"quarantine above reject", Set{Quarantine: 10, Reject: 8}, nil, "quarantine_score", "never apply"},
		{"tag above quarantine", Set{Tag: 12, Quarantine: 10}, nil, "tag_score", "never apply"},
		{"no match", Set{}, []RecipientOptions{{RejectScore: f(5)}}, "recipient[1].match", "is required"},
		{"bad match", Set{}, []RecipientOptions{{Match: []string{"example.net"}, RejectScore: f(5)}}, "recipient[1].match[1]", "neither"},
		{"empty domain", Set{}, []RecipientOptions{{Match: []string{"@"}, RejectScore: f(5)}}, "recipient[1].match[1]", "no domain"},
		{"space in match", Set{}, []RecipientOptions{{Match: []string{"a b@example.net"}, RejectScore: f(5)}}, "recipient[1].match[1]", "0x20"},
		{"no score", Set{}, []RecipientOptions{{Match: []string{"@example.net"}}}, "recipient[1].reject_score", "is required"},
		{"inherited order", Set{Reject: 10}, []RecipientOptions{{Match: []string{"@example.net"}, TagScore: f(12)}}, "recipient[1].tag_score", "never apply"},
		{"bad name", Set{}, []RecipientOptions{{Name: "a=b", Match: []string{"@example.net"}, TagScore: f(1)}}, "recipient[1].name", "only letters"},
		{"reserved name", Set{}, []RecipientOptions{{Name: "default", Match: []string{"@example.net"}, TagScore: f(1)}}, "recipient[1].name", "reserved"},
		{"twice", Set{}, []RecipientOptions{
			{Name: "x", Match: []string{"@example.net"}, TagScore: f(1)},
			{Name: "x", Match: []string{"@example.org"}, TagScore: f(1)},
		}, "recipient[2].name", "twice"},
	}
	for _, tt := range tests {
		_, err := NewTable(tt.def, tt.entries)
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: err = %v, want a FieldError on %s containing %q", tt.name, err, tt.field, tt.msg)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
