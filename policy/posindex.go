package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// BurntSushi/toml keeps the positions of keys to itself, and its MetaData
// names keys without array indexes, so it cannot tell the third [[rule]]
// from the first. posIndex recovers positions by scanning the source a
// second time. It only runs on text the TOML parser accepted, so it can be
// forgiving: anything it does not understand it skips, and a lookup that
// finds nothing falls back to the nearest enclosing key or table. It must
// never panic or loop, whatever the input (FuzzIndex).

// pos is a 1-based line and byte column, as the Go toolchain and the TOML
// parser's own errors count them.
type pos struct{ line, col int }

// span is where a key and its value start. For a table opened by a header
// and for an array element both are the same place.
type span struct{ key, val pos }

type posIndex struct {
	spans map[string]span
}

// lookup returns the span of p or, failing that, of its nearest recorded
// ancestor, and whether p itself was found.
func (x *posIndex) lookup(p path) (span, bool) {
	for n := len(p); n > 0; n-- {
		if s, ok := x.spans[p[:n].String()]; ok {
			return s, n == len(p)
		}
	}
	return span{pos{1, 1}, pos{1, 1}}, false
}

func (x *posIndex) has(p path) bool {
	_, ok := x.spans[p.String()]
	return ok
}

// Bounds on the shape of a file. The TOML parser takes time quadratic in
// the depth of keys and values (20 000 dotted parts: 25 s), so files
// beyond any sensible policy are refused before it runs. A policy needs
// about five levels.
const (
	maxDepth    = 32 // nested arrays and inline tables
	maxKeyParts = 32 // parts of one dotted key or table header
)

type scanner struct {
	src       string
	i         int
	line, col int
	idx       *posIndex
	aot       map[string]int // arrays of tables seen so far: resolved path → element count
	table     path           // the table the current header opened
	depth     int
	limit     *Error // first bound exceeded; scanning stops there
}

// buildIndex records the positions in src. A non-nil *Error (without
// File) means src exceeds maxDepth or maxKeyParts.
func buildIndex(src string) (*posIndex, *Error) {
	s := &scanner{src: src, line: 1, col: 1, idx: &posIndex{spans: map[string]span{}}, aot: map[string]int{}}
	s.document()
	return s.idx, s.limit
}

// exceeded records the first bound exceeded and ends the scan.
func (s *scanner) exceeded(msg string) {
	if s.limit == nil {
		s.limit = &Error{Line: s.line, Col: s.col, Msg: msg}
	}
	s.i = len(s.src)
}

func (s *scanner) eof() bool { return s.i >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.i]
}

func (s *scanner) at(prefix string) bool { return strings.HasPrefix(s.src[s.i:], prefix) }

func (s *scanner) pos() pos { return pos{s.line, s.col} }

// advance moves over n bytes keeping line and column.
func (s *scanner) advance(n int) {
	for ; n > 0 && s.i < len(s.src); n-- {
		if s.src[s.i] == '\n' {
			s.line++
			s.col = 1
		} else {
			s.col++
		}
		s.i++
	}
}

func (s *scanner) record(p path, key, val pos) {
	k := p.String()
	if _, ok := s.idx.spans[k]; !ok {
		s.idx.spans[k] = span{key, val}
	}
}

// skipSpace skips blanks on the current line.
func (s *scanner) skipSpace() {
	for !s.eof() && (s.peek() == ' ' || s.peek() == '\t' || s.peek() == '\r') {
		s.advance(1)
	}
}

// skipLine skips to the start of the next line.
func (s *scanner) skipLine() {
	if j := strings.IndexByte(s.src[s.i:], '\n'); j >= 0 {
		s.advance(j + 1)
	} else {
		s.advance(len(s.src) - s.i)
	}
}

// skipBlank skips white space, newlines and comments, as allowed inside
// arrays (and inline tables in TOML 1.1).
func (s *scanner) skipBlank() {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t', '\r', '\n':
			s.advance(1)
		case '#':
			if j := strings.IndexByte(s.src[s.i:], '\n'); j >= 0 {
				s.advance(j)
			} else {
				s.advance(len(s.src) - s.i)
			}
		default:
			return
		}
	}
}

func (s *scanner) document() {
	for !s.eof() {
		start := s.i
		s.skipSpace()
		switch {
		case s.eof():
		case s.peek() == '\n' || s.peek() == '#':
			s.skipLine()
		case s.at("[["):
			s.header(true)
			s.skipLine()
		case s.peek() == '[':
			s.header(false)
			s.skipLine()
		default:
			s.keyValue(s.table)
			s.skipLine()
		}
		if s.i == start {
			s.advance(1)
		}
	}
}

// resolve maps the keys of a header to a path, inserting the index of
// the last element wherever a prefix names an array of tables. Prefixes
// not seen before are the implicit tables the header creates; they are
// recorded at the header.
func (s *scanner) resolve(keys []string, at pos) path {
	var p path
	for _, k := range keys {
		p = p.key(k)
		if n := s.aot[p.String()]; n > 0 {
			p = p.index(n)
		}
		s.record(p, at, at)
	}
	return p
}

func (s *scanner) header(array bool) {
	at := s.pos()
	if array {
		s.advance(2)
	} else {
		s.advance(1)
	}
	s.skipSpace()
	keys, ok := s.keys()
	if !ok || len(keys) == 0 {
		s.table = nil
		return
	}
	if !array {
		s.table = s.resolve(keys, at)
		return
	}
	p := s.resolve(keys[:len(keys)-1], at).key(keys[len(keys)-1])
	k := p.String()
	s.aot[k]++
	s.record(p, at, at)
	s.table = p.index(s.aot[k])
	s.record(s.table, at, at)
}

