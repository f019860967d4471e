package opes

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Names of the trace header fields (PROFILE §2, RFC 3897).
const (
	FieldSystem = "OPES-System"
	FieldVia    = "OPES-Via"
	FieldBypass = "OPES-Bypass"
)

// isTraceField reports whether name is one of the OPES fields no service
// may remove or alter.
func isTraceField(name string) bool {
	return strings.EqualFold(name, FieldSystem) || strings.EqualFold(name, FieldVia) || strings.EqualFold(name, FieldBypass)
}

// TraceParam is one parameter of a trace entry.
type TraceParam struct {
	Name  string
	Value string
}

// TraceEntry is one element of an OPES-System or OPES-Via list:
// an OPES agent URI with parameters (RFC 4236 trace-entry).
type TraceEntry struct {
	URI    string
	Params []TraceParam
}

// Param returns the value of the named parameter and whether it exists.
func (e TraceEntry) Param(name string) (string, bool) {
	for _, p := range e.Params {
		if strings.EqualFold(p.Name, name) {
			return p.Value, true
		}
	}
	return "", false
}

// pieces returns the entry as "uri", "; k=v", ... so folding can break
// only after a ";".
func (e TraceEntry) pieces() []string {
	out := []string{e.URI}
	for _, p := range e.Params {
		out = append(out, p.Name+"="+quoteIfNeeded(p.Value))
	}
	return out
}

func (e TraceEntry) String() string {
	var b strings.Builder
	b.Grow(e.size())
	e.writeTo(&b)
	return b.String()
}

// size is the rendered length of the entry when no value needs quoting,
// so that one allocation usually holds it.
func (e TraceEntry) size() int {
	n := len(e.URI)
	for _, p := range e.Params {
		n += 3 + len(p.Name) + len(p.Value)
	}
	return n
}

// writeTo appends the entry as String renders it, without intermediate
// strings: the trace of every message goes through here.
func (e TraceEntry) writeTo(b *strings.Builder) {
	b.WriteString(e.URI)
	for _, p := range e.Params {
		b.WriteString("; ")
		b.WriteString(p.Name)
		b.WriteByte('=')
		b.WriteString(quoteIfNeeded(p.Value))
	}
}

// FormatTraceList renders entries as one unfolded list value.
func FormatTraceList(entries []TraceEntry) string {
	var b strings.Builder
	n := 0
	for _, e := range entries {
		n += 2 + e.size()
	}
	b.Grow(n)
	for i, e := range entries {
		if i > 0 {
			b.WriteString(", ")
		}
		e.writeTo(&b)
	}
	return b.String()
}

// maxLine is the soft line limit for generated header fields (RFC 5322
// §2.1.1); hardLine the limit never to exceed.
const (
	maxLine  = 78
	hardLine = 998
)

// FoldTraceList renders entries as the value of field name, folded with
// "\r\n\t" only after a "," or ";" so that no line, counting "Name: ",
// exceeds 78 octets where a break is possible (and 998 never: URIs and
// parameters are bounded at load). The result carries no leading space.
func FoldTraceList(name string, entries []TraceEntry) string {
	// Most lists (the system entry, a trace-only OPES-Via) fit one line:
	// no folding to work out.
	if flat := FormatTraceList(entries); len(name)+2+len(flat) <= maxLine {
		return flat
	}
	var b strings.Builder
	col := len(name) + 2
	first := true
	for i, e := range entries {
		ps := e.pieces()
		for j, p := range ps {
			sep := " "
			if first {
				sep = ""
			}
			last := j == len(ps)-1 && i == len(entries)-1
			term := ";"
			if j == len(ps)-1 {
				term = ","
			}
			if last {
				term = ""
			}
			if !first && col+len(sep)+len(p)+len(term) > maxLine {
				b.WriteString("\r\n\t")
				col = 1
				sep = ""
			}
			b.WriteString(sep)
			b.WriteString(p)
			b.WriteString(term)
			col += len(sep) + len(p) + len(term)
			first = false
		}
	}
	return b.String()
}

