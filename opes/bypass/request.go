package bypass

import (
	"errors"
	"fmt"
	"strings"
)

// Bounds on bypass input. Every one of them is checked before the work it
// limits, so a hostile request costs time linear in its size and memory
// bounded by MaxURIs.
const (
	MaxFieldBytes   = 8 << 10 // one OPES-Bypass field value, folding included
	MaxFieldEntries = 64      // URIs in one field or parameter
	MaxURIs         = 256     // URIs in a union (Merge, Collect)
	// MaxParamXtext bounds the xtext of X-OPES-BYPASS: the whole
	// parameter, keyword and "=" included, is at most 500 characters, as
	// for ORCPT (RFC 3461 §4.2), so a MAIL or RCPT line grows by a bounded
	// amount.
	MaxParamXtext = 500 - len("X-OPES-BYPASS=")
)

// FieldName is the header field that carries an in-message request.
const FieldName = "OPES-Bypass"

// Request is a bypass request: "*" (All) or a set of normalised absolute
// URIs in the order first seen. The zero Request asks for nothing.
//
// A Request never holds more than MaxURIs URIs; when a union would exceed
// that, the extra URIs are dropped and Truncated is set. Dropping is the
// safe direction: a bypass that is not done only means the sender gets the
// OPES version, which RFC 3897 §4 always allows, whereas widening to "*"
// would let a long request switch off services nobody named.
type Request struct {
	All       bool
	URIs      []string
	Truncated bool // entries were dropped at the MaxURIs bound
}

// Empty reports whether r asks for no bypass at all.
func (r Request) Empty() bool { return !r.All && len(r.URIs) == 0 }

// Merge returns the union of r and other, deduplicated and bounded by
// MaxURIs. It never shares memory with r or other.
func (r Request) Merge(other Request) Request {
	var u union
	u.add(r)
	u.add(other)
	return u.req
}

// String renders r as an OPES-Bypass field value: "*", or the URIs
// separated by "," and folded with "\r\n\t" so that no line,
// "OPES-Bypass: " included, exceeds 78 octets where a break is possible
// (998 never, by MaxURILen). ParseField reads it back to the same request
// when it is within the bounds of one field, as every request ParseField
// returns is; a larger union (from Merge or Collect) needs Fields. The
// zero Request renders as "", which is not a valid field value: add no
// field for it.
func (r Request) String() string {
	if r.All {
		return "*"
	}
	return formatList(r.URIs)
}

// Fields renders r as as few OPES-Bypass field values as the bounds of
// ParseField allow (MaxFieldEntries URIs, MaxFieldBytes octets each);
// Collect reads them back to the same request. The zero Request has no
// field.
func (r Request) Fields() []string {
	if r.All {
		return []string{"*"}
	}
	var out []string
	for rest := r.URIs; len(rest) > 0; {
		n, size := 0, 0
		for n < len(rest) && n < MaxFieldEntries {
			// 4: the widest separator, ",\r\n\t".
			if n > 0 && size+4+len(rest[n]) > MaxFieldBytes {
				break
			}
			if n > 0 {
				size += 4
			}
			size += len(rest[n])
			n++
		}
		out = append(out, formatList(rest[:n]))
		rest = rest[n:]
	}
	return out
}

func formatList(uris []string) string {
	var b strings.Builder
	col := len(FieldName) + 2
	for i, u := range uris {
		w := len(u)
		if i < len(uris)-1 {
			w++ // the ","
		}
		if i > 0 {
			if col+1+w > maxLine {
				b.WriteString("\r\n\t")
				col = 1
			} else {
				b.WriteByte(' ')
				col++
			}
		}
		b.WriteString(u)
		if i < len(uris)-1 {
			b.WriteByte(',')
		}
		col += w
	}
	return b.String()
}

// maxLine is the soft line limit of RFC 5322 §2.1.1.
const maxLine = 78

