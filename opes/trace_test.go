package opes

import (
	"reflect"
	"strings"
	"testing"
)

func TestFoldTraceListGolden(t *testing.T) {
	sys := TraceEntry{URI: testSystem, Params: []TraceParam{{"id", "7QF3X2"}}}
	cases := map[string][]TraceEntry{
		"trace-system.golden":    {sys},
		"trace-via-short.golden": {sys, {URI: testSystem + "svc/acl", Params: []TraceParam{{"action", "analyzed"}}}},
		"trace-via-long.golden": {
			sys,
			{URI: testSystem + "svc/access-control", Params: []TraceParam{{"action", "analyzed"}}},
			{URI: testSystem + "svc/tag-external", Params: []TraceParam{{"action", "tagged"}}},
			{URI: "https://callout.example.org/services/virus-scanner/v2/", Params: []TraceParam{{"action", "analyzed"}, {"status", "timeout"}}},
			{URI: testSystem + "svc/quoted", Params: []TraceParam{{"action", "modified"}, {"note", `has "quotes", commas; and spaces`}}},
		},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			field := FieldVia
			if name == "trace-system.golden" {
				field = FieldSystem
			}
			v := FoldTraceList(field, entries)
			golden(t, name, field+": "+v+"\r\n")
			checkFolding(t, field, v)
			back, err := ParseTraceList(v, 100)
			if err != nil {
				t.Fatalf("parse back: %v", err)
			}
			if !reflect.DeepEqual(back, entries) {
				t.Errorf("round trip:\n got %#v\nwant %#v", back, entries)
			}
		})
	}
}

// checkFolding asserts PROFILE §2: ASCII only, lines ≤ 78 (entries here
// are all short enough), folds only after ',' or ';'.
func checkFolding(t *testing.T, name, v string) {
	t.Helper()
	lines := strings.Split(name+": "+v, "\r\n")
	for i, l := range lines {
		if len(l) > maxLine {
			t.Errorf("line %d is %d octets: %q", i, len(l), l)
		}
		for _, c := range []byte(l) {
			if c > 0x7e || (c < 0x20 && c != '\t') {
				t.Errorf("line %d has byte 0x%02x", i, c)
			}
		}
		if i < len(lines)-1 && !strings.HasSuffix(l, ",") && !strings.HasSuffix(l, ";") {
			t.Errorf("line %d folded after %q, not after ',' or ';'", i, l[len(l)-1:])
		}
		if i > 0 && !strings.HasPrefix(l, "\t") {
			t.Errorf("continuation line %d does not start with white space", i)
		}
	}
	if strings.Contains(strings.ReplaceAll(v, "\r\n\t", ""), "\n") || strings.Contains(strings.ReplaceAll(v, "\r\n\t", ""), "\r") {
		t.Errorf("bare CR or LF in %q", v)
	}
}

func TestFoldNeverExceedsHardLimit(t *testing.T) {
	long := "https://example.org/" + strings.Repeat("a", maxURILen-len("https://example.org/"))
	entries := []TraceEntry{{URI: long, Params: []TraceParam{{"id", "X"}}}, {URI: long, Params: []TraceParam{{"action", "analyzed"}}}}
	v := FoldTraceList(FieldVia, entries)
	for _, l := range strings.Split(FieldVia+": "+v, "\r\n") {
		if len(l) > hardLine {
			t.Fatalf("line of %d octets", len(l))
		}
	}
	if _, err := ParseTraceList(v, 10); err != nil {
		t.Fatal(err)
	}
}

func TestParseTraceList(t *testing.T) {
	good := []struct {
		in   string
		want []TraceEntry
	}{
		{"https://a.example/; id=1", []TraceEntry{{URI: "https://a.example/", Params: []TraceParam{{"id", "1"}}}}},
		{" https://a.example/ ;id=1 ,\r\n\thttps://b.example/x; action=tagged; foo=\"a\\\"b\"",
			[]TraceEntry{{URI: "https://a.example/", Params: []TraceParam{{"id", "1"}}}, {URI: "https://b.example/x", Params: []TraceParam{{"action", "tagged"}, {"foo", `a"b`}}}}},
		{"http://c.example/svc", []TraceEntry{{URI: "http://c.example/svc"}}},
	}
	for _, c := range good {
		got, err := ParseTraceList(c.in, 10)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %#v", c.in, got)
		}
	}
	bad := []string{
		"", "   ", "not-a-uri; id=1", "https://a.example/; id", "https://a.example/; =1",
		"https://a.example/; id=\"open", "https://a.example/ https://b.example/", "https://a.example/#frag",
		"https://a.example/,", "/relative; id=1",
	}
	for _, in := range bad {
		if got, err := ParseTraceList(in, 10); err == nil {
			t.Errorf("%q: accepted as %#v", in, got)
		}
	}
	many := strings.Repeat("https://a.example/, ", 20) + "https://a.example/"
	if _, err := ParseTraceList(many, 10); err == nil {
		t.Error("more entries than the bound were accepted")
	}
}

func TestCheckAgentURI(t *testing.T) {
	for _, ok := range []string{"https://mx1.example.net/opes/", "https://mx1.example.net/opes/svc/acl"} {
		if err := CheckAgentURI(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "mx1.example.net/opes/", "https://x/a;b", "https://x/a,b", "https://x/a b", "https://x/é", "https://x/#f", "https:///path", `https://x/"`} {
		if CheckAgentURI(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseTraceList(f *testing.F) {
	f.Add("https://a.example/; id=1, https://b.example/; action=\"x\\\"y\"")
	f.Add("https://a.example/;;;")
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := ParseTraceList(s, 50)
		if err != nil {
			return
		}
		// What parses must re-render to something that parses the same.
		again, err := ParseTraceList(FoldTraceList(FieldVia, entries), 50)
		if err != nil {
			t.Fatalf("re-rendered %q does not parse: %v", FoldTraceList(FieldVia, entries), err)
		}
		if !reflect.DeepEqual(normalize(entries), normalize(again)) {
			t.Fatalf("round trip changed %#v into %#v", entries, again)
		}
	})
}

// normalize maps what quoteIfNeeded replaces ('?' for non-printables).
func normalize(es []TraceEntry) []TraceEntry {
	out := make([]TraceEntry, len(es))
	for i, e := range es {
		out[i] = TraceEntry{URI: e.URI}
		for _, p := range e.Params {
			v := []byte(p.Value)
			for j, c := range v {
				if c < 0x20 || c > 0x7e {
					v[j] = '?'
				}
			}
			out[i].Params = append(out[i].Params, TraceParam{p.Name, string(v)})
		}
	}
	return out
}
