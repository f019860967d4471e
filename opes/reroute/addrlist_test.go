package reroute

import (
	"strings"
	"testing"
)

var testRepl = map[string]string{"joe@example.org": "joe@de.example.org"}

func TestRewriteAddressList(t *testing.T) {
	cases := []struct{ in, want string }{
		{"joe@example.org", "<joe@de.example.org>"},
		{"Joe <joe@example.org>", "Joe <joe@de.example.org>"},
		{"  Joe\r\n <JOE@EXAMPLE.ORG>  ", "  Joe\r\n <joe@de.example.org>  "},
		{`"Doe, Joe (work)" <joe@example.org>, "a, b" <a@example.net>`, `"Doe, Joe (work)" <joe@de.example.org>, "a, b" <a@example.net>`},
		{"a@example.net,\r\n\tJoe <joe@example.org> (comment, with comma)", "a@example.net,\r\n\tJoe <joe@de.example.org> (comment, with comma)"},
		{"=?UTF-8?B?SsO2cmc=?= <joe@example.org>", "=?UTF-8?B?SsO2cmc=?= <joe@de.example.org>"},
		{"=?windows-1252?Q?J=F6rg?= <joe@example.org>", "=?windows-1252?Q?J=F6rg?= <joe@de.example.org>"},
		{"Friends: a@example.net, joe@example.org;, b@example.net", "Friends: a@example.net, <joe@de.example.org>;, b@example.net"},
		{"joe@example.org (Joe)", `"Joe" <joe@de.example.org>`},
		{"x@[192.0.2.1], Joe <joe@example.org>", "x@[192.0.2.1], Joe <joe@de.example.org>"},
	}
	for _, c := range cases {
		got, changed, err := rewriteAddressList(c.in, testRepl)
		if err != nil || !changed || got != c.want {
			t.Errorf("%q: %q changed=%v err=%v, want %q", c.in, got, changed, err, c.want)
		}
		if _, err := addressParser.ParseList(unfoldText(got)); err != nil && !strings.Contains(got, ":") {
			t.Errorf("%q: result %q does not parse: %v", c.in, got, err)
		}
	}
	for _, in := range []string{"", "undisclosed-recipients:;", "a@example.net, Joey <joey@example.org>", "joe@example.org.evil"} {
		if got, changed, err := rewriteAddressList(in, testRepl); err != nil || changed || got != in {
			t.Errorf("%q: %q changed=%v err=%v, want unchanged", in, got, changed, err)
		}
	}
	for _, in := range []string{"Joe <joe@example.org", `"Joe <joe@example.org>`, "a: b: c@d;;", "a@b;", "(joe@example.org", "joe@example.org>", "a b c, joe@example.org", "G: joe@example.org",
		"<@relay.example:joe@example.org>"} {
		if got, changed, err := rewriteAddressList(in, testRepl); err == nil || changed || got != in {
			t.Errorf("%q: %q changed=%v err=%v, want an error and no change", in, got, changed, err)
		}
	}
	long := strings.Repeat("a", 980) + "@example.net, joe@example.org"
	if _, changed, err := rewriteAddressList(long, testRepl); err == nil || changed {
		t.Errorf("line over 998 octets: changed=%v err=%v", changed, err)
	}
}

// FuzzRewriteAddressList: whatever the field holds, the result either is
// the input unchanged or has no line over 998 octets, no new line breaks
// except those the input had, and still names no old address.
func FuzzRewriteAddressList(f *testing.F) {
	for _, s := range []string{"Joe <joe@example.org>", "G: joe@example.org, a@b;", `"x, y" <joe@example.org> (c)`, "a@b,\r\n joe@example.org"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, changed, err := rewriteAddressList(in, testRepl)
		if !changed {
			if got != in {
				t.Fatalf("unchanged but different: %q", got)
			}
			return
		}
		if err != nil {
			t.Fatalf("changed with error %v", err)
		}
		if strings.Count(got, "\n") != strings.Count(in, "\n") {
			t.Fatalf("line breaks changed: %q → %q", in, got)
		}
		items, err := splitItems(got)
		if err != nil {
			t.Fatalf("result does not split: %q: %v", got, err)
		}
		for _, it := range items {
			text := strings.TrimSpace(unfoldText(got[it.start:it.end]))
			if text == "" {
				continue
			}
			a, err := addressParser.Parse(text)
			if err != nil {
				t.Fatalf("item %q of %q does not parse: %v", text, got, err)
			}
			if strings.EqualFold(a.Address, "joe@example.org") {
				t.Fatalf("old address left in %q", got)
			}
		}
	})
}
