package policy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
)

// The keys each table of the file accepts; docs/configuration.md and
// default.toml describe them.
var (
	topKeys    = []string{"system", "milter", "admin", "report", "limits", "consent", "bypass", "store", "quarantine", "ndr", "audit", "service", "rule"}
	systemKeys = []string{"uri", "privacy_url", "contact", "trace_detail", "operator", "privacy_policy", "retention"}
	milterKeys = []string{"listen", "read_timeout", "write_timeout", "shutdown_timeout", "socket_mode", "socket_group"}
	adminKeys  = []string{"listen", "allow_remote", "token_file"}
	reportKeys = []string{"transactions", "addresses", "measure_size", "incidents", "webhook", "webhook_timeout",
		"syslog", "syslog_facility", "syslog_tag", "syslog_hostname", "syslog_max_size"}
	limitsKeys  = []string{"max_message_size", "max_header_fields", "max_header_bytes", "body_memory", "temp_dir"}
	serviceKeys = []string{"name", "kind", "uri", "bypassable", "required_for_delivery", "modify_signed", "on_error", "options"}
	ruleKeys    = []string{"name", "stage", "run", "verdict", "reply", "code", "enhanced", "reason", "when"}
)

// maxText bounds free text that ends up in SMTP replies and logs; it is
// the processor's limit for the human text of a reply.
const maxText = 200

// loader collects every problem of one file instead of stopping at the
// first, so an administrator fixes a file in one round.
type loader struct {
	file   string
	src    string
	idx    *posIndex
	md     toml.MetaData
	errs   Errors
	sysURI string          // the system URI once it is known to be valid
	uris   map[string]path // service and rule URIs → the block using each
	deps   builtin.Deps
}

// report records msg at the key or the value of p (or its nearest
// ancestor in the file, for things that are missing).
func (l *loader) report(p path, atKey bool, msg string) {
	at := pos{1, 1}
	if l.idx != nil && len(p) > 0 {
		sp, _ := l.idx.lookup(p)
		at = sp.val
		if atKey {
			at = sp.key
		}
	}
	l.errs = append(l.errs, Error{File: l.file, Line: at.line, Col: at.col, Msg: msg})
}

// errorf reports a problem with the value at p, naming p.
func (l *loader) errorf(p path, format string, args ...any) {
	l.report(p, false, p.String()+": "+fmt.Sprintf(format, args...))
}

func (l *loader) problems(ps []problem) {
	for _, pr := range ps {
		l.report(pr.p, pr.atKey, pr.msg)
	}
}

// tomlDecode guards against a panic in the parser: a configuration error
// must be reported, never crash the daemon.
func tomlDecode(src string, v any) (md toml.MetaData, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error in the TOML parser (please report): %v", r)
		}
	}()
	return toml.Decode(src, v)
}

func (l *loader) syntaxError(err error) {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		l.errs = append(l.errs, Error{File: l.file, Line: 1, Col: 1, Msg: err.Error()})
		return
	}
	line, col := max(pe.Position.Line, 1), max(pe.Position.Col, 1)
	if n := lineLen(l.src, line); n >= 0 && col > n+1 {
		col = n + 1
	}
	l.errs = append(l.errs, Error{File: l.file, Line: line, Col: col, Msg: pe.Message})
}

