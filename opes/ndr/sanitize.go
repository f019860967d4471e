package ndr

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on what a report may carry, so a hostile value cannot make the
// report unbounded (every input is hostile; every resource is bounded).
const (
	maxFieldValue  = 900       // a single-line field value; 998 minus the name
	maxReplyLine   = 510       // one SMTP reply line without CRLF (RFC 5321 §4.5.3.1.5)
	maxReplyLines  = 32        // PROFILE §3
	maxReasonRunes = 1000      // the human reason in part 1
	maxHeaderBytes = 256 << 10 // the returned header (Postfix's default limit is 100 KiB)
	maxTraceValue  = 8 << 10   // an X-OPES-Via value before folding
	foldWidth      = 78        // RFC 5322 §2.1.1 SHOULD
)

// printableASCII reports whether s is non-empty and only holds octets
// 0x21-0x7E (no space, no control character).
func printableASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// textASCII keeps s's printable US-ASCII octets and spaces; tabs become
// spaces, every other octet (controls, CR, LF, 8-bit) becomes '?' so the
// reader still sees that something was there. The result fits in a single
// unstructured field line (RFC 3464 *text).
func textASCII(s string, limit int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < limit; i++ {
		c := s[i]
		switch {
		case c == '\t':
			b.WriteByte(' ')
		case c >= 0x20 && c <= 0x7e:
			b.WriteByte(c)
		default:
			b.WriteByte('?')
		}
	}
	return strings.TrimSpace(b.String())
}

// humanText makes a wire value safe for the text part: valid UTF-8, no
// control characters (all whitespace collapsed to one space), at most
// limit runes with an ellipsis when cut.
func humanText(s string, limit int) string {
	var b strings.Builder
	n := 0
	space := false
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			space = true
			continue
		}
		if n >= limit {
			b.WriteString(" ...")
			break
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
			n++
		}
		space = false
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// isDNSName reports whether s is a syntactically valid host name
// (letters, digits, hyphens; labels of 1-63; at most 253 octets).
func isDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// isFQDN reports whether s is a host name with at least two labels: what
// RFC 3461 §6.3b calls a fully-qualified domain name, as far as syntax can
// tell.
func isFQDN(s string) bool {
	return isDNSName(s) && strings.Contains(strings.TrimSuffix(s, "."), ".")
}

// headerAddress reports whether addr may be written as <addr> in a
// US-ASCII header field: a valid RFC 5322 addr-spec of printable ASCII
// that net/mail reads back unchanged.
func headerAddress(addr string) bool {
	if len(addr) > maxFieldValue || !printableASCIIWithSpace(addr) {
		return false
	}
	a, err := mail.ParseAddress("<" + addr + ">")
	return err == nil && a.Name == "" && a.Address == unquoteLocal(addr)
}

// unquoteLocal undoes the quoting net/mail removes from a quoted local
// part, so a quoted address compares equal to what ParseAddress returns.
func unquoteLocal(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !strings.HasPrefix(addr, `"`) || at < 2 || addr[at-1] != '"' {
		return addr
	}
	local := addr[1 : at-1]
	var b strings.Builder
	for i := 0; i < len(local); i++ {
		if local[i] == '\\' && i+1 < len(local) {
			i++
		}
		b.WriteByte(local[i])
	}
	return b.String() + addr[at:]
}

