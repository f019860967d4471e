package policy

import (
	"strconv"
	"strings"
)

// A path names one value of the file the way error messages show it:
// keys joined by dots, 1-based indexes in brackets, e.g.
// service[2].options.entry[3].client[1]. The same spelling is used by
// opes.FieldError, so a service's error paths can be appended to the path
// of its options table.
type path []elem

// elem is a key, or an index when idx > 0.
type elem struct {
	key string
	idx int
}

func (p path) key(k string) path {
	q := make(path, len(p), len(p)+1)
	copy(q, p)
	return append(q, elem{key: k})
}

func (p path) index(i int) path {
	q := make(path, len(p), len(p)+1)
	copy(q, p)
	return append(q, elem{idx: i})
}

func (p path) join(q path) path {
	r := make(path, 0, len(p)+len(q))
	return append(append(r, p...), q...)
}

func (p path) String() string {
	var b strings.Builder
	for i, e := range p {
		if e.idx > 0 {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(e.idx))
			b.WriteByte(']')
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(quoteKey(e.key))
	}
	return b.String()
}

// quoteKey writes a key as TOML would need it: bare when possible.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for i := 0; i < len(k); i++ {
		if !isBareKeyByte(k[i]) {
			return strconv.Quote(k)
		}
	}
	return k
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// parsePath reads the Field of an opes.FieldError: bare or double-quoted
// keys separated by dots, each optionally followed by [n] indexes. It
// reports false for anything else, so that a malformed field from a
// service degrades to the position of the enclosing table.
func parsePath(s string) (path, bool) {
	var p path
	i := 0
	for i < len(s) {
		if len(p) > 0 {
			if s[i] == '[' {
				j := strings.IndexByte(s[i:], ']')
				if j < 0 {
					return nil, false
				}
				n, err := strconv.Atoi(s[i+1 : i+j])
				if err != nil || n < 1 {
					return nil, false
				}
				p = append(p, elem{idx: n})
				i += j + 1
				continue
			}
			if s[i] != '.' {
				return nil, false
			}
			i++
		}
		if i < len(s) && s[i] == '"' {
			j := i + 1
			for j < len(s) && s[j] != '"' {
				if s[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(s) {
				return nil, false
			}
			k, err := strconv.Unquote(s[i : j+1])
			if err != nil {
				return nil, false
			}
			p = append(p, elem{key: k})
			i = j + 1
			continue
		}
		j := i
		for j < len(s) && isBareKeyByte(s[j]) {
			j++
		}
		if j == i {
			return nil, false
		}
		p = append(p, elem{key: s[i:j]})
		i = j
	}
	return p, len(p) > 0
}