// ParseField parses one OPES-Bypass field value: "*" or a comma-separated
// list of absolute URIs (RFC 4236 §5; PROFILE §5), possibly folded with
// CRLF (or a bare LF, as some MTAs pass folded values) followed by a space
// or tab. Whitespace around "*", "," and ";" is allowed; empty list
// elements are allowed and not counted, as in the HTTP "#rule" RFC 4236
// uses, but at least one URI is required. Each URI may be followed by
// ";name=value" parameters (value a token or a quoted-string); none is
// defined yet, so they are checked for syntax and ignored (profile
// digest §9.3: parameters reserved).
//
// Every URI is normalised with NormalizeURI and must not contain "(", ")"
// (PROFILE §1: agent URIs percent-encode them), and duplicates are
// removed. A value longer than MaxFieldBytes, with more than
// MaxFieldEntries URIs, with a CR or LF that is not folding, any other
// control octet (NUL included) or a non-ASCII octet is an error.
func ParseField(value string) (Request, error) {
	if len(value) > MaxFieldBytes {
		return Request{}, fmt.Errorf("bypass: field longer than %d octets", MaxFieldBytes)
	}
	s, err := unfold(value)
	if err != nil {
		return Request{}, err
	}
	return parseList(s, false)
}

// Collect returns the union of the OPES-Bypass field values of one message
// (PROFILE §5: all fields count). A malformed field is skipped and counted
// in malformed so the caller can log it; it never makes the message fail.
// Work is linear in the total size of values and memory is bounded by
// MaxURIs.
func Collect(values []string) (req Request, malformed int) {
	var u union
	for _, v := range values {
		r, err := ParseField(v)
		if err != nil {
			malformed++
			continue
		}
		u.add(r)
	}
	return u.req, malformed
}

// unfold removes RFC 5322 folding and rejects every other line break and
// control octet, so that an injected "\r\nBcc: ..." is an error rather
// than a second header line.
func unfold(v string) (string, error) {
	if !strings.ContainsAny(v, "\r\n") {
		return v, checkOctets(v)
	}
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch c {
		case '\r':
			if i+2 < len(v) && v[i+1] == '\n' && isWSP(v[i+2]) {
				i++ // drop CRLF, keep the WSP
				continue
			}
			return "", fmt.Errorf("bypass: CR not part of folding at offset %d", i)
		case '\n':
			if i+1 < len(v) && isWSP(v[i+1]) {
				continue
			}
			return "", fmt.Errorf("bypass: LF not part of folding at offset %d", i)
		}
		b.WriteByte(c)
	}
	s := b.String()
	return s, checkOctets(s)
}

func checkOctets(s string) error {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 0x80:
			return fmt.Errorf("bypass: non-ASCII octet at offset %d", i)
		case (c < 0x20 && c != '\t') || c == 0x7f:
			return fmt.Errorf("bypass: control octet 0x%02x at offset %d", c, i)
		}
	}
	return nil
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// parseList parses "*" or the URI list of an unfolded value. strict is the
// X-OPES-BYPASS form: no whitespace and no empty elements (the caller has
// already refused whitespace).
func parseList(s string, strict bool) (Request, error) {
	p := listParser{s: s}
	p.ws()
	if p.accept('*') {
		p.ws()
		if !p.eof() {
			return Request{}, fmt.Errorf("bypass: %q after \"*\"", p.rest())
		}
		return Request{All: true}, nil
	}
	var uris []string
	n := 0
	for {
		p.ws()
		if p.eof() || p.peek() == ',' {
			// An empty element: "#rule" allows it in a field.
			if strict {
				return Request{}, errors.New("bypass: empty list element")
			}
		} else {
			if n == MaxFieldEntries {
				return Request{}, fmt.Errorf("bypass: more than %d entries", MaxFieldEntries)
			}
			u, err := p.entry()
			if err != nil {
				return Request{}, err
			}
			n++
			if !contains(uris, u) { // n ≤ 64: a scan is cheaper than a map
				uris = append(uris, u)
			}
			p.ws()
		}
		if p.eof() {
			break
		}
		if !p.accept(',') {
			return Request{}, fmt.Errorf("bypass: expected \",\" at offset %d, found %q", p.i, p.peek())
		}
	}
	if len(uris) == 0 {
		return Request{}, errors.New("bypass: no entry")
	}
	return Request{URIs: uris}, nil
}

