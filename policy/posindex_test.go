package policy

import (
	"strings"
	"testing"
	"time"
)

// indexDoc exercises what must not confuse the scanner: multi-line
// strings holding text that looks like headers and keys, arrays spread
// over lines with comments, inline tables (TOML 1.1 lets them span
// lines), quoted and dotted keys, nested arrays of tables and CRLF.
const indexDoc = `# comment [[service]]
title = """
[[service]]
name = "fake"
"""""
lit = '''
[rule]
'''
[system]
uri = "https://x/opes/" # trailing [comment]
"quoted.key" = 1
a.b . 'c' = [
  # comment, with [brackets]
  "one", # 1
  [2, 3],
  { x = 1, y = [ "p", "q" ] },
]

[[service]]
name = "access"
[service.options]
[[service.options.entry]]
client = ["10.0.0.0/8",
          "192.0.2.1"]
[[service.options.entry]]
client = ["::1"]

[[service]]
name = "tag"
opts = { when = {
  client = ["x"],
}, other = 'lit' }
[[service.options.entry]]
action = "deny"
[[rule]]
when = { recipient = ["a@b"] }` + "\r\n" + `verdict = "reject"` + "\r\n" + `
[[rule]]
"na\u006De" = "two"
`

func TestIndex(t *testing.T) {
	x, lim := buildIndex(indexDoc)
	if lim != nil {
		t.Fatalf("limit: %v", lim)
	}
	tests := []struct {
		path     string
		key, val pos
	}{
		{"title", pos{2, 1}, pos{2, 9}},
		{"lit", pos{6, 1}, pos{6, 7}},
		{"system", pos{9, 1}, pos{9, 1}},
		{"system.uri", pos{10, 1}, pos{10, 7}},
		{`system."quoted.key"`, pos{11, 1}, pos{11, 16}},
		{"system.a", pos{12, 1}, pos{12, 1}},
		{"system.a.b.c", pos{12, 1}, pos{12, 13}},
		{"system.a.b.c[1]", pos{14, 3}, pos{14, 3}},
		{"system.a.b.c[2]", pos{15, 3}, pos{15, 3}},
		{"system.a.b.c[2][2]", pos{15, 7}, pos{15, 7}},
		{"system.a.b.c[3]", pos{16, 3}, pos{16, 3}},
		{"system.a.b.c[3].y", pos{16, 12}, pos{16, 16}},
		{"system.a.b.c[3].y[2]", pos{16, 23}, pos{16, 23}},
		{"service", pos{19, 1}, pos{19, 1}},
		{"service[1]", pos{19, 1}, pos{19, 1}},
		{"service[1].name", pos{20, 1}, pos{20, 8}},
		{"service[1].options", pos{21, 1}, pos{21, 1}},
		{"service[1].options.entry[1]", pos{22, 1}, pos{22, 1}},
		{"service[1].options.entry[1].client[2]", pos{24, 11}, pos{24, 11}},
		{"service[1].options.entry[2].client[1]", pos{26, 11}, pos{26, 11}},
		{"service[2]", pos{28, 1}, pos{28, 1}},
		{"service[2].opts.when.client[1]", pos{31, 13}, pos{31, 13}},
		{"service[2].opts.other", pos{32, 4}, pos{32, 12}},
		{"service[2].options.entry[1].action", pos{34, 1}, pos{34, 10}},
		{"rule[1].when.recipient[1]", pos{36, 23}, pos{36, 23}},
		{"rule[1].verdict", pos{37, 1}, pos{37, 11}},
		{"rule[2].name", pos{40, 1}, pos{40, 15}},
	}
	for _, tt := range tests {
		p, ok := parsePath(tt.path)
		if !ok {
			t.Fatalf("parsePath(%q) failed", tt.path)
		}
		sp, exact := x.lookup(p)
		if !exact || sp.key != tt.key || sp.val != tt.val {
			t.Errorf("lookup(%s) = %+v exact=%v; want key %v val %v", tt.path, sp, exact, tt.key, tt.val)
		}
	}
	for _, bogus := range []string{"fake", "service[3]", "rule[3]", "name"} {
		if x.has(mustPath(t, bogus)) {
			t.Errorf("index has %s, which only appears inside a string", bogus)
		}
	}
	// Fallback to the nearest ancestor.
	sp, exact := x.lookup(mustPath(t, "service[1].options.entry[2].client[7].x"))
	if exact || sp.val != (pos{26, 10}) {
		t.Errorf("fallback = %+v exact=%v; want client's value at 26:10", sp, exact)
	}
	sp, exact = x.lookup(mustPath(t, "nothing.here"))
	if exact || sp.val != (pos{1, 1}) {
		t.Errorf("fallback without ancestor = %+v; want 1:1", sp)
	}
}

