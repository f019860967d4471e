package callout

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// maxReplyLine is RFC 5321's reply line limit, CRLF included.
const maxReplyLine = 512

// ErrInvalidAnswer is wrapped by errors for answers that break the
// profile; the OCP transaction is ended with TE 400 (RFC 4037 §5).
var ErrInvalidAnswer = errors.New("callout: invalid answer from callout server")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidAnswer, fmt.Sprintf(format, args...))
}

// ParseSMTPError validates a reply a callout proposes, "ddd x.y.z text":
// a 4xx or 5xx code, an RFC 3463 enhanced code of the same class,
// printable US-ASCII only, at most 512 octets with CRLF. It returns the
// reply and the verdict kind (TempFail for 4xx, Reject for 5xx).
func ParseSMTPError(s string) (opes.Reply, opes.VerdictKind, error) {
	if len(s)+2 > maxReplyLine {
		return opes.Reply{}, 0, fmt.Errorf("SMTP-Error is longer than %d octets", maxReplyLine)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return opes.Reply{}, 0, fmt.Errorf("SMTP-Error has byte 0x%02x at offset %d: only printable US-ASCII on one line", c, i)
		}
	}
	if len(s) < 3 {
		return opes.Reply{}, 0, errors.New("SMTP-Error has no reply code")
	}
	code, err := strconv.Atoi(s[:3])
	if err != nil || s[0] < '1' {
		return opes.Reply{}, 0, fmt.Errorf("SMTP-Error %q does not start with a reply code", trunc(s))
	}
	var kind opes.VerdictKind
	switch code / 100 {
	case 4:
		kind = opes.TempFail
	case 5:
		kind = opes.Reject
	default:
		return opes.Reply{}, 0, fmt.Errorf("SMTP-Error code %d is not 4xx or 5xx", code)
	}
	rest, ok := strings.CutPrefix(s[3:], " ")
	if !ok {
		return opes.Reply{}, 0, fmt.Errorf("SMTP-Error %q: code not followed by a space", trunc(s))
	}
	enh, text, _ := strings.Cut(rest, " ")
	if err := opes.CheckEnhancedCode(code, enh); err != nil {
		return opes.Reply{}, 0, fmt.Errorf("SMTP-Error: %w", err)
	}
	return opes.Reply{Code: code, Enhanced: enh, Text: strings.TrimSpace(text)}, kind, nil
}

// verdictOf turns one decision into a verdict. Header changes and trace
// entries are handled by the caller; this checks the rest.
func verdictOf(d *ocp.Decision) (opes.Verdict, error) {
	v := opes.Verdict{Kind: opes.Continue}
	switch d.Advice {
	case "", ocp.AdviceContinue:
	case ocp.AdviceAccept:
		v.Kind = opes.Accept
	case ocp.AdviceReject:
		v.Kind = opes.Reject
	case ocp.AdviceDiscard:
		v.Kind = opes.Discard
	case ocp.AdviceQuarantine:
		v.Kind = opes.Quarantine
	case ocp.AdviceTempfail:
		v.Kind = opes.TempFail
	default:
		return v, invalid("unknown Advice %q", trunc(d.Advice))
	}
	if d.SMTPError != "" {
		// The proposed reply decides; Advice can only say less.
		r, kind, err := ParseSMTPError(d.SMTPError)
		if err != nil {
			return v, invalid("%v", err)
		}
		v.Kind, v.Reply = kind, r
	}
	for _, t := range []struct {
		name, val string
		dst       *string
	}{{"Action", d.Action, &v.Action}, {"Status", d.Status, &v.Status}} {
		if t.val == "" {
			continue
		}
		if len(t.val) > 32 || !opes.IsToken(t.val) {
			return v, invalid("%s %q is not a token of at most 32 octets", t.name, trunc(t.val))
		}
		*t.dst = t.val
	}
	v.Reason = opes.SanitizeText(d.Reason, 200)
	if d.ReplyText != "" && d.SMTPError == "" {
		if err := opes.CheckPrintable(d.ReplyText, 200); err != nil {
			return v, invalid("Reply-Text %v", err)
		}
		v.Reply.Text = d.ReplyText
	}
	return v, nil
}

