package ocp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Limits bound what one decoded message may make the reader hold. RFC 4037
// sets none and §13 names the missing bounds as a denial-of-service
// vector, so every one has a default.
type Limits struct {
	// MaxMessage is the largest message in octets, payload included.
	// Default 1 MiB + 64 KiB: data travels in chunks well below it.
	MaxMessage int
	// MaxDepth bounds the nesting of lists and structures. Default 16.
	MaxDepth int
	// MaxItems bounds the values of one list, the anonymous parameters
	// or members, and the named parameters or members of one element.
	// Default 256.
	MaxItems int
}

// Defaults for Limits.
const (
	DefaultMaxMessage = 1<<20 + 64<<10
	DefaultMaxDepth   = 16
	DefaultMaxItems   = 256
)

func (l Limits) withDefaults() Limits {
	if l.MaxMessage <= 0 {
		l.MaxMessage = DefaultMaxMessage
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxItems <= 0 {
		l.MaxItems = DefaultMaxItems
	}
	return l
}

// ErrLimit is wrapped by errors for input beyond Limits.
var ErrLimit = errors.New("ocp: limit exceeded")

// SyntaxError reports input that is not a valid OCP message. Offset
// counts octets from the start of the stream. The stream cannot be
// resynchronised after one: the connection must end (RFC 4037 §5).
type SyntaxError struct {
	Offset int64
	Msg    string
	Err    error // ErrLimit, io.ErrUnexpectedEOF, or nil
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("ocp: invalid message at offset %d: %s", e.Offset, e.Msg)
}

func (e *SyntaxError) Unwrap() error { return e.Err }

// Reader decodes a stream of OCP messages. It reads through a buffer, so
// a message is decoded as it arrives and never needs to be whole in
// memory before parsing starts; only the decoded message is held.
type Reader struct {
	br  *bufio.Reader
	lim Limits
	off int64 // octets consumed from the stream
	n   int   // octets of the current message
	err error // sticky
}

// NewReader returns a decoder reading from r.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 32<<10), lim: lim.withDefaults()}
}

// Offset returns the number of octets consumed so far.
func (r *Reader) Offset() int64 { return r.off }

// bail unwinds the recursive descent with an error.
type bail struct{ err error }

// ReadMessage decodes the next message. It returns io.EOF when the stream
// ends cleanly between messages, and a *SyntaxError for anything else
// that is not a complete valid message; errors are sticky.
func (r *Reader) ReadMessage() (m *Message, err error) {
	if r.err != nil {
		return nil, r.err
	}
	r.n = 0
	if _, err := r.br.Peek(1); err != nil {
		if err == io.EOF {
			r.err = io.EOF
			return nil, io.EOF
		}
		r.err = fmt.Errorf("ocp: read: %w", err)
		return nil, r.err
	}
	defer func() {
		if p := recover(); p != nil {
			b, ok := p.(bail)
			if !ok {
				panic(p)
			}
			m, err = nil, b.err
			r.err = err
		}
	}()
	return r.message(), nil
}

func (r *Reader) fail(err error, format string, args ...any) {
	panic(bail{&SyntaxError{Offset: r.off, Msg: fmt.Sprintf(format, args...), Err: err}})
}

func (r *Reader) count(k int) {
	r.n += k
	r.off += int64(k)
	if r.n > r.lim.MaxMessage {
		r.fail(ErrLimit, "message longer than %d octets", r.lim.MaxMessage)
	}
}

func (r *Reader) peek() byte {
	b, err := r.br.Peek(1)
	if err != nil {
		r.ioFail(err)
	}
	return b[0]
}

func (r *Reader) next() byte {
	c, err := r.br.ReadByte()
	if err != nil {
		r.ioFail(err)
	}
	r.count(1)
	return c
}

func (r *Reader) ioFail(err error) {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		r.fail(io.ErrUnexpectedEOF, "stream ended inside a message")
	}
	panic(bail{fmt.Errorf("ocp: read: %w", err)})
}

func (r *Reader) expect(want byte, what string) {
	if c := r.next(); c != want {
		r.fail(nil, "expected %s, found %s", what, quoteByte(c))
	}
}

func (r *Reader) crlf() {
	r.expect('\r', "CRLF")
	r.expect('\n', "LF after CR")
}

func quoteByte(c byte) string {
	if c >= 0x21 && c < 0x7f {
		return fmt.Sprintf("%q", rune(c))
	}
	return fmt.Sprintf("0x%02x", c)
}

func (r *Reader) message() *Message {
	m := &Message{Name: r.name()}
	if r.peek() == ' ' {
		r.next()
		m.Anon = r.anon(0)
	}
	c := r.next()
	if c == '\r' {
		r.expect('\n', "LF after CR")
		if isAlpha(r.peek()) {
			m.Named = r.named(0)
			c = r.next()
			if c == '\r' {
				r.expect('\n', "LF after CR")
				r.payload(m)
				c = r.next()
			}
		} else {
			r.payload(m)
			c = r.next()
		}
	}
	if c != ';' {
		r.fail(nil, "expected ';' ending message %s, found %s", m.Name, quoteByte(c))
	}
	r.crlf()
	return m
}

