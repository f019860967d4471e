// Package spamlevel decides what a spam score means for a message with
// several recipients who may each have their own thresholds: the spam
// services (spamd, rspamd) share it so that both apply the same rule.
//
// A score belongs to the message, and a milter can refuse or hold only
// the message as a whole once the body is in: after RCPT was accepted, a
// single recipient can no longer be refused without refusing everyone,
// and deleting him from the envelope would be accept-then-drop (PROFILE
// §3). So the per-recipient levels combine into one decision:
//
//   - Reject only when every recipient's level is reject.
//   - Quarantine when every recipient's level is quarantine or reject:
//     nobody asked for the message to be delivered.
//   - Otherwise deliver it, tagged (header fields, Subject mark) when at
//     least one recipient's level is tag or above: the one copy everybody
//     gets carries the strictest mark, and the per-class levels go into a
//     header field (HeaderValue) that a delivery filter (Sieve) can act on
//     for the recipients whose own level was quarantine or reject.
package spamlevel

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// Level is what a score means for one recipient, or for the message.
type Level uint8

// Levels, in increasing strictness.
const (
	Ham Level = iota
	Tag
	Quarantine
	Reject
)

var levelNames = [...]string{"ham", "tag", "quarantine", "reject"}

func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// MaxScore bounds configured thresholds.
const MaxScore = 1e6

// Set holds the thresholds of one recipient class. Zero means "not set
// here": the engine's own judgement decides that level (see Level).
type Set struct {
	Tag, Quarantine, Reject float64
}

// Level is the level of score for this set. engine is what the engine
// itself concluded (rspamd's action; for spamd Tag when it says spam); a
// threshold that is set replaces the engine's judgement for its level:
//
//	reject:     score >= Reject,     or engine == Reject when Reject is 0
//	quarantine: score >= Quarantine, or engine == Quarantine when 0
//	tag:        score >= Tag,        or engine >= Tag when Tag is 0
//
// and the strictest level that holds wins. An engine reject above a
// raised local reject_score therefore still tags the message.
func (s Set) Level(score float64, engine Level) Level {
	switch {
	case s.Reject > 0 && score >= s.Reject, s.Reject == 0 && engine == Reject:
		return Reject
	case s.Quarantine > 0 && score >= s.Quarantine, s.Quarantine == 0 && engine == Quarantine:
		return Quarantine
	case s.Tag > 0 && score >= s.Tag, s.Tag == 0 && engine >= Tag:
		return Tag
	}
	return Ham
}

// validate checks the range and the order of the thresholds that are
// set: a lower level at or above a stricter one would never apply.
func (s Set) validate() error {
	for _, t := range []struct {
		field string
		v     float64
	}{{"tag_score", s.Tag}, {"quarantine_score", s.Quarantine}, {"reject_score", s.Reject}} {
		if math.IsNaN(t.v) || t.v < 0 || t.v > MaxScore {
			return opes.FieldErrorf(t.field, "%v is not a score between 0 (off) and %g", t.v, float64(MaxScore))
		}
	}
	if s.Quarantine > 0 && s.Reject > 0 && s.Quarantine >= s.Reject {
		return opes.FieldErrorf("quarantine_score", "%g is not below reject_score %g: reject wins, so the quarantine would never apply", s.Quarantine, s.Reject)
	}
	for _, hi := range []struct {
		field string
		v     float64
	}{{"quarantine_score", s.Quarantine}, {"reject_score", s.Reject}} {
		if s.Tag > 0 && hi.v > 0 && s.Tag >= hi.v {
			return opes.FieldErrorf("tag_score", "%g is not below %s %g: the stricter level wins, so tagging would never apply", s.Tag, hi.field, hi.v)
		}
	}
	return nil
}

// RecipientOptions is one [[service.options.recipient]] table. A score
// that is not given is the service's; 0 hands the level to the engine.
type RecipientOptions struct {
	// Name labels the class in the per-recipient header field; default
	// "recipient-N" (N = position in the list).
	Name            string   `toml:"name"`
	Match           []string `toml:"match"` // "user@example.org" or "@example.net"
	TagScore        *float64 `toml:"tag_score"`
	QuarantineScore *float64 `toml:"quarantine_score"`
	RejectScore     *float64 `toml:"reject_score"`
}

// DefaultName is the class of recipients no entry matches.
const DefaultName = "default"

// Bounds of the recipient table: it is searched for every recipient.
const (
	maxEntries = 100
	maxMatches = 1000
	maxName    = 32
	maxAddr    = 320
)

type entry struct {
	name  string
	match []string // lower case
	set   Set
}

// Table maps recipients to threshold sets.
type Table struct {
	def     Set
	entries []entry
}

// NewTable validates the service-wide set and the recipient entries. Errors
// are *opes.FieldError naming the key: "reject_score",
// "recipient[2].match[1]".
func NewTable(def Set, recipients []RecipientOptions) (*Table, error) {
	if err := def.validate(); err != nil {
		return nil, err
	}
	t := &Table{def: def}
	if len(recipients) > maxEntries {
		return nil, opes.FieldErrorf("recipient", "%d entries: at most %d", len(recipients), maxEntries)
	}
	names := map[string]bool{DefaultName: true}
	total := 0
	for i, ro := range recipients {
		e, err := compileEntry(i+1, def, ro)
		if err != nil {
			var fe *opes.FieldError
			if errors.As(err, &fe) {
				return nil, &opes.FieldError{Field: fmt.Sprintf("recipient[%d].%s", i+1, fe.Field), Err: fe.Err}
			}
			return nil, &opes.FieldError{Field: fmt.Sprintf("recipient[%d]", i+1), Err: err}
		}
		if names[e.name] {
			return nil, opes.FieldErrorf(fmt.Sprintf("recipient[%d].name", i+1), "%q is used twice (or is the reserved %q)", e.name, DefaultName)
		}
		names[e.name] = true
		if total += len(e.match); total > maxMatches {
			return nil, opes.FieldErrorf("recipient", "more than %d match entries in all", maxMatches)
		}
		t.entries = append(t.entries, e)
	}
	return t, nil
}