type listParser struct {
	s string
	i int
}

func (p *listParser) eof() bool    { return p.i >= len(p.s) }
func (p *listParser) peek() byte   { return p.s[p.i] }
func (p *listParser) rest() string { return p.s[p.i:] }

func (p *listParser) ws() {
	for p.i < len(p.s) && isWSP(p.s[p.i]) {
		p.i++
	}
}

func (p *listParser) accept(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// entry parses uri *( ";" param ) and returns the normalised URI.
func (p *listParser) entry() (string, error) {
	start := p.i
	for p.i < len(p.s) && !isWSP(p.s[p.i]) && p.s[p.i] != ',' && p.s[p.i] != ';' {
		p.i++
	}
	raw := p.s[start:p.i]
	if strings.ContainsAny(raw, "()") {
		return "", fmt.Errorf("bypass: %q: agent uri with \"(\" or \")\"", raw)
	}
	u, err := NormalizeURI(raw)
	if err != nil {
		return "", err
	}
	for {
		p.ws()
		if !p.accept(';') {
			return u, nil
		}
		p.ws()
		if err := p.param(); err != nil {
			return "", fmt.Errorf("bypass: parameter of %s: %w", u, err)
		}
	}
}

// param checks name "=" ( token / quoted-string ).
func (p *listParser) param() error {
	start := p.i
	for p.i < len(p.s) && (isAlpha(p.s[p.i]) || isDigit(p.s[p.i]) || (p.i > start && p.s[p.i] == '-')) {
		p.i++
	}
	if p.i == start {
		return fmt.Errorf("expected a parameter name at offset %d", p.i)
	}
	if !p.accept('=') {
		return fmt.Errorf("expected \"=\" at offset %d", p.i)
	}
	if p.accept('"') {
		for {
			if p.eof() {
				return errors.New("unterminated quoted-string")
			}
			c := p.s[p.i]
			p.i++
			switch c {
			case '"':
				return nil
			case '\\':
				if p.eof() {
					return errors.New("unterminated quoted-pair")
				}
				p.i++
			}
		}
	}
	start = p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	if p.i == start {
		return fmt.Errorf("expected a parameter value at offset %d", p.i)
	}
	return nil
}

// isTokenChar is the RFC 2616 token: visible ASCII except separators.
func isTokenChar(c byte) bool {
	return c > ' ' && c < 0x7f && strings.IndexByte("()<>@,;:\\\"/[]?={}", c) < 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// union accumulates requests. Below mapAt URIs a scan is cheaper than a
// map; above, the map keeps Collect linear in its input.
type union struct {
	req  Request
	seen map[string]struct{}
}

const mapAt = 16

func (u *union) add(r Request) {
	if r.Truncated {
		u.req.Truncated = true
	}
	if u.req.All {
		return
	}
	if r.All {
		u.req.All, u.req.URIs, u.seen = true, nil, nil
		return
	}
	for _, s := range r.URIs {
		u.addURI(s)
	}
}

func (u *union) addURI(s string) {
	if u.seen != nil {
		if _, dup := u.seen[s]; dup {
			return
		}
	} else if contains(u.req.URIs, s) {
		return
	}
	if len(u.req.URIs) >= MaxURIs {
		u.req.Truncated = true
		return
	}
	u.req.URIs = append(u.req.URIs, s)
	if u.seen != nil {
		u.seen[s] = struct{}{}
	} else if len(u.req.URIs) > mapAt {
		u.seen = make(map[string]struct{}, MaxURIs)
		for _, x := range u.req.URIs {
			u.seen[x] = struct{}{}
		}
	}
}