func mustPath(t *testing.T, s string) path {
	t.Helper()
	p, ok := parsePath(s)
	if !ok {
		t.Fatalf("parsePath(%q) failed", s)
	}
	return p
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		in, out string
		ok      bool
	}{
		{"client[2]", "client[2]", true},
		{"entry[2].client[1]", "entry[2].client[1]", true},
		{`a."b.c"[3][4].d`, `a."b.c"[3][4].d`, true},
		{"a", "a", true},
		{"", "", false},
		{"[1]", "", false},
		{"a[0]", "", false},
		{"a[x]", "", false},
		{"a[1", "", false},
		{"a..b", "", false},
		{"a.", "", false},
		{`a."b`, "", false},
		{"a b", "", false},
	}
	for _, tt := range tests {
		p, ok := parsePath(tt.in)
		if ok != tt.ok || ok && p.String() != tt.out {
			t.Errorf("parsePath(%q) = %q, %v; want %q, %v", tt.in, p, ok, tt.out, tt.ok)
		}
	}
}

func FuzzIndex(f *testing.F) {
	f.Add(indexDoc)
	f.Add("a = [\n{b = '''\n'''}, \"\"\"x\"\"\"\"\" ]\n[[c.d]]\n[c.d.e]\n")
	f.Fuzz(func(t *testing.T, src string) {
		x, _ := buildIndex(src)
		lines := strings.Count(src, "\n") + 1
		for k, sp := range x.spans {
			for _, p := range []pos{sp.key, sp.val} {
				if p.line < 1 || p.line > lines || p.col < 1 {
					t.Fatalf("%s at %+v outside the text", k, p)
				}
			}
		}
	})
}

// FuzzIndexAgrees checks the scanner against the TOML parser: in any
// document the parser accepts, every value it decodes has a recorded
// position.
func FuzzIndexAgrees(f *testing.F) {
	f.Add(indexDoc)
	f.Add("[a.b.c]\nd = 1\n[[a.e]]\n[[a.e]]\nf = [[1], {g = 2}]\n")
	f.Add("\"\\u0041\\e\" = { 'x y' = [\"\"\"\n]\"\"\"] }\n")
	f.Fuzz(func(t *testing.T, src string) {
		x, limit := buildIndex(src)
		if limit != nil {
			return // the parser is not run on such input
		}
		start := time.Now()
		var raw map[string]any
		if _, err := tomlDecode(src, &raw); err != nil {
			return
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("toml took %v", d)
		}
		var walk func(v any, p path)
		walk = func(v any, p path) {
			if len(p) > 0 && !x.has(p) {
				t.Fatalf("no position for %s in\n%s", p, src)
			}
			switch v := v.(type) {
			case map[string]any:
				for k, e := range v {
					// BurntSushi/toml v1.6.0 mangles arrays under an empty
					// key ("" = [[], {}] decodes as [{}]); nothing to
					// compare there.
					if k != "" {
						walk(e, p.key(k))
					}
				}
			case []map[string]any:
				for i, e := range v {
					walk(e, p.index(i+1))
				}
			case []any:
				for i, e := range v {
					walk(e, p.index(i+1))
				}
			}
		}
		walk(raw, nil)
	})
}