func compileEntry(n int, def Set, ro RecipientOptions) (entry, error) {
	e := entry{name: ro.Name, set: def}
	if e.name == "" {
		e.name = fmt.Sprintf("recipient-%d", n)
	} else if err := checkName(e.name); err != nil {
		return e, &opes.FieldError{Field: "name", Err: err}
	}
	if len(ro.Match) == 0 {
		return e, opes.FieldErrorf("match", `is required: addresses ("joe@example.org") or domains ("@example.net")`)
	}
	for i, m := range ro.Match {
		m = strings.ToLower(strings.TrimSpace(m))
		if err := checkPattern(m); err != nil {
			return e, &opes.FieldError{Field: fmt.Sprintf("match[%d]", i+1), Err: err}
		}
		e.match = append(e.match, m)
	}
	if ro.TagScore != nil {
		e.set.Tag = *ro.TagScore
	}
	if ro.QuarantineScore != nil {
		e.set.Quarantine = *ro.QuarantineScore
	}
	if ro.RejectScore != nil {
		e.set.Reject = *ro.RejectScore
	}
	if ro.TagScore == nil && ro.QuarantineScore == nil && ro.RejectScore == nil {
		return e, opes.FieldErrorf("reject_score", "tag_score, quarantine_score or reject_score is required: an entry without one changes nothing")
	}
	return e, e.set.validate()
}

// checkName keeps a class name one token: it goes into a header field.
func checkName(s string) error {
	if len(s) > maxName {
		return fmt.Errorf("%q is longer than %d octets", s, maxName)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q has %q: only letters, digits, '-', '_' and '.' are allowed", s, c)
		}
	}
	return nil
}

// checkPattern accepts "local@domain" and "@domain", the forms of
// [consent] recipients.
func checkPattern(m string) error {
	at := strings.LastIndexByte(m, '@')
	switch {
	case at < 0:
		return fmt.Errorf("%q is neither an address nor \"@domain\"", m)
	case at == len(m)-1:
		return fmt.Errorf("%q has no domain", m)
	case len(m) > maxAddr:
		return fmt.Errorf("is longer than %d octets", maxAddr)
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; c <= 0x20 || c > 0x7e || c == '<' || c == '>' {
			return fmt.Errorf("%q has byte 0x%02x", m, c)
		}
	}
	return nil
}

// PerRecipient reports whether any recipient entry is configured.
func (t *Table) PerRecipient() bool { return len(t.entries) > 0 }

// Default is the service-wide set.
func (t *Table) Default() Set { return t.def }

// For returns the class of addr: the first entry with a matching address
// or domain, else DefaultName with the service-wide set.
func (t *Table) For(addr string) (name string, s Set) {
	addr = strings.ToLower(addr)
	at := strings.LastIndexByte(addr, '@')
	for _, e := range t.entries {
		for _, m := range e.match {
			if m == addr || (at >= 0 && m[0] == '@' && m == addr[at:]) {
				return e.name, e.set
			}
		}
	}
	return DefaultName, t.def
}

// Class is the level of one recipient class for one message.
type Class struct {
	Name  string
	Level Level
}

// Decision is the outcome for one message.
type Decision struct {
	Level   Level   // what happens to the message (see the package comment)
	Classes []Class // the classes of the recipients, in order of first appearance
}

// Decide combines the levels of the recipients' classes for score.
// Without recipients (none accepted, which the processor does not let
// reach the end of data) the service-wide set decides.
func (t *Table) Decide(score float64, engine Level, recipients []string) Decision {
	var d Decision
	seen := map[string]bool{}
	for _, r := range recipients {
		name, set := t.For(r)
		if seen[name] {
			continue
		}
		seen[name] = true
		d.Classes = append(d.Classes, Class{Name: name, Level: set.Level(score, engine)})
	}
	if len(d.Classes) == 0 {
		d.Classes = []Class{{Name: DefaultName, Level: t.def.Level(score, engine)}}
	}
	lo, hi := Reject, Ham
	for _, c := range d.Classes {
		lo, hi = min(lo, c.Level), max(hi, c.Level)
	}
	switch {
	case lo >= Quarantine:
		d.Level = lo // all reject, or all at least quarantine
	case hi >= Tag:
		d.Level = Tag
	default:
		d.Level = Ham
	}
	return d
}

// HeaderValue is the per-class result for a header field named name:
// "default=tag; strict=reject", folded after ';' to keep lines short
// (101 classes of 32-octet names would not fit in one 998-octet line). It
// names classes, never recipients: the field reaches every recipient, and
// addresses would disclose Bcc.
func (d Decision) HeaderValue(name string) string {
	var b strings.Builder
	n := len(name) + 2
	for i, c := range d.Classes {
		part := c.Name + "=" + c.Level.String()
		if i > 0 {
			b.WriteByte(';')
			n++
			if n+1+len(part) > 78 {
				b.WriteString("\r\n\t")
				n = 1
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(part)
		n += len(part)
	}
	return b.String()
}
