package ocp

import (
	"errors"
	"fmt"
	"strconv"
)

// Value is an OCP value (RFC 4037 §3.1): an Atom, a List or a *Struct.
type Value interface{ ocpValue() }

// Atom is an atomic value. On the wire it is a bare value when it consists
// of letters, digits, '-' and '_' only, and a quoted, size-prefixed value
// otherwise; both spellings mean the same (§3.1), so the type holds the
// decoded octets.
type Atom string

// List is a comma-separated list of values.
type List []Value

// Struct is a structure: positional (anonymous) members followed by named
// ones.
type Struct struct {
	Anon  []Value
	Named []Param
}

func (Atom) ocpValue()    {}
func (List) ocpValue()    {}
func (*Struct) ocpValue() {}

// Param is a named parameter. Values holds one value, except for the
// parameters RFC 4037 itself writes with several space-separated values
// (§11.9 "Kept: org-offset org-size"): the ABNF's named-value allows one,
// so the codec accepts and produces SP-separated extra values there.
type Param struct {
	Name   string
	Values []Value
}

// Value returns the first value of the parameter.
func (p Param) Value() Value {
	if len(p.Values) == 0 {
		return nil
	}
	return p.Values[0]
}

// Message is one OCP message.
type Message struct {
	Name  string
	Anon  []Value
	Named []Param
	// Payload is the data of a message that carries one (DUM); HasPayload
	// tells an empty payload ("0:") from none.
	Payload    []byte
	HasPayload bool
}

// NewMessage builds a message with anonymous parameters.
func NewMessage(name string, anon ...Value) *Message { return &Message{Name: name, Anon: anon} }

// With adds a named parameter and returns m.
func (m *Message) With(name string, v ...Value) *Message {
	m.Named = append(m.Named, Param{Name: name, Values: v})
	return m
}

// WithPayload sets the payload and returns m.
func (m *Message) WithPayload(p []byte) *Message {
	m.Payload, m.HasPayload = p, true
	return m
}

// Param returns the named parameter's first value, or nil.
func (m *Message) Param(name string) Value { return findParam(m.Named, name) }

// ParamValues returns every value of the named parameter, or nil.
func (m *Message) ParamValues(name string) []Value {
	for _, p := range m.Named {
		if p.Name == name {
			return p.Values
		}
	}
	return nil
}

// Param returns the structure's named member's first value, or nil.
func (s *Struct) Param(name string) Value { return findParam(s.Named, name) }

func findParam(ps []Param, name string) Value {
	for _, p := range ps {
		if p.Name == name {
			return p.Value()
		}
	}
	return nil
}

// Errors for values that parse but have the wrong type or range: they make
// the message semantically invalid (RFC 4037 §5).
var (
	ErrMissing = errors.New("ocp: required parameter missing")
	ErrType    = errors.New("ocp: parameter has the wrong type")
)

// MaxUni is the largest uni, size and offset (RFC 4037 §10.2–10.4).
const MaxUni = 2147483647

// AtomOf returns v as an atom.
func AtomOf(v Value) (Atom, error) {
	switch a := v.(type) {
	case Atom:
		return a, nil
	case nil:
		return "", ErrMissing
	}
	return "", fmt.Errorf("%w: want an atom, got %s", ErrType, kind(v))
}

// ListOf returns v as a list; an absent value is an empty list (§9).
func ListOf(v Value) (List, error) {
	switch l := v.(type) {
	case List:
		return l, nil
	case nil:
		return nil, nil
	}
	return nil, fmt.Errorf("%w: want a list, got %s", ErrType, kind(v))
}

// StructOf returns v as a structure.
func StructOf(v Value) (*Struct, error) {
	switch s := v.(type) {
	case *Struct:
		return s, nil
	case nil:
		return nil, ErrMissing
	}
	return nil, fmt.Errorf("%w: want a structure, got %s", ErrType, kind(v))
}

// Uni parses a uni, size or offset: a dec-number without leading zeros
// in [0, 2147483647].
func Uni(v Value) (uint32, error) {
	a, err := AtomOf(v)
	if err != nil {
		return 0, err
	}
	n, ok := parseDec(string(a))
	if !ok {
		return 0, fmt.Errorf("%w: %q is not a number in [0, %d]", ErrType, truncate(string(a)), MaxUni)
	}
	return n, nil
}

// Bool parses a boolean atom; an absent value is false.
func Bool(v Value) (bool, error) {
	if v == nil {
		return false, nil
	}
	a, err := AtomOf(v)
	if err != nil {
		return false, err
	}
	switch a {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%w: %q is not a boolean", ErrType, truncate(string(a)))
}

// UniAtom renders a number as an atom.
func UniAtom(n uint32) Atom { return Atom(strconv.FormatUint(uint64(n), 10)) }

// parseDec accepts dec-number ≤ MaxUni, no leading zeros or signs.
func parseDec(s string) (uint32, bool) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if n > MaxUni {
		return 0, false
	}
	return uint32(n), true
}

// Result codes (RFC 4037 §10.10).
const (
	CodeOK      = 200
	CodePartial = 206
	CodeFailure = 400
)

// Result is the result structure of CE, TE and AME: a code and an
// optional reason.
type Result struct {
	Code   int
	Reason string
}

// OK is the success result.
var OK = Result{Code: CodeOK, Reason: "OK"}

// Failure returns a 400 result with a reason.
func Failure(reason string) Result { return Result{Code: CodeFailure, Reason: reason} }

// Value renders the result as {code reason}.
func (r Result) Value() Value {
	s := &Struct{Anon: []Value{Atom(strconv.Itoa(r.Code))}}
	if r.Reason != "" {
		s.Anon = append(s.Anon, Atom(r.Reason))
	}
	return s
}

// Failed reports whether the result indicates a failure. Unknown codes
// count as 400 (§10.10).
func (r Result) Failed() bool { return r.Code != CodeOK && r.Code != CodePartial }

func (r Result) String() string {
	if r.Reason == "" {
		return strconv.Itoa(r.Code)
	}
	return strconv.Itoa(r.Code) + " " + truncate(r.Reason)
}

// ParseResult reads an optional result: absent means 200 (§10.10); an
// unknown code is kept as it is and Failed reports it as a failure.
func ParseResult(v Value) (Result, error) {
	if v == nil {
		return Result{Code: CodeOK}, nil
	}
	s, err := StructOf(v)
	if err != nil {
		return Result{}, err
	}
	if len(s.Anon) == 0 {
		return Result{}, fmt.Errorf("%w: result without a code", ErrMissing)
	}
	code, err := Uni(s.Anon[0])
	if err != nil || code < 100 || code > 999 {
		return Result{}, fmt.Errorf("%w: result code", ErrType)
	}
	r := Result{Code: int(code)}
	if len(s.Anon) > 1 {
		a, err := AtomOf(s.Anon[1])
		if err != nil {
			return Result{}, fmt.Errorf("result reason: %w", err)
		}
		r.Reason = string(a)
	}
	return r, nil
}

func kind(v Value) string {
	switch v.(type) {
	case Atom:
		return "atom"
	case List:
		return "list"
	case *Struct:
		return "structure"
	}
	return fmt.Sprintf("%T", v)
}

// truncate keeps error messages about hostile input short.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// reason renders an error as the reason of a failure result, bounded.
func reason(err error) string {
	s := err.Error()
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