func printableASCIIWithSpace(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// recipientField renders an envelope address as address-type ";" address
// for Final-Recipient. An address of printable US-ASCII is copied exactly,
// case preserved (RFC 3461 §6.3e). Anything else — an SMTPUTF8 address, or
// a hostile one carrying control characters — uses the "utf-8" type of
// RFC 6533 with its utf-8-addr-xtext encoding, which is pure ASCII: every
// character outside QCHAR is written \x{HEX}, and an invalid UTF-8 octet as
// \x{FFFD}. For control characters that is an extension of RFC 6533's
// HEXPOINT, chosen because such an address cannot be represented faithfully
// anyway and the encoding can never break the field.
func recipientField(addr string) string {
	if printableASCIIWithSpace(addr) && len(addr) <= maxFieldValue && strings.TrimSpace(addr) == addr {
		return "rfc822; " + addr
	}
	return "utf-8; " + utf8AddrXtext(addr, maxFieldValue)
}

func utf8AddrXtext(s string, limit int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < limit; {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r < 0x80 && isQChar(byte(r)) {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x{%X}`, r)
	}
	return b.String()
}

// isQChar is RFC 6533's QCHAR: printable ASCII except "+", "=" and "\".
func isQChar(c byte) bool {
	return c >= 0x21 && c <= 0x7e && c != '+' && c != '=' && c != '\\'
}

// xtextDecode decodes RFC 3461 xtext; ok is false for malformed input.
func xtextDecode(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return "", false
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		case c < 0x21 || c > 0x7e || c == '=':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// xtextEncode encodes s as RFC 3461 xtext, stopping before limit octets.
func xtextEncode(s string, limit int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len()+3 <= limit; i++ {
		c := s[i]
		if c >= 0x21 && c <= 0x7e && c != '+' && c != '=' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "+%02X", c)
		}
	}
	return b.String()
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

// decodedXtextField turns an xtext value from the wire (ENVID, the address
// of an ORCPT) into a DSN field value: decoded, as RFC 3461 §6.3 asks, when
// that gives printable US-ASCII; otherwise the value as received when that
// is printable (already safe, and exactly what the sender sent); otherwise
// the raw octets xtext-encoded, so the field stays one line of ASCII.
func decodedXtextField(raw string) string {
	if d, ok := xtextDecode(raw); ok && printableASCIIWithSpace(d) && len(d) <= maxFieldValue {
		return d
	}
	if printableASCII(raw) && len(raw) <= maxFieldValue {
		return raw
	}
	return xtextEncode(raw, maxFieldValue)
}

// originalRecipientField renders an ORCPT parameter ("addr-type;xtext") as
// the value of Original-Recipient (RFC 3461 §6.3d). The rfc822 address is
// xtext-decoded like ENVID; other address types (utf-8 uses its own ASCII
// encoding, RFC 6533) are copied when printable. A malformed parameter —
// which a conforming MTA would have refused — still yields the field, as
// type "unknown" (RFC 3464 §2.3.1) with the whole value xtext-encoded.
func originalRecipientField(orcpt string) string {
	typ, value, ok := strings.Cut(orcpt, ";")
	typ = strings.TrimSpace(typ)
	if !ok || !isAtom(typ) || len(typ) > 64 {
		return "unknown;" + xtextEncode(orcpt, maxFieldValue)
	}
	if strings.EqualFold(typ, "rfc822") {
		return typ + ";" + decodedXtextField(value)
	}
	if printableASCII(value) && len(value) <= maxFieldValue {
		return typ + ";" + value
	}
	return typ + ";" + xtextEncode(value, maxFieldValue)
}

func isAtom(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// isTchar is the HTTP token character set RFC 4236 trace parameters use.
func isTchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

// paramValue renders a trace parameter value: a token as is, anything else
// as a quoted-string.
func paramValue(s string) string {
	if isToken(s) {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// foldList folds a comma/semicolon-separated list value (OPES-Via,
// OPES-System) for a field whose name takes nameLen octets plus ": ".
// It only breaks at a space that follows "," or ";", replacing that space
// with CRLF SP, so unfolding (RFC 5322 §2.2.3) gives back the exact value.
// Lines stay within foldWidth where the list allows it; a piece longer than
// that stays whole (the caller bounds the value so it never reaches 998).
func foldList(nameLen int, value string) string {
	var b strings.Builder
	col := nameLen + 2
	start := 0
	lastBreak := -1 // index in value of a breakable space, in the current line
	for i := 0; i < len(value); i++ {
		if value[i] == ' ' && i > 0 && (value[i-1] == ',' || value[i-1] == ';') {
			if col+(i-start) > foldWidth && lastBreak >= start {
				b.WriteString(value[start:lastBreak])
				b.WriteString("\r\n ")
				col = 1
				start = lastBreak + 1
			}
			lastBreak = i
		}
	}
	if col+(len(value)-start) > foldWidth && lastBreak >= start {
		b.WriteString(value[start:lastBreak])
		b.WriteString("\r\n ")
		start = lastBreak + 1
	}
	b.WriteString(value[start:])
	return b.String()
}

// wrapText word-wraps s to width columns after indent; a word longer than
// the line is cut so no line ever exceeds the width.
func wrapText(s, indent string, width int) []string {
	var lines []string
	line := indent
	for _, w := range strings.Fields(s) {
		for utf8.RuneCountInString(indent+w) > width {
			if line != indent {
				lines = append(lines, line)
				line = indent
			}
			cut := runeOffset(w, width-utf8.RuneCountInString(indent))
			lines = append(lines, indent+w[:cut])
			w = w[cut:]
		}
		switch {
		case line == indent:
			line += w
		case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(w) <= width:
			line += " " + w
		default:
			lines = append(lines, line)
			line = indent + w
		}
	}
	if line != indent {
		lines = append(lines, line)
	}
	return lines
}

// runeOffset is the byte offset of the n-th rune of s.
func runeOffset(s string, n int) int {
	for i := range s {
		if n == 0 {
			return i
		}
		n--
	}
	return len(s)
}