// rank orders verdict kinds for combining the answers to several parts of
// one stage: the first refusal wins, then a hold, then accept.
func rank(k opes.VerdictKind) int {
	switch k {
	case opes.Reject, opes.TempFail, opes.Discard:
		return 3
	case opes.Quarantine:
		return 2
	case opes.Accept:
		return 1
	}
	return 0
}

// combine keeps the stronger of two verdicts, the earlier on a tie.
func combine(a, b opes.Verdict) opes.Verdict {
	if rank(b.Kind) > rank(a.Kind) {
		if b.Action == "" && a.Action != "" && rank(b.Kind) < 3 {
			b.Action = a.Action
		}
		return b
	}
	if a.Action == "" {
		a.Action = b.Action
	}
	if a.Status == "" {
		a.Status = b.Status
	}
	return a
}

// checkTrace syntax-checks trace entries a callout returned (RFC 3897
// §3.4); entries that do not parse are dropped.
func checkTrace(entries []string) (ok []opes.TraceEntry, bad int) {
	for _, e := range entries {
		if strings.ContainsAny(e, ",\r\n") {
			bad++
			continue
		}
		parsed, err := opes.ParseTraceList(e, 1)
		if err != nil {
			bad++
			continue
		}
		ok = append(ok, parsed...)
	}
	return ok, bad
}

// headerChanges turns the header parts of a decision into changes for
// Header.ApplyChange. Trace fields are refused: only the processor writes
// them (RFC 3897 §3.4).
func headerChanges(d *ocp.Decision) ([]opes.HeaderChange, []string, error) {
	var out []opes.HeaderChange
	var dropped []string
	trace := func(name string) bool {
		return strings.EqualFold(name, opes.FieldSystem) || strings.EqualFold(name, opes.FieldVia) || strings.EqualFold(name, opes.FieldBypass)
	}
	for _, e := range d.Change {
		if trace(e.Name) {
			dropped = append(dropped, e.Name)
			continue
		}
		out = append(out, opes.HeaderChange{Kind: opes.ChangeField, Name: e.Name, Index: e.Index, Value: e.Value})
	}
	for _, e := range d.Delete {
		if trace(e.Name) {
			dropped = append(dropped, e.Name)
			continue
		}
		out = append(out, opes.HeaderChange{Kind: opes.DeleteField, Name: e.Name, Index: e.Index})
	}
	added := func(param string, lines []string, kind opes.HeaderChangeKind) error {
		for _, line := range lines {
			c, err := addedField(param, line, kind)
			if err != nil {
				return err
			}
			if trace(c.Name) {
				dropped = append(dropped, c.Name)
				continue
			}
			out = append(out, c)
		}
		return nil
	}
	// Prepend-Header lists the fields top first; each insertion goes above
	// the one before, so they are applied bottom first.
	prepends := slices.Clone(d.PrependHeader)
	slices.Reverse(prepends)
	if err := added(ocp.ParamPrependHeader, prepends, opes.InsertField); err != nil {
		return nil, nil, err
	}
	if err := added(ocp.ParamAddHeader, d.AddHeader, opes.AppendField); err != nil {
		return nil, nil, err
	}
	return out, dropped, nil
}

// addedField reads one "Name: value" of Add-Header or Prepend-Header.
func addedField(param, line string, kind opes.HeaderChangeKind) (opes.HeaderChange, error) {
	name, value, ok := strings.Cut(line, ":")
	if !ok || name == "" {
		return opes.HeaderChange{}, invalid("%s %q is not \"Name: value\"", param, trunc(line))
	}
	return opes.HeaderChange{Kind: kind, Name: name, Value: strings.TrimLeft(value, " \t")}, nil
}

// checkAddr is the processor's envelope address check, done when the
// answer arrives so that a bad rewrite fails the stage that received it.
func checkAddr(a string) error {
	if len(a) > 512 {
		return errors.New("address longer than 512 octets")
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x21 || c == 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("address contains byte 0x%02x", c)
		}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
