package reroute

import (
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"strings"

	"github.com/emersion/go-message/charset"
)

// addressParser decodes display names in any charset go-message knows, so
// that a field with an ISO-2022-JP or windows-1252 name is not "unparseable".
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: charset.Reader}}

// maxFieldLine is RFC 5322's hard limit on a header line, CRLF excluded.
const maxFieldLine = 998

// rewriteAddressList replaces, in an address-list field value (To, Cc,
// ...), every mailbox whose addr-spec is a key of repl (lower-cased) by
// the same mailbox with the new address. Only the replaced mailboxes are
// re-rendered (display name kept, encoded as RFC 2047 requires); other
// mailboxes, group syntax, comments between items and folding are kept
// byte for byte, so the field stays what the sender wrote except for the
// address that changed (RFC 4902 §5.6). A value that does not parse is an
// error and the caller leaves the field as it is.
func rewriteAddressList(value string, repl map[string]string) (string, bool, error) {
	items, err := splitItems(value)
	if err != nil {
		return value, false, err
	}
	var b strings.Builder
	last, changed := 0, false
	for _, it := range items {
		raw := value[it.start:it.end]
		text := strings.TrimSpace(unfoldText(raw))
		if text == "" {
			continue
		}
		a, err := addressParser.Parse(text)
		if err != nil {
			return value, false, fmt.Errorf("mailbox %q: %w", truncate(text, 80), err)
		}
		to, ok := repl[strings.ToLower(a.Address)]
		if !ok {
			continue
		}
		b.WriteString(value[last:it.start])
		if lt, gt, ok := angleAddr(raw); ok {
			// Only the addr-spec changes: display name, comments and
			// encoded words stay as the sender wrote them.
			b.WriteString(raw[:lt+1])
			b.WriteString(to)
			b.WriteString(raw[gt:])
		} else {
			a.Address = to
			lead := raw[:len(raw)-len(strings.TrimLeft(raw, " \t\r\n"))]
			trail := raw[len(strings.TrimRight(raw, " \t\r\n")):]
			b.WriteString(lead)
			b.WriteString(a.String())
			b.WriteString(trail)
		}
		last, changed = it.end, true
	}
	if !changed {
		return value, false, nil
	}
	b.WriteString(value[last:])
	out := b.String()
	for _, line := range strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n") {
		if len(line) > maxFieldLine {
			return value, false, fmt.Errorf("rewritten field would have a line of %d octets", len(line))
		}
	}
	return out, true, nil
}

// span is one mailbox item of an address list, as offsets into the value.
type span struct{ start, end int }

// splitItems finds the mailbox items of an RFC 5322 address-list: the
// text between top-level ',' and the group delimiters ':' and ';'. A
// group's display name (the text before its ':') is not an item.
// Quoted strings, comments, angle-addr and domain literals are skipped
// over, so a ',' or ':' inside them does not split.
func splitItems(v string) ([]span, error) {
	var items []span
	start := 0
	var q quoting
	inLiteral, inGroup := false, false
	angle := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if inLiteral {
			inLiteral = c != ']'
			continue
		}
		var quoted bool
		if i, quoted = q.step(v, i); quoted {
			continue
		}
		switch {
		case c == '[':
			inLiteral = true
		case c == '<':
			angle++
		case c == '>':
			if angle == 0 {
				return nil, errors.New("'>' without '<'")
			}
			angle--
		case angle > 0:
			// A ':' inside <...> is an obsolete source route, not a group.
		case c == ',':
			items = append(items, span{start, i})
			start = i + 1
		case c == ':':
			if inGroup {
				return nil, errors.New("group inside a group")
			}
			inGroup, start = true, i+1
		case c == ';':
			if !inGroup {
				return nil, errors.New("';' outside a group")
			}
			items = append(items, span{start, i})
			inGroup, start = false, i+1
		}
	}
	switch {
	case q.inQuote:
		return nil, errors.New("unterminated quoted string")
	case q.comment > 0:
		return nil, errors.New("unterminated comment")
	case inLiteral:
		return nil, errors.New("unterminated domain literal")
	case angle > 0:
		return nil, errors.New("'<' without '>'")
	case inGroup:
		return nil, errors.New("group without ';'")
	}
	return append(items, span{start, len(v)}), nil
}

// angleAddr finds the <...> of a mailbox item, outside quoted strings
// and comments.
func angleAddr(item string) (lt, gt int, ok bool) {
	lt = -1
	var q quoting
	for i := 0; i < len(item); i++ {
		var quoted bool
		if i, quoted = q.step(item, i); quoted {
			continue
		}
		switch c := item[i]; {
		case c == '<' && lt < 0:
			lt = i
		case c == '>' && lt >= 0:
			return lt, i, true
		}
	}
	return 0, 0, false
}

// quoting follows quoted strings and (nested) comments while a scanner
// walks a header value byte by byte.
type quoting struct {
	inQuote bool
	comment int
}

// step consumes v[i] when it is inside a quoted string or a comment, or
// opens one, and then reports true with the index of the last byte it
// consumed (a backslash takes the byte after it along).
func (q *quoting) step(v string, i int) (int, bool) {
	c := v[i]
	switch {
	case q.inQuote:
		if c == '\\' {
			i++
		} else if c == '"' {
			q.inQuote = false
		}
	case q.comment > 0:
		if c == '\\' {
			i++
		} else if c == '(' {
			q.comment++
		} else if c == ')' {
			q.comment--
		}
	case c == '"':
		q.inQuote = true
	case c == '(':
		q.comment = 1
	default:
		return i, false
	}
	return i, true
}

func unfoldText(s string) string {
	return strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
