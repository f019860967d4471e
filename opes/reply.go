package opes

import (
	"fmt"
	"strconv"
	"strings"
)

// Limits of replies (PROFILE §3, RFC 5321 §4.5.3.1.5, libmilter).
const (
	maxReplyLine  = 512 // octets per line including the code prefix and CRLF
	maxReplyLines = 32
	maxReplyText  = 200 // human text of the first line
)

// SMTPReply is a complete multi-line reply: the same code and enhanced
// code on every line.
type SMTPReply struct {
	Code     int
	Enhanced string
	Lines    []string // text after "ddd-x.y.z "
}

// String renders the reply as it goes on the wire, lines joined by CRLF.
func (r *SMTPReply) String() string {
	var b strings.Builder
	for i, l := range r.Lines {
		sep := "-"
		if i == len(r.Lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%d%s%s %s", r.Code, sep, r.Enhanced, l)
		if i < len(r.Lines)-1 {
			b.WriteString("\r\n")
		}
	}
	return b.String()
}

// MilterText is the reason string for go-milter's RejectWithCodeAndReason:
// the enhanced code, then the lines joined by "\n" (the library repeats
// the codes on every line).
func (r *SMTPReply) MilterText() string {
	return r.Enhanced + " " + strings.Join(r.Lines, "\n")
}

// validReplyCodes checks a configured or service-proposed reply: code
// 4xx/5xx matching the verdict, enhanced code of the same class.
func validReplyCodes(code int, enhanced string, kind VerdictKind) error {
	switch kind {
	case TempFail:
		if code < 400 || code > 499 {
			return fmt.Errorf("tempfail reply code %d is not 4xx", code)
		}
	default:
		if code < 500 || code > 599 {
			return fmt.Errorf("reject reply code %d is not 5xx", code)
		}
	}
	return CheckEnhancedCode(code, enhanced)
}

// CheckEnhancedCode validates an RFC 3463 code against a reply code.
func CheckEnhancedCode(code int, enhanced string) error {
	parts := strings.Split(enhanced, ".")
	if len(parts) != 3 {
		return fmt.Errorf("enhanced code %q is not class.subject.detail", enhanced)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || p == "" || len(p) > 3 || n < 0 || (i == 0 && len(p) != 1) {
			return fmt.Errorf("enhanced code %q is malformed", enhanced)
		}
	}
	if parts[0] != strconv.Itoa(code/100) {
		return fmt.Errorf("enhanced code %q does not match reply code %d", enhanced, code)
	}
	return nil
}

// SanitizeText makes text safe for an SMTP reply or a log: printable
// US-ASCII only, white space collapsed, at most max octets. Anything else
// becomes '?', so wire values can never inject CRLF or NUL.
func SanitizeText(s string, max int) string {
	var b strings.Builder
	space := false
	for i := 0; i < len(s) && b.Len() < max; i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			space = b.Len() > 0
			continue
		case c < 0x20 || c > 0x7e:
			c = '?'
		}
		if space {
			if b.Len()+2 > max {
				break // no room for the space and the next character
			}
			b.WriteByte(' ')
			space = false
		}
		b.WriteByte(c)
	}
	return b.String()
}

// buildReply assembles the PROFILE §3 reply: human text, OPES-System,
// OPES-Via (split over several lines when long, only after ", "), and the
// policy pointer. Every line fits maxReplyLine; the line count is capped by
// dropping middle Via entries, never the deciding one.
func buildReply(code int, enhanced, text string, system TraceEntry, via []TraceEntry, policyURL string) *SMTPReply {
	r := &SMTPReply{Code: code, Enhanced: enhanced}
	room := maxReplyLine - len("ddd-") - len(enhanced) - 1 - 2
	r.Lines = append(r.Lines, SanitizeText(text, min(room, maxReplyText)))
	r.Lines = append(r.Lines, FieldSystem+": "+system.String())
	// Keep the last (deciding) entries if there are too many lines.
	for {
		lines := viaLines(via, room)
		if len(lines)+3 <= maxReplyLines || len(via) <= 1 {
			r.Lines = append(r.Lines, lines...)
			break
		}
		via = via[1:]
	}
	r.Lines = append(r.Lines, "Policy, privacy and bypass: "+policyURL)
	return r
}

func viaLines(via []TraceEntry, room int) []string {
	if len(via) == 0 {
		return nil
	}
	var lines []string
	cur := FieldVia + ":"
	for i, e := range via {
		s := " " + e.String()
		if i < len(via)-1 {
			s += ","
		}
		if len(cur)+len(s) > room && cur != FieldVia+":" {
			lines = append(lines, cur)
			cur = " "
		}
		cur += s
	}
	return append(lines, cur)
}

// NewReply builds a PROFILE §3 reply with the trace lines, for replies the
// daemon composes outside a session (e.g. the report for a quarantined
// message that expired).
func NewReply(code int, enhanced, text string, system TraceEntry, via []TraceEntry, policyURL string) *SMTPReply {
	return buildReply(code, enhanced, text, system, via, policyURL)
}