func (l *loader) load() *Config {
	if len(l.src) > maxFileSize {
		l.errs = append(l.errs, Error{File: l.file, Line: 1, Col: 1, Msg: fmt.Sprintf("file is larger than %d bytes", maxFileSize)})
		return nil
	}
	idx, limit := buildIndex(l.src)
	if limit != nil {
		limit.File = l.file
		l.errs = append(l.errs, *limit)
		return nil
	}
	// Two views of the same text: plain values to check, and Primitives
	// so that the tables services and conditions read can be decoded
	// into their own types.
	var top map[string]toml.Primitive
	md, err := tomlDecode(l.src, &top)
	if err != nil {
		l.syntaxError(err)
		return nil
	}
	l.md = md
	var raw map[string]any
	if _, err := tomlDecode(l.src, &raw); err != nil {
		l.syntaxError(err)
		return nil
	}
	l.idx = idx

	root, _ := l.table(raw, nil, topKeys)
	pol := &opes.Policy{}
	cfg := &Config{Policy: pol, Source: l.file}
	l.system(root.m["system"], &pol.System)
	l.milter(root.m["milter"], &cfg.Milter)
	l.admin(root.m["admin"], &cfg.Admin)
	l.reportSection(root.m["report"], &cfg.Report)
	l.limits(root.m["limits"], &pol.Limits)
	_, hasConsent := root.m["consent"]
	pol.Consent = l.consent(root.m["consent"], hasConsent)
	l.bypassSection(root.m["bypass"], &pol.Bypass)
	l.storeSection(root.m["store"], &cfg.Store)
	l.quarantineSection(root.m["quarantine"], &cfg.Quarantine, &cfg.Store)
	l.ndrSection(root.m["ndr"], &cfg.NDR)
	l.auditSection(root.m["audit"], &cfg.Audit)
	if cfg.Admin.TokenFile != "" && cfg.Store.Backend != "" && cfg.Audit.Log == "" {
		l.errorf(path{{key: "admin"}, {key: "token_file"}}, "with a [store] the API changes bypass preferences, which must be audit-logged: set [audit] log")
	}
	for i, spec := range pol.Services {
		if m, ok := spec.Impl.(interface{ SendsMail() bool }); ok && m.SendsMail() && (cfg.NDR.Relay == "" || cfg.Store.Backend == "") {
			l.errorf(path{{key: "service"}}.index(i+1).key("kind"), "service %q sends mail: it needs a [store] (the outbox) and [ndr] relay", spec.Name)
		}
	}
	if cfg.NDR.Relay != "" && cfg.Store.Backend == "" {
		l.errorf(path{{key: "ndr"}, {key: "relay"}}, "needs a [store]: reports are queued in its outbox before the MTA is answered")
	}
	svcs := l.services(root.m["service"], top["service"], pol)
	l.rules(root.m["rule"], top["rule"], svcs, pol)
	if len(l.errs) == 0 {
		// Everything Validate checks was checked above with positions;
		// this catches a gap between the two.
		if err := pol.Validate(); err != nil {
			l.report(nil, false, "policy: "+err.Error())
		}
	}
	return cfg
}

// table is one TOML table of the file being checked.
type table struct {
	l *loader
	p path
	m map[string]any
}

// table checks that v is a table with only known keys. A missing table
// (v == nil) is an empty one.
func (l *loader) table(v any, p path, known []string) (table, bool) {
	t := table{l: l, p: p}
	if v == nil {
		return t, true
	}
	m, ok := v.(map[string]any)
	if !ok {
		l.errorf(p, "expected a table, found %s", tomlType(v))
		return t, false
	}
	t.m = m
	for _, k := range sortedKeys(m) {
		if slices.Contains(known, k) {
			continue
		}
		where := "unknown top-level key"
		if len(p) > 0 {
			where = p.String() + ": unknown key"
		}
		l.report(p.key(k), true, fmt.Sprintf("%s %q%s", where, k, suggest(k, known)))
	}
	return t, true
}

// tableArray returns the elements of an array of tables ([[name]] blocks
// or an inline array of tables).
func (l *loader) tableArray(v any, p path) []any {
	switch a := v.(type) {
	case nil:
		return nil
	case []map[string]any:
		out := make([]any, len(a))
		for i, m := range a {
			out[i] = m
		}
		return out
	case []any:
		return a
	}
	l.errorf(p, "expected [[%s]] blocks, found %s", p, tomlType(v))
	return nil
}

func (t table) has(k string) bool {
	_, ok := t.m[k]
	return ok
}

func (t table) wrongType(k, want string) {
	t.l.errorf(t.p.key(k), "expected %s, found %s", want, tomlType(t.m[k]))
}

// str returns the string at k; ok is false when k is absent or not a
// string (which is reported).
func (t table) str(k string) (string, bool) {
	v, ok := t.m[k]
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	if !ok {
		t.wrongType(k, "a string")
	}
	return s, ok
}

