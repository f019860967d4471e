package policy

import (
	"encoding"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// The tables a service kind ([service.options]) or the condition of a rule
// ([rule.when]) reads are decoded with toml's PrimitiveDecode into types
// this package does not know. PrimitiveDecode stops at the first mismatch,
// in map order, and MetaData.Undecoded names keys without array indexes
// (and shares them between every [[service]]), so neither can say "the
// third entry of the second service". typeCheck walks the raw value
// against the destination type first, the way toml's unify would, and
// reports every mismatch and every key the type has no field for, each
// with its full path. Only when it finds nothing does PrimitiveDecode run.

var (
	primitiveType    = reflect.TypeFor[toml.Primitive]()
	unmarshalerType  = reflect.TypeFor[toml.Unmarshaler]()
	textUnmarshaler  = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType     = reflect.TypeFor[time.Duration]()
	jsonNumberType   = reflect.TypeFor[json.Number]()
	maxSafeFloat64   = int64(1 << 53)
	maxSafeFloat32   = int64(1 << 24)
	maxTypeCheckDeep = 64
)

// problem is an error found while checking, not yet given a position.
type problem struct {
	p     path // the value the message is about
	atKey bool // point at the key rather than the value
	msg   string
}

type typeCheck struct {
	unknown  []problem // keys without a field
	mismatch []problem // values of the wrong type
}

func (c *typeCheck) check(data any, t reflect.Type, p path) {
	c.value(data, t, p, 0)
}

func (c *typeCheck) bad(p path, format string, args ...any) {
	c.mismatch = append(c.mismatch, problem{p: p, msg: p.String() + ": " + fmt.Sprintf(format, args...)})
}

func (c *typeCheck) value(data any, t reflect.Type, p path, depth int) {
	if data == nil || depth > maxTypeCheckDeep {
		return
	}
	for t.Kind() == reflect.Pointer {
		if t.Implements(unmarshalerType) || t.Implements(textUnmarshaler) {
			break
		}
		t = t.Elem()
	}
	if t == primitiveType {
		return
	}
	pt := t
	if t.Kind() != reflect.Pointer {
		pt = reflect.PointerTo(t)
	}
	if pt.Implements(unmarshalerType) {
		return // the type decodes itself; nothing to check from outside
	}
	if pt.Implements(textUnmarshaler) {
		c.text(data, pt, p)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := data.(map[string]any)
		if !ok {
			c.bad(p, "expected a table, found %s", tomlType(data))
			return
		}
		fields := structFields(t)
		names := make([]string, 0, len(fields))
		for name := range fields {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, k := range sortedKeys(m) {
			f, ok := fields[k]
			if !ok {
				c.unknown = append(c.unknown, problem{p: p.key(k), atKey: true,
					msg: fmt.Sprintf("%s: unknown key %q%s", p, k, suggest(k, names))})
				continue
			}
			c.value(m[k], f, p.key(k), depth+1)
		}
	case reflect.Map:
		if kk := t.Key().Kind(); kk != reflect.String && kk != reflect.Interface {
			c.bad(p, "cannot be decoded into %s (internal error)", t)
			return
		}
		m, ok := data.(map[string]any)
		if !ok {
			c.bad(p, "expected a table, found %s", tomlType(data))
			return
		}
		for _, k := range sortedKeys(m) {
			c.value(m[k], t.Elem(), p.key(k), depth+1)
		}
	case reflect.Slice, reflect.Array:
		rv := reflect.ValueOf(data)
		if rv.Kind() != reflect.Slice {
			c.bad(p, "expected an array, found %s", tomlType(data))
			return
		}
		if t.Kind() == reflect.Array && rv.Len() != t.Len() {
			c.bad(p, "expected an array of %d elements, found %d", t.Len(), rv.Len())
			return
		}
		for i := 0; i < rv.Len(); i++ {
			c.value(rv.Index(i).Interface(), t.Elem(), p.index(i+1), depth+1)
		}
	case reflect.String:
		switch data.(type) {
		case string:
		case int64, float64:
			if t != jsonNumberType {
				c.bad(p, "expected a string, found %s", tomlType(data))
			}
		default:
			c.bad(p, "expected a string, found %s", tomlType(data))
		}
	case reflect.Bool:
		if _, ok := data.(bool); !ok {
			c.bad(p, "expected a boolean (true or false), found %s", tomlType(data))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if t == durationType {
			if s, ok := data.(string); ok {
				if _, err := time.ParseDuration(s); err != nil {
					c.bad(p, "invalid duration %q (want e.g. \"30s\", \"5m\")", s)
				}
				return
			}
		}
		n, ok := data.(int64)
		if !ok {
			if t == durationType {
				c.bad(p, "expected a duration such as \"30s\", found %s", tomlType(data))
			} else {
				c.bad(p, "expected an integer, found %s", tomlType(data))
			}
			return
		}
		bits := t.Bits()
		if bits < 64 && (n < -1<<(bits-1) || n > 1<<(bits-1)-1) {
			c.bad(p, "%d is out of range for a %d-bit integer", n, bits)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := data.(int64)
		if !ok {
			c.bad(p, "expected an integer, found %s", tomlType(data))
			return
		}
		if n < 0 {
			c.bad(p, "must not be negative, got %d", n)
		} else if bits := t.Bits(); bits < 64 && uint64(n) > 1<<bits-1 {
			c.bad(p, "%d is out of range for a %d-bit unsigned integer", n, bits)
		}
	case reflect.Float32, reflect.Float64:
		switch n := data.(type) {
		case float64:
			if t.Kind() == reflect.Float32 && !math.IsInf(n, 0) && !math.IsNaN(n) && math.Abs(n) > math.MaxFloat32 {
				c.bad(p, "%g is out of range for float32", n)
			}
		case int64:
			limit := maxSafeFloat64
			if t.Kind() == reflect.Float32 {
				limit = maxSafeFloat32
			}
			if n < -limit || n > limit {
				c.bad(p, "%d cannot be represented exactly as a float", n)
			}
		default:
			c.bad(p, "expected a number, found %s", tomlType(data))
		}
	case reflect.Interface:
		if t.NumMethod() > 0 {
			c.bad(p, "cannot be decoded into %s (internal error)", t)
		}
	default:
		c.bad(p, "cannot be decoded into %s (internal error)", t)
	}
}

// text mirrors toml's handling of encoding.TextUnmarshaler: the value is
// turned into text and the type's own UnmarshalText judges it, on a fresh
// value so nothing of the destination is touched.
func (c *typeCheck) text(data any, pt reflect.Type, p path) {
	var s string
	switch v := data.(type) {
	case string:
		s = v
	case bool:
		s = strconv.FormatBool(v)
	case int64:
		s = strconv.FormatInt(v, 10)
	case float64:
		s = fmt.Sprintf("%f", v)
	case encoding.TextMarshaler:
		b, err := v.MarshalText()
		if err != nil {
			c.bad(p, "%v", err)
			return
		}
		s = string(b)
	default:
		c.bad(p, "expected a string, found %s", tomlType(data))
		return
	}
	if pt.Elem().Kind() == reflect.Pointer {
		return // **T: nothing sensible to instantiate
	}
	u, ok := reflect.New(pt.Elem()).Interface().(encoding.TextUnmarshaler)
	if !ok {
		return
	}
	if err := u.UnmarshalText([]byte(s)); err != nil {
		c.bad(p, "%v", err)
	}
}

// structFields lists the keys toml decodes into a struct, with the type
// each one takes, following toml's rules: a tag names the field, "-"
// hides it, untagged embedded structs lend their fields, a shallower
// field hides a deeper one and a tagged field wins a tie.
func structFields(t reflect.Type) map[string]reflect.Type {
	type cand struct {
		typ    reflect.Type
		depth  int
		tagged bool
		n      int // candidates at this depth and tag state
	}
	found := map[string]*cand{}
	visited := map[reflect.Type]bool{}
	level := []reflect.Type{t}
	for depth := 0; len(level) > 0 && depth < maxTypeCheckDeep; depth++ {
		var next []reflect.Type
		for _, st := range level {
			if visited[st] {
				continue
			}
			visited[st] = true
			for i := 0; i < st.NumField(); i++ {
				sf := st.Field(i)
				if !sf.IsExported() && !sf.Anonymous {
					continue
				}
				tag := sf.Tag.Get("toml")
				if tag == "-" {
					continue
				}
				name := tagName(tag)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
					next = append(next, ft)
					continue
				}
				if name == "" {
					name = sf.Name
				}
				tagged := name != "" && name == tagName(tag)
				c, ok := found[name]
				switch {
				case !ok:
					found[name] = &cand{typ: sf.Type, depth: depth, tagged: tagged, n: 1}
				case c.depth < depth:
				case tagged && !c.tagged:
					*c = cand{typ: sf.Type, depth: depth, tagged: true, n: 1}
				case tagged == c.tagged:
					c.n++
				}
			}
		}
		level = next
	}
	out := map[string]reflect.Type{}
	for name, c := range found {
		if c.n == 1 {
			out[name] = c.typ
		}
	}
	return out
}

func tagName(tag string) string {
	name, _, _ := strings.Cut(tag, ",")
	return name
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// tomlType names the TOML type of a decoded value for messages.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}