// ParseTraceList parses an OPES-System or OPES-Via value (folded or not)
// with the RFC 4236 trace-entry grammar: comma-separated entries, each an
// absolute URI followed by ";"-separated token=token|quoted-string
// parameters. Unknown parameters are kept; callers ignore them. At most
// maxEntries entries are accepted, so hostile input stays bounded.
func ParseTraceList(v string, maxEntries int) ([]TraceEntry, error) {
	v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
	p := traceParser{s: v}
	var out []TraceEntry
	for {
		p.ws()
		if p.eof() {
			if len(out) == 0 {
				return nil, errors.New("trace: empty list")
			}
			return out, nil
		}
		if len(out) > 0 {
			if !p.accept(',') {
				return nil, fmt.Errorf("trace: expected ',' at offset %d", p.i)
			}
			p.ws()
		}
		if len(out) >= maxEntries {
			return nil, fmt.Errorf("trace: more than %d entries", maxEntries)
		}
		e, err := p.entry()
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
}

type traceParser struct {
	s string
	i int
}

func (p *traceParser) eof() bool { return p.i >= len(p.s) }

func (p *traceParser) ws() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *traceParser) accept(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *traceParser) entry() (TraceEntry, error) {
	start := p.i
	for p.i < len(p.s) && !strings.ContainsRune(" \t,;\"", rune(p.s[p.i])) {
		p.i++
	}
	uri := p.s[start:p.i]
	if err := CheckAgentURI(uri); err != nil {
		return TraceEntry{}, fmt.Errorf("trace: %w", err)
	}
	e := TraceEntry{URI: uri}
	for {
		p.ws()
		if !p.accept(';') {
			return e, nil
		}
		p.ws()
		name := p.token()
		if name == "" {
			return e, fmt.Errorf("trace: expected parameter name at offset %d", p.i)
		}
		if !p.accept('=') {
			return e, fmt.Errorf("trace: expected '=' after %q", name)
		}
		var val string
		if p.accept('"') {
			var b strings.Builder
			for {
				if p.eof() {
					return e, errors.New("trace: unterminated quoted-string")
				}
				c := p.s[p.i]
				p.i++
				if c == '"' {
					break
				}
				if c == '\\' {
					if p.eof() {
						return e, errors.New("trace: unterminated quoted-pair")
					}
					c = p.s[p.i]
					p.i++
				}
				b.WriteByte(c)
			}
			val = b.String()
		} else {
			val = p.token()
			if val == "" {
				return e, fmt.Errorf("trace: empty value for %q", name)
			}
		}
		e.Params = append(e.Params, TraceParam{Name: name, Value: val})
	}
}

func (p *traceParser) token() string {
	start := p.i
	for p.i < len(p.s) && isTchar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// isTchar is RFC 7230's tchar.
func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// IsToken reports whether s is a non-empty RFC 7230 token.
func IsToken(s string) bool {
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

func quoteIfNeeded(v string) string {
	if IsToken(v) {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// maxURILen bounds agent URIs so a folded trace line never exceeds 998.
// maxURILen keeps every trace entry on one reply line (PROFILE §3: ≤ 512
// octets): a URI of this length with every parameter the processor writes
// still fits "ddd-x.y.z OPES-Via: <entry>".
const maxURILen = 384

// CheckAgentURI enforces PROFILE §1: an absolute URI, no fragment, none of
// `, ; " ( )`, white space or non-ASCII, at most 384 octets.
func CheckAgentURI(s string) error {
	if s == "" {
		return errors.New("empty URI")
	}
	if len(s) > maxURILen {
		return fmt.Errorf("URI longer than %d octets", maxURILen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || strings.IndexByte(`,;"()`, c) >= 0 {
			return fmt.Errorf("URI %q contains %q", s, c)
		}
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("URI %q: %w", s, err)
	}
	if !u.IsAbs() || u.Host == "" {
		return fmt.Errorf("URI %q is not absolute", s)
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return fmt.Errorf("URI %q has a fragment", s)
	}
	return nil
}