// keys reads a possibly dotted key and leaves the scanner after it.
func (s *scanner) keys() ([]string, bool) {
	var out []string
	for {
		s.skipSpace()
		k, ok := s.simpleKey()
		if !ok {
			return out, false
		}
		out = append(out, k)
		if len(out) > maxKeyParts {
			s.exceeded(fmt.Sprintf("key with more than %d dotted parts", maxKeyParts))
			return nil, false
		}
		s.skipSpace()
		if s.peek() != '.' {
			return out, true
		}
		s.advance(1)
	}
}

func (s *scanner) simpleKey() (string, bool) {
	switch s.peek() {
	case '"':
		start := s.i
		s.advance(1)
		for !s.eof() && s.peek() != '"' && s.peek() != '\n' {
			if s.peek() == '\\' {
				s.advance(1)
			}
			s.advance(1)
		}
		if s.peek() != '"' {
			return "", false
		}
		s.advance(1)
		return unescapeBasic(s.src[start+1 : s.i-1]), true
	case '\'':
		start := s.i
		s.advance(1)
		for !s.eof() && s.peek() != '\'' && s.peek() != '\n' {
			s.advance(1)
		}
		if s.peek() != '\'' {
			return "", false
		}
		s.advance(1)
		return s.src[start+1 : s.i-1], true
	}
	start := s.i
	for !s.eof() && isBareKeyByte(s.peek()) {
		s.advance(1)
	}
	return s.src[start:s.i], s.i > start
}

// keyValue reads "key = value" relative to table.
func (s *scanner) keyValue(table path) {
	at := s.pos()
	keys, ok := s.keys()
	if !ok || len(keys) == 0 || s.peek() != '=' {
		return
	}
	s.advance(1)
	s.skipSpace()
	p := table
	for _, k := range keys[:len(keys)-1] {
		p = p.key(k)
		s.record(p, at, at)
	}
	p = p.key(keys[len(keys)-1])
	s.record(p, at, s.pos())
	s.value(p)
}

func (s *scanner) value(p path) {
	if s.depth >= maxDepth {
		s.exceeded(fmt.Sprintf("arrays or inline tables nested deeper than %d levels", maxDepth))
		return
	}
	s.depth++
	defer func() { s.depth-- }()
	switch {
	case s.at(`"""`):
		s.multiline(`"""`, true)
	case s.at(`'''`):
		s.multiline(`'''`, false)
	case s.peek() == '"':
		s.advance(1)
		for !s.eof() && s.peek() != '"' && s.peek() != '\n' {
			if s.peek() == '\\' {
				s.advance(1)
			}
			s.advance(1)
		}
		s.advance(1)
	case s.peek() == '\'':
		s.advance(1)
		for !s.eof() && s.peek() != '\'' && s.peek() != '\n' {
			s.advance(1)
		}
		s.advance(1)
	case s.peek() == '[':
		s.array(p)
	case s.peek() == '{':
		s.inlineTable(p)
	default:
		// Numbers, booleans, dates: up to the next delimiter. A date may
		// contain a space ("1979-05-27 07:32:00Z"), so blanks do not end
		// it.
		for !s.eof() && strings.IndexByte(",]}\n#", s.peek()) < 0 {
			s.advance(1)
		}
	}
}

func (s *scanner) multiline(delim string, escapes bool) {
	s.advance(3)
	for !s.eof() {
		if escapes && s.peek() == '\\' {
			s.advance(2)
			continue
		}
		if s.at(delim) {
			s.advance(3)
			// Up to two quotes right before the delimiter belong to the
			// content: """a""""" ends after five quotes.
			for n := 0; n < 2 && s.peek() == delim[0]; n++ {
				s.advance(1)
			}
			return
		}
		s.advance(1)
	}
}

func (s *scanner) array(p path) {
	s.advance(1)
	for n := 1; ; n++ {
		s.skipBlank()
		if s.eof() || s.peek() == ']' {
			s.advance(1)
			return
		}
		start := s.i
		e := p.index(n)
		s.record(e, s.pos(), s.pos())
		s.value(e)
		s.skipBlank()
		switch s.peek() {
		case ',':
			s.advance(1)
		case ']':
			s.advance(1)
			return
		default:
			if s.i == start {
				s.advance(1)
			}
			return
		}
	}
}

func (s *scanner) inlineTable(p path) {
	s.advance(1)
	for {
		s.skipBlank()
		if s.eof() || s.peek() == '}' {
			s.advance(1)
			return
		}
		start := s.i
		s.keyValue(p)
		s.skipBlank()
		switch s.peek() {
		case ',':
			s.advance(1)
		case '}':
			s.advance(1)
			return
		default:
			if s.i == start {
				s.advance(1)
			}
			return
		}
	}
}

// unescapeBasic decodes the escapes of a TOML basic string so that quoted
// keys match the names the decoder reports.
func unescapeBasic(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch s[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte(0x1b)
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[s[i]]
			if i+n < len(s) {
				if r, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32); err == nil {
					b.WriteRune(rune(r))
					i += n
					continue
				}
			}
			b.WriteByte(s[i])
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// lineLen is the length in bytes of line n (1-based), used to keep
// positions reported by the TOML parser on their line.
func lineLen(src string, n int) int {
	for l := 1; l < n; l++ {
		j := strings.IndexByte(src, '\n')
		if j < 0 {
			return -1
		}
		src = src[j+1:]
	}
	if j := strings.IndexByte(src, '\n'); j >= 0 {
		src = src[:j]
	}
	return len(strings.TrimSuffix(src, "\r"))
}
