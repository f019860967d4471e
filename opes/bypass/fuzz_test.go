package bypass

import (
	"slices"
	"strings"
	"testing"
)

// Seeds shared by the fuzz targets; testdata/fuzz holds more, including
// the cases that once failed.
var fuzzSeeds = []string{
	"*", " * ", "**", "", ",", av, av + ", " + tr, av + ",\r\n\t" + tr,
	"HTTPS://MX1.Example.NET:443/opes/./svc/%7eav;x=\"a,b\"",
	"https://[2001:DB8::1]:8443/a/../b?q=%2f", "urn:a:b", "foo:/.//x",
	av + "\r\nBcc: x", "https://h/\x00", "https://bücher.example/",
	"a+2Bb+3Dc", "+2A", "https://h/+0D+0A",
}

func checkRequest(t *testing.T, r Request) {
	t.Helper()
	if r.All {
		if r.URIs != nil {
			t.Fatalf("All with URIs %q", r.URIs)
		}
		return
	}
	if len(r.URIs) == 0 || len(r.URIs) > MaxFieldEntries {
		t.Fatalf("%d URIs", len(r.URIs))
	}
	for i, u := range r.URIs {
		n, err := NormalizeURI(u)
		if err != nil || n != u {
			t.Fatalf("URI %q not in normal form: %q, %v", u, n, err)
		}
		if slices.Contains(r.URIs[:i], u) {
			t.Fatalf("duplicate %q", u)
		}
	}
}

func sameRequest(a, b Request) bool {
	return a.All == b.All && slices.Equal(a.URIs, b.URIs)
}

func FuzzParseField(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, err := ParseField(v)
		if err != nil {
			return
		}
		checkRequest(t, r)
		s := r.String()
		back, err := ParseField(s)
		if err != nil || !sameRequest(back, r) {
			t.Fatalf("ParseField(%q) = %+v; its String %q parses to %+v, %v", v, r, s, back, err)
		}
		if p := r.Param(); len(p) <= MaxParamXtext {
			back, err := ParseParam(p)
			if err != nil || !sameRequest(back, r) {
				t.Fatalf("ParseParam(%q) = %+v, %v, want %+v", p, back, err, r)
			}
		}
	})
}

func FuzzParseParam(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, x string) {
		if d, err := DecodeXtext(EncodeXtext(x)); err != nil || d != x {
			t.Fatalf("xtext round trip of %q: %q, %v", x, d, err)
		}
		r, err := ParseParam(x)
		if err != nil {
			return
		}
		checkRequest(t, r)
		if p := r.Param(); len(p) <= MaxParamXtext {
			back, err := ParseParam(p)
			if err != nil || !sameRequest(back, r) {
				t.Fatalf("ParseParam(%q) = %+v; its Param %q parses to %+v, %v", x, r, p, back, err)
			}
		}
		back, err := ParseField(r.String())
		if err != nil || !sameRequest(back, r) {
			t.Fatalf("ParseParam(%q) = %+v; its String %q parses to %+v, %v", x, r, r.String(), back, err)
		}
	})
}

func FuzzNormalizeURI(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeURI(s)
		if err != nil {
			return
		}
		if len(n) > MaxURILen || strings.ContainsAny(n, "# \t\r\n") {
			t.Fatalf("NormalizeURI(%q) = %q", s, n)
		}
		for i := 0; i < len(n); i++ {
			if n[i] < 0x21 || n[i] > 0x7e {
				t.Fatalf("NormalizeURI(%q) = %q: octet 0x%02x", s, n, n[i])
			}
		}
		again, err := NormalizeURI(n)
		if err != nil || again != n {
			t.Fatalf("NormalizeURI(%q) = %q, but NormalizeURI(%q) = %q, %v", s, n, n, again, err)
		}
		// An agent URI (no list or parameter delimiters) is a field by
		// itself.
		if !strings.ContainsAny(n, ",;()") {
			r, err := ParseField(n)
			if err != nil || r.All || len(r.URIs) != 1 || r.URIs[0] != n {
				t.Fatalf("ParseField(%q) = %+v, %v", n, r, err)
			}
		}
	})
}