func (t table) boolean(k string) (bool, bool) {
	v, ok := t.m[k]
	if !ok {
		return false, false
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType(k, "a boolean (true or false)")
	}
	return b, ok
}

func (t table) integer(k string) (int64, bool) {
	v, ok := t.m[k]
	if !ok {
		return 0, false
	}
	n, ok := v.(int64)
	if !ok {
		t.wrongType(k, "an integer")
	}
	return n, ok
}

// size reads a non-negative integer that must fit an int.
func (t table) size(k string) (int, bool) {
	n, ok := t.integer(k)
	if !ok {
		return 0, false
	}
	if n < 0 || n > math.MaxInt32 {
		t.l.errorf(t.p.key(k), "%d is out of range 0-%d", n, math.MaxInt32)
		return 0, false
	}
	return int(n), true
}

// strings reads an array of strings, reporting each element that is not
// one.
func (t table) strings(k string) ([]string, bool) {
	v, ok := t.m[k]
	if !ok {
		return nil, false
	}
	a, ok := v.([]any)
	if !ok {
		if s, isStr := v.(string); isStr {
			t.l.errorf(t.p.key(k), "expected an array of strings, found a string (write %s = [%q])", k, s)
		} else {
			t.wrongType(k, "an array of strings")
		}
		return nil, false
	}
	out := make([]string, 0, len(a))
	for i, e := range a {
		s, isStr := e.(string)
		if !isStr {
			t.l.errorf(t.p.key(k).index(i+1), "expected a string, found %s", tomlType(e))
			ok = false
			continue
		}
		out = append(out, s)
	}
	return out, ok
}

// duration reads a Go duration string such as "10s"; negative values are
// refused.
func (t table) duration(k string) (time.Duration, bool) {
	v, ok := t.m[k]
	if !ok {
		return 0, false
	}
	s, ok := v.(string)
	if !ok {
		t.wrongType(k, `a duration string such as "10s"`)
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.l.errorf(t.p.key(k), `invalid duration %q (want e.g. "0s", "500ms", "10s", "2m")`, s)
		return 0, false
	}
	if d < 0 {
		t.l.errorf(t.p.key(k), "duration %s is negative", s)
		return 0, false
	}
	return d, true
}

// checkText accepts printable US-ASCII, as SMTP replies and header
// fields need.
func checkText(s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("longer than %d bytes", limit)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("byte 0x%02x at offset %d: only printable US-ASCII is allowed", c, i)
		}
	}
	return nil
}

// where describes the position of p for messages that point elsewhere.
func (l *loader) where(p path) string {
	sp, _ := l.idx.lookup(p)
	return fmt.Sprintf("line %d", sp.key.line)
}

// uniqueURI reports a second use of one URI: the trace records and
// bypass requests (RFC 3897) identify services and rules by URI alone.
// p is where the URI comes from, owner the block it names.
func (l *loader) uniqueURI(uri string, p, owner path) {
	if prev, ok := l.uris[uri]; ok {
		l.errorf(p, "URI %q is already used by %s (%s)", uri, prev, l.where(prev))
		return
	}
	if l.uris == nil {
		l.uris = map[string]path{}
	}
	l.uris[uri] = owner
}

// elementPrimitives splits the Primitive of an array of tables into one
// per element; nil entries where that is impossible (the problem is
// reported from the plain values).
func (l *loader) elementPrimitives(prim toml.Primitive, n int) []toml.Primitive {
	out := make([]toml.Primitive, n)
	var elems []toml.Primitive
	if n == 0 || l.primitiveDecode(prim, &elems) != nil || len(elems) != n {
		return out
	}
	return elems
}

func (l *loader) field(elem toml.Primitive, key string) (toml.Primitive, bool) {
	var fields map[string]toml.Primitive
	if l.primitiveDecode(elem, &fields) != nil {
		return toml.Primitive{}, false
	}
	p, ok := fields[key]
	return p, ok
}

func (l *loader) primitiveDecode(prim toml.Primitive, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error decoding TOML (please report): %v", r)
		}
	}()
	return l.md.PrimitiveDecode(prim, v)
}
