package bypass

import (
	"fmt"
	"strings"
	"testing"
)

// Hostile input (issue 3, "Bad input"): every case has one defined result.
// ParseField and ParseParam either return the request shown or an error
// naming the problem; Collect never fails and counts what it skipped.
func TestHostileInput(t *testing.T) {
	tenK := strings.Join(uris(10000), ",")
	tenKShort := strings.TrimSuffix(strings.Repeat("a:b,", 10000), ",")
	oneMB := "https://h/" + strings.Repeat("x", 1<<20)
	cases := []struct {
		name, in string
		field    string // error substring, or "" with fieldAll/fieldN
		fieldAll bool
		fieldN   int
		param    string // ParseParam error substring; "" for success
	}{
		{name: "10000 entries", in: tenK, field: "longer than 8192", param: "longer than 486"},
		{name: "10000 short entries", in: tenKShort, field: "longer than 8192", param: "longer than 486"},
		{name: "2000 short entries within 8 KiB", in: tenKShort[:8000], field: "more than 64 entries", param: "longer than 486"},
		{name: "1 MB value", in: oneMB, field: "longer than 8192", param: "longer than 486"},
		{name: "1 MB of spaces", in: strings.Repeat(" ", 1<<20), field: "longer than 8192", param: "longer than 486"},
		{name: "CRLF injection", in: av + "\r\nBcc: victim@example.org", field: "CR not part of folding", param: "0x0d"},
		{name: "LF injection", in: av + "\nX-Spam: no", field: "LF not part of folding", param: "0x0a"},
		{name: "CRLF CRLF body injection", in: av + "\r\n\r\nbody", field: "CR not part of folding", param: "0x0d"},
		{name: "folding then injection", in: av + ",\r\n\t" + tr + "\r\nBcc: x", field: "CR not part of folding", param: "0x0d"},
		{name: "CRLF inside a URI", in: "https://h/a\r\n b", field: "expected \",\"", param: "0x0d"},
		{name: "encoded CRLF is data", in: "https://h/a%0D%0ABcc:x", fieldN: 1, param: ""},
		{name: "non-ASCII host", in: "https://bücher.example/opes/", field: "non-ASCII", param: "0xc3"},
		{name: "non-ASCII path", in: "https://h/opes/svc/größe", field: "non-ASCII", param: "0xc3"},
		{name: "Latin-1 octet", in: "https://h/\xe9", field: "non-ASCII", param: "0xe9"},
		{name: "NUL", in: "https://h/\x00", field: "control octet 0x00", param: "0x00"},
		{name: "NUL alone", in: "\x00", field: "control octet 0x00", param: "0x00"},
		{name: "double star", in: "**", field: "after \"*\"", param: "after \"*\""},
		{name: "star and URI", in: "*," + av, field: "after \"*\"", param: "after \"*\""},
		{name: "empty value", in: "", field: "no entry", param: "empty list element"},
		{name: "relative path", in: "/opes/svc/av", field: "not an absolute uri", param: "not an absolute uri"},
		{name: "network-path reference", in: "//mx1.example.net/opes/", field: "not an absolute uri", param: "not an absolute uri"},
		{name: "bare name", in: "av", field: "not an absolute uri", param: "not an absolute uri"},
		{name: "star", in: "*", fieldAll: true},
		{name: "valid", in: av, fieldN: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := ParseField(c.in)
			switch {
			case c.field != "" && err == nil:
				t.Errorf("ParseField = %+v, want error %q", r, c.field)
			case c.field != "" && !strings.Contains(err.Error(), c.field):
				t.Errorf("ParseField error %q, want %q", err, c.field)
			case c.field == "" && err != nil:
				t.Errorf("ParseField: %v", err)
			case c.field == "" && (r.All != c.fieldAll || len(r.URIs) != c.fieldN):
				t.Errorf("ParseField = %+v", r)
			}
			if len(r.URIs) > MaxFieldEntries {
				t.Errorf("%d URIs", len(r.URIs))
			}

			// Collect: the field is skipped and counted, never fatal.
			req, bad := Collect([]string{c.in, tr})
			wantBad := 0
			if c.field != "" {
				wantBad = 1
			}
			if bad != wantBad || (!req.All && !contains(req.URIs, tr)) {
				t.Errorf("Collect = %+v, %d malformed, want %d", req, bad, wantBad)
			}

			// The same text sent as X-OPES-BYPASS, xtext-encoded.
			pr, err := ParseParam(EncodeXtext(c.in))
			switch {
			case c.param != "" && err == nil:
				t.Errorf("ParseParam = %+v, want error %q", pr, c.param)
			case c.param != "" && !strings.Contains(err.Error(), c.param):
				t.Errorf("ParseParam error %q, want %q", err, c.param)
			case c.param == "" && err != nil:
				t.Errorf("ParseParam: %v", err)
			}
		})
	}
}

// 10 000 fields, 10 000 entries in all: the union stops at MaxURIs.
func TestHostileManyFields(t *testing.T) {
	values := uris(10000)
	values = append(values, "garbage", "**", "")
	req, bad := Collect(values)
	if bad != 3 || len(req.URIs) != MaxURIs || !req.Truncated || req.All {
		t.Fatalf("Collect: %d URIs, truncated %v, all %v, %d malformed", len(req.URIs), req.Truncated, req.All, bad)
	}
	// Each field a duplicate of the first: no growth, no truncation.
	dups := make([]string, 10000)
	for i := range dups {
		dups[i] = fmt.Sprintf("HTTPS://MX1.EXAMPLE.NET:%d/opes/svc/av", 443)
	}
	req, bad = Collect(dups)
	if bad != 0 || len(req.URIs) != 1 || req.URIs[0] != av || req.Truncated {
		t.Fatalf("Collect of duplicates = %+v, %d", req, bad)
	}
}

// Collect of the worst well-formed message: many maximal fields. Time per
// operation grows linearly with the input (see the per-field numbers).
func BenchmarkCollectHostile(b *testing.B) {
	field := strings.Join(uris(MaxFieldEntries), ",")
	for _, n := range []int{10, 100} {
		values := make([]string, n)
		for i := range values {
			values[i] = field
		}
		b.Run(fmt.Sprintf("%d-fields", n), func(b *testing.B) {
			b.SetBytes(int64(n * len(field)))
			for b.Loop() {
				Collect(values)
			}
		})
	}
	huge := []string{strings.Repeat("x", 1<<20)}
	b.Run("1MB-field", func(b *testing.B) {
		for b.Loop() {
			Collect(huge)
		}
	})
}
