package ocp

import (
	"fmt"
	"io"
	"strconv"
)

// Append appends the wire form of m (RFC 4037 §3.1) to b. It fails on
// names that the grammar does not allow and on nil values, so a bug in a
// caller cannot put an unparsable message on the wire.
func (m *Message) Append(b []byte) ([]byte, error) {
	if !isName(m.Name) {
		return b, fmt.Errorf("ocp: encode: invalid message name %q", truncate(m.Name))
	}
	if len(m.Payload) > MaxUni {
		return b, fmt.Errorf("ocp: encode %s: payload larger than %d octets", m.Name, MaxUni)
	}
	b = append(b, m.Name...)
	var err error
	for _, v := range m.Anon {
		b = append(b, ' ')
		if b, err = appendValue(b, v); err != nil {
			return b, fmt.Errorf("ocp: encode %s: %w", m.Name, err)
		}
	}
	if len(m.Named) > 0 {
		b = append(b, '\r', '\n')
		if b, err = appendNamed(b, m.Named); err != nil {
			return b, fmt.Errorf("ocp: encode %s: %w", m.Name, err)
		}
		b = append(b, '\r', '\n')
	}
	if m.HasPayload || m.Payload != nil {
		b = append(b, '\r', '\n')
		b = strconv.AppendInt(b, int64(len(m.Payload)), 10)
		b = append(b, ':')
		b = append(b, m.Payload...)
		b = append(b, '\r', '\n')
	}
	return append(b, ';', '\r', '\n'), nil
}

// Encode writes m to w in one Write call.
func Encode(w io.Writer, m *Message) error {
	b, err := m.Append(nil)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// String renders the message for logs and tests.
func (m *Message) String() string {
	b, err := m.Append(nil)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func appendNamed(b []byte, ps []Param) ([]byte, error) {
	var err error
	for i, p := range ps {
		if !isName(p.Name) {
			return b, fmt.Errorf("invalid parameter name %q", truncate(p.Name))
		}
		if len(p.Values) == 0 {
			return b, fmt.Errorf("parameter %s has no value", p.Name)
		}
		if i > 0 {
			b = append(b, '\r', '\n')
		}
		b = append(b, p.Name...)
		b = append(b, ':')
		for _, v := range p.Values {
			b = append(b, ' ')
			if b, err = appendValue(b, v); err != nil {
				return b, fmt.Errorf("parameter %s: %w", p.Name, err)
			}
		}
	}
	return b, nil
}

func appendValue(b []byte, v Value) ([]byte, error) {
	var err error
	switch v := v.(type) {
	case Atom:
		if isBare(string(v)) {
			return append(b, v...), nil
		}
		if len(v) > MaxUni {
			return b, fmt.Errorf("atom larger than %d octets", MaxUni)
		}
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(len(v)), 10)
		b = append(b, ':')
		b = append(b, v...)
		return append(b, '"'), nil
	case List:
		b = append(b, '(')
		for i, item := range v {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendValue(b, item); err != nil {
				return b, err
			}
		}
		return append(b, ')'), nil
	case *Struct:
		if v == nil {
			return b, fmt.Errorf("nil structure")
		}
		b = append(b, '{')
		for i, item := range v.Anon {
			if i > 0 {
				b = append(b, ' ')
			}
			if b, err = appendValue(b, item); err != nil {
				return b, err
			}
		}
		if len(v.Named) > 0 {
			b = append(b, '\r', '\n')
			if b, err = appendNamed(b, v.Named); err != nil {
				return b, err
			}
			b = append(b, '\r', '\n')
		}
		return append(b, '}'), nil
	}
	return b, fmt.Errorf("cannot encode %T", v)
}

func isSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isBare(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isSafe(s[i]) {
			return false
		}
	}
	return true
}

func isName(s string) bool { return s != "" && isAlpha(s[0]) && isBare(s) }
