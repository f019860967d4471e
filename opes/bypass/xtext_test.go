package bypass

import (
	"slices"
	"strings"
	"testing"
)

func TestXtext(t *testing.T) {
	cases := []struct{ plain, xtext string }{
		{"", ""},
		{"*", "*"},
		{av, av},
		{"a+b=c", "a+2Bb+3Dc"},
		{"a b\x00\xff\r\n", "a+20b+00+FF+0D+0A"},
		{"https://h/?q=1", "https://h/?q+3D1"},
	}
	for _, c := range cases {
		if got := EncodeXtext(c.plain); got != c.xtext {
			t.Errorf("EncodeXtext(%q) = %q, want %q", c.plain, got, c.xtext)
		}
		got, err := DecodeXtext(c.xtext)
		if err != nil || got != c.plain {
			t.Errorf("DecodeXtext(%q) = %q, %v, want %q", c.xtext, got, err, c.plain)
		}
	}
	// A character that needs no encoding may still be sent encoded.
	if got, err := DecodeXtext("+41+2A"); err != nil || got != "A*" {
		t.Errorf("DecodeXtext(+41+2A) = %q, %v", got, err)
	}
}

func TestDecodeXtextRejects(t *testing.T) {
	cases := []struct{ in, why string }{
		{"a=b", "+3D"},
		{"a b", "0x20"},
		{"a\x00", "0x00"},
		{"a\x7f", "0x7f"},
		{"é", "0xc3"},
		{"+", "bad hexchar"},
		{"+4", "bad hexchar"},
		{"+2b", "bad hexchar"}, // RFC 3461: upper-case hex only
		{"+G0", "bad hexchar"},
		{"a++2B", "bad hexchar"},
		{"https://h/+2", "bad hexchar"},
	}
	for _, c := range cases {
		got, err := DecodeXtext(c.in)
		if err == nil {
			t.Errorf("DecodeXtext(%q) = %q, want an error about %q", c.in, got, c.why)
			continue
		}
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("DecodeXtext(%q): error %q does not mention %q", c.in, err, c.why)
		}
	}
}

func TestParseParam(t *testing.T) {
	cases := []struct {
		in   string
		all  bool
		uris []string
	}{
		{"*", true, nil},
		{"+2A", true, nil},
		{av, false, []string{av}},
		{av + "," + tr, false, []string{av, tr}},
		{"HTTPS://MX1.EXAMPLE.NET/opes/svc/av,https://mx1.example.net/opes/svc/%61v", false, []string{av}},
		{av + ";reason+3Dtest," + sys, false, []string{av, sys}},
		{"https://h/?a+3Db", false, []string{"https://h/?a=b"}},
	}
	for _, c := range cases {
		r, err := ParseParam(c.in)
		if err != nil {
			t.Errorf("ParseParam(%q): %v", c.in, err)
			continue
		}
		if r.All != c.all || !slices.Equal(r.URIs, c.uris) {
			t.Errorf("ParseParam(%q) = %+v, want All=%v URIs=%q", c.in, r, c.all, c.uris)
		}
		back, err := ParseParam(r.Param())
		if err != nil || back.All != r.All || !slices.Equal(back.URIs, r.URIs) {
			t.Errorf("ParseParam(%q) = %+v, %v: round trip of %+v", r.Param(), back, err, r)
		}
	}
}

func TestParseParamRejects(t *testing.T) {
	cases := []struct{ in, why string }{
		{"", "empty list element"},
		{"**", "after \"*\""},
		{"*," + av, "after \"*\""},
		{av + ",", "empty list element"},
		{"," + av, "empty list element"},
		{av + ",," + tr, "empty list element"},
		{av + "+20", "octet 0x20"},               // decoded whitespace
		{av + ",+20" + tr, "octet 0x20"},         // around a comma too
		{av + "+0D+0ABcc:x@example.org", "0x0d"}, // CRLF injection
		{av + "+00", "0x00"},                     // NUL
		{"https://h/+C3+A9", "0xc3"},             // non-ASCII
		{av + "=x", "+3D"},                       // raw "="
		{"/opes/svc/av", "not an absolute uri"},  // relative
		{av + "+23frag", "fragment"},             // "#"
		{av + ";x", "expected \"=\""},            // bad parameter
		{strings.Repeat("a", MaxParamXtext+1), "longer than 486"},
	}
	for _, c := range cases {
		r, err := ParseParam(c.in)
		if err == nil {
			t.Errorf("ParseParam(%q) = %+v, want an error about %q", c.in, r, c.why)
			continue
		}
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("ParseParam(%q): error %q does not mention %q", c.in, err, c.why)
		}
	}
	// Exactly at the bound is fine.
	u := "https://h/" + strings.Repeat("x", MaxParamXtext-len("https://h/"))
	if r, err := ParseParam(u); err != nil || len(r.URIs) != 1 {
		t.Errorf("ParseParam of %d characters: %+v, %v", len(u), r, err)
	}
}