func (r *Reader) payload(m *Message) {
	if c := r.peek(); c < '0' || c > '9' {
		r.fail(nil, "expected payload size, found %s", quoteByte(c))
	}
	m.Payload = r.data()
	m.HasPayload = true
	r.crlf()
}

func (r *Reader) name() string {
	c := r.next()
	if !isAlpha(c) {
		r.fail(nil, "expected a name, found %s", quoteByte(c))
	}
	b := []byte{c}
	for isSafe(r.peek()) {
		b = append(b, r.next())
	}
	return string(b)
}

// anon reads value *(SP value).
func (r *Reader) anon(depth int) []Value {
	var out []Value
	for {
		if len(out) >= r.lim.MaxItems {
			r.fail(ErrLimit, "more than %d anonymous values", r.lim.MaxItems)
		}
		out = append(out, r.value(depth))
		if r.peek() != ' ' {
			return out
		}
		r.next()
	}
}

// named reads named-value *(CRLF named-value) CRLF: the CRLF that ends
// the block is consumed too.
func (r *Reader) named(depth int) []Param {
	var out []Param
	for {
		if len(out) >= r.lim.MaxItems {
			r.fail(ErrLimit, "more than %d named values", r.lim.MaxItems)
		}
		name := r.name()
		for _, p := range out {
			if p.Name == name {
				r.fail(nil, "parameter %s given twice", name)
			}
		}
		r.expect(':', "':' after "+name)
		r.expect(' ', "SP after "+name+":")
		p := Param{Name: name, Values: []Value{r.value(depth)}}
		// RFC 4037 §11.9 writes "Kept: org-offset org-size": accept the
		// extra SP-separated values (see Param).
		for r.peek() == ' ' {
			r.next()
			if len(p.Values) >= r.lim.MaxItems {
				r.fail(ErrLimit, "more than %d values of %s", r.lim.MaxItems, name)
			}
			p.Values = append(p.Values, r.value(depth))
		}
		out = append(out, p)
		r.crlf()
		if !isAlpha(r.peek()) {
			return out
		}
	}
}

func (r *Reader) value(depth int) Value {
	if depth >= r.lim.MaxDepth {
		r.fail(ErrLimit, "values nested deeper than %d", r.lim.MaxDepth)
	}
	switch c := r.peek(); {
	case c == '{':
		return r.structure(depth + 1)
	case c == '(':
		return r.list(depth + 1)
	case c == '"':
		r.next()
		v := r.data()
		r.expect('"', "'\"' after quoted data")
		return Atom(v)
	case isSafe(c):
		var b []byte
		for isSafe(r.peek()) {
			b = append(b, r.next())
		}
		return Atom(b)
	default:
		r.fail(nil, "expected a value, found %s", quoteByte(c))
	}
	return nil
}

func (r *Reader) structure(depth int) Value {
	r.expect('{', "'{'")
	s := &Struct{}
	c := r.peek()
	if c != '}' && c != '\r' {
		s.Anon = r.anon(depth)
		c = r.peek()
	}
	if c == '\r' {
		r.crlf()
		s.Named = r.named(depth)
	}
	r.expect('}', "'}' ending a structure")
	return s
}

func (r *Reader) list(depth int) Value {
	r.expect('(', "'('")
	l := List{}
	if r.peek() == ')' {
		r.next()
		return l
	}
	for {
		if len(l) >= r.lim.MaxItems {
			r.fail(ErrLimit, "list longer than %d items", r.lim.MaxItems)
		}
		l = append(l, r.value(depth))
		switch c := r.next(); c {
		case ',':
		case ')':
			return l
		default:
			r.fail(nil, "expected ',' or ')' in a list, found %s", quoteByte(c))
		}
	}
}

// data reads size ":" octets.
func (r *Reader) data() []byte {
	var digits []byte
	for {
		c := r.peek()
		if c < '0' || c > '9' {
			break
		}
		if len(digits) >= 10 {
			r.fail(nil, "size has more than 10 digits")
		}
		digits = append(digits, r.next())
	}
	size, ok := parseDec(string(digits))
	if !ok {
		r.fail(nil, "invalid size %q (decimal, no leading zeros, at most %d)", digits, MaxUni)
	}
	r.expect(':', "':' after size")
	if int64(r.n)+int64(size) > int64(r.lim.MaxMessage) {
		r.fail(ErrLimit, "data of %d octets makes the message longer than %d octets", size, r.lim.MaxMessage)
	}
	b := make([]byte, size)
	k, err := io.ReadFull(r.br, b)
	r.off += int64(k)
	r.n += k
	if err != nil {
		r.ioFail(err)
	}
	return b
}
