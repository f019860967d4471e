package bypass

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

const (
	sys = "https://mx1.example.net/opes/"
	av  = "https://mx1.example.net/opes/svc/av"
	tr  = "https://mx1.example.net/opes/svc/translate-de"
)

func TestParseField(t *testing.T) {
	cases := []struct {
		in   string
		all  bool
		uris []string
	}{
		{"*", true, nil},
		{"  *\t", true, nil},
		{"\r\n *", true, nil},
		{av, false, []string{av}},
		{" " + av + " ", false, []string{av}},
		{av + "," + tr, false, []string{av, tr}},
		{av + " ,\t" + tr, false, []string{av, tr}},
		// Folded after a comma, CRLF and bare LF.
		{av + ",\r\n\t" + tr, false, []string{av, tr}},
		{av + ",\r\n " + tr, false, []string{av, tr}},
		{av + ",\n\t" + tr, false, []string{av, tr}},
		{av + "\r\n ,\r\n " + tr, false, []string{av, tr}},
		// Normalised and deduplicated.
		{"HTTPS://MX1.EXAMPLE.NET:443/opes/svc/av, " + av, false, []string{av}},
		{"https://mx1.example.net/opes/svc/../svc/%61v", false, []string{av}},
		// #rule: empty elements are allowed and not counted.
		{", " + av + ",, ,", false, []string{av}},
		// Parameters are checked and ignored.
		{av + ";reason=test", false, []string{av}},
		{av + " ; x=1 ; y=\"a, b; \\\"c\\\"\", " + tr, false, []string{av, tr}},
		{sys + ";id=7QF3X2", false, []string{sys}},
		// Other schemes are absolute URIs too.
		{"urn:example:opes:av", false, []string{"urn:example:opes:av"}},
	}
	for _, c := range cases {
		r, err := ParseField(c.in)
		if err != nil {
			t.Errorf("ParseField(%q): %v", c.in, err)
			continue
		}
		if r.All != c.all || !slices.Equal(r.URIs, c.uris) || r.Truncated {
			t.Errorf("ParseField(%q) = %+v, want All=%v URIs=%q", c.in, r, c.all, c.uris)
		}
	}
}

func TestParseFieldRejects(t *testing.T) {
	cases := []struct{ in, why string }{
		{"", "no entry"},
		{"   ", "no entry"},
		{",,", "no entry"},
		{"**", "after \"*\""},
		{"* *", "after \"*\""},
		{"*, " + av, "after \"*\""},
		{av + ", *", "not an absolute uri"},
		{"/opes/svc/av", "not an absolute uri"},
		{"svc/av", "not an absolute uri"},
		{av + " " + tr, "expected \",\""},
		{av + "#x", "fragment"},
		{"https://mx1.example.net/opes/svc/(av)", "\"(\" or \")\""},
		{"<" + av + ">", "offset"},
		{"\"" + av + "\"", "offset"},
		{"(comment) " + av, "\"(\" or \")\""},
		{av + ";", "parameter name"},
		{av + ";=x", "parameter name"},
		{av + ";x", "expected \"=\""},
		{av + ";x=", "parameter value"},
		{av + ";x=\"open", "unterminated"},
		{av + ";x=\"a\\", "unterminated"},
		{";x=1", "empty uri"},
		// Line breaks that are not folding: header injection.
		{av + "\r\nBcc: victim@example.org", "CR not part of folding"},
		{av + "\nBcc: victim@example.org", "LF not part of folding"},
		{av + "\r\n", "CR not part of folding"},
		{av + "\r", "CR not part of folding"},
		{av + "\n", "LF not part of folding"},
		{av + "\r \n", "CR not part of folding"},
		{av + "\x00", "control octet 0x00"},
		{"*\x00", "control octet 0x00"},
		{av + "\x1b[31m", "control octet 0x1b"},
		{"https://mx1.example.net/opes/svc/é", "non-ASCII"},
		{"https://bücher.example/opes/", "non-ASCII"},
		{"\xff\xfe", "non-ASCII"},
	}
	for _, c := range cases {
		r, err := ParseField(c.in)
		if err == nil {
			t.Errorf("ParseField(%q) = %+v, want an error about %q", c.in, r, c.why)
			continue
		}
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("ParseField(%q): error %q does not mention %q", c.in, err, c.why)
		}
	}
}

// uris returns n distinct service URIs.
func uris(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("https://mx1.example.net/opes/svc/s%d", i)
	}
	return out
}

func TestParseFieldBounds(t *testing.T) {
	if r, err := ParseField(strings.Join(uris(MaxFieldEntries), ", ")); err != nil || len(r.URIs) != MaxFieldEntries {
		t.Fatalf("%d entries: %d URIs, %v", MaxFieldEntries, len(r.URIs), err)
	}
	if _, err := ParseField(strings.Join(uris(MaxFieldEntries+1), ",")); err == nil || !strings.Contains(err.Error(), "more than 64 entries") {
		t.Fatalf("%d entries: %v", MaxFieldEntries+1, err)
	}
	// Duplicates count as entries: the bound is on work, not on the result.
	dup := strings.TrimSuffix(strings.Repeat(av+",", MaxFieldEntries+1), ",")
	if _, err := ParseField(dup); err == nil {
		t.Fatal("65 duplicate entries accepted")
	}
	pad := strings.Repeat(" ", MaxFieldBytes-len(av))
	if r, err := ParseField(pad + av); err != nil || len(r.URIs) != 1 {
		t.Fatalf("value of exactly MaxFieldBytes: %+v, %v", r, err)
	}
	if _, err := ParseField(pad + " " + av); err == nil || !strings.Contains(err.Error(), "longer than 8192") {
		t.Fatalf("value of MaxFieldBytes+1: %v", err)
	}
}

func TestMerge(t *testing.T) {
	a := Request{URIs: []string{av, sys}}
	b := Request{URIs: []string{tr, av}}
	m := a.Merge(b)
	if !slices.Equal(m.URIs, []string{av, sys, tr}) || m.All || m.Truncated {
		t.Fatalf("Merge = %+v", m)
	}
	// The result does not share memory with the inputs.
	m.URIs[0] = "changed"
	if a.URIs[0] != av || b.URIs[1] != av {
		t.Fatal("Merge aliases its inputs")
	}
	if m := a.Merge(Request{All: true}); !m.All || m.URIs != nil {
		t.Fatalf("Merge with All = %+v", m)
	}
	if m := (Request{All: true}).Merge(a); !m.All || m.URIs != nil {
		t.Fatalf("All.Merge = %+v", m)
	}
	if m := (Request{}).Merge(Request{}); !m.Empty() {
		t.Fatalf("zero Merge = %+v", m)
	}
}

func TestMergeBound(t *testing.T) {
	big := Request{URIs: uris(MaxURIs)}
	m := big.Merge(Request{URIs: []string{av, big.URIs[0]}})
	if len(m.URIs) != MaxURIs || !m.Truncated || contains(m.URIs, av) {
		t.Fatalf("over the bound: %d URIs, truncated %v", len(m.URIs), m.Truncated)
	}
	// A duplicate at the bound is not a truncation.
	m = big.Merge(Request{URIs: []string{big.URIs[7]}})
	if len(m.URIs) != MaxURIs || m.Truncated {
		t.Fatalf("duplicate at the bound: %d URIs, truncated %v", len(m.URIs), m.Truncated)
	}
	// Truncated survives later merges.
	if m := (Request{Truncated: true}).Merge(Request{URIs: []string{av}}); !m.Truncated {
		t.Fatal("Truncated lost")
	}
}

func TestCollect(t *testing.T) {
	req, bad := Collect([]string{
		av,
		"not a uri",
		"HTTPS://MX1.EXAMPLE.NET/opes/svc/translate-de, " + av,
		av + "\r\nBcc: x@example.org",
	})
	if bad != 2 || req.All || !slices.Equal(req.URIs, []string{av, tr}) {
		t.Fatalf("Collect = %+v, %d malformed", req, bad)
	}
	req, bad = Collect([]string{av, "*", "**"})
	if bad != 1 || !req.All || req.URIs != nil {
		t.Fatalf("Collect with * = %+v, %d malformed", req, bad)
	}
	req, bad = Collect(nil)
	if bad != 0 || !req.Empty() {
		t.Fatalf("Collect(nil) = %+v, %d", req, bad)
	}
}

// 300 fields of 64 distinct URIs each: the union stops at MaxURIs and says
// so; all fields are well-formed.
func TestCollectBound(t *testing.T) {
	all := uris(300 * MaxFieldEntries)
	values := make([]string, 300)
	for i := range values {
		values[i] = strings.Join(all[i*MaxFieldEntries:(i+1)*MaxFieldEntries], ",")
	}
	req, bad := Collect(values)
	if bad != 0 || len(req.URIs) != MaxURIs || !req.Truncated {
		t.Fatalf("%d URIs, truncated %v, %d malformed", len(req.URIs), req.Truncated, bad)
	}
	if !slices.Equal(req.URIs, all[:MaxURIs]) {
		t.Fatal("union did not keep the first URIs in order")
	}
}

func TestStringRoundTrip(t *testing.T) {
	long := "https://h/" + strings.Repeat("x", MaxURILen-len("https://h/"))
	reqs := []Request{
		{All: true},
		{URIs: []string{av}},
		{URIs: []string{av, tr, sys}},
		{URIs: uris(MaxFieldEntries)},
		{URIs: []string{long, av}},
	}
	for _, r := range reqs {
		s := r.String()
		checkLines(t, s)
		back, err := ParseField(s)
		if err != nil {
			t.Errorf("ParseField(%q): %v", s, err)
			continue
		}
		if back.All != r.All || !slices.Equal(back.URIs, r.URIs) {
			t.Errorf("round trip of %+v gave %+v", r, back)
		}
	}
	if s := (Request{}).String(); s != "" {
		t.Errorf("zero Request renders %q", s)
	}
}

// checkLines checks the folding of a rendered field value.
func checkLines(t *testing.T, v string) {
	t.Helper()
	for i, line := range strings.Split(FieldName+": "+v, "\r\n") {
		if len(line) > 998 {
			t.Errorf("line %d is %d octets", i, len(line))
		}
		if len(line) > maxLine && strings.Count(line, ",") > 1 {
			t.Errorf("line %d is %d octets and could have been folded: %q", i, len(line), line)
		}
	}
}

// A union beyond the bounds of one field renders as several fields that
// Collect reads back.
func TestFieldsRoundTrip(t *testing.T) {
	long := make([]string, 40)
	for i := range long {
		long[i] = fmt.Sprintf("https://h/%03d%s", i, strings.Repeat("x", 900))
	}
	reqs := []Request{
		{All: true},
		{URIs: []string{av}},
		{URIs: uris(MaxURIs)},
		{URIs: long}, // 40 URIs of ~910 octets: the byte bound splits them
	}
	for _, r := range reqs {
		fields := r.Fields()
		for _, f := range fields {
			checkLines(t, f)
			if len(f) > MaxFieldBytes {
				t.Errorf("field of %d octets", len(f))
			}
		}
		back, bad := Collect(fields)
		if bad != 0 || back.All != r.All || !slices.Equal(back.URIs, r.URIs) || back.Truncated {
			t.Errorf("Collect(Fields()) of %d URIs: %d URIs, %d malformed, truncated %v", len(r.URIs), len(back.URIs), bad, back.Truncated)
		}
	}
	if got := len((Request{URIs: uris(MaxURIs)}).Fields()); got != MaxURIs/MaxFieldEntries {
		t.Errorf("%d URIs in %d fields, want %d", MaxURIs, got, MaxURIs/MaxFieldEntries)
	}
	if f := (Request{}).Fields(); f != nil {
		t.Errorf("zero Request has fields %q", f)
	}
}

func BenchmarkParseField(b *testing.B) {
	v := av + ",\r\n\t" + tr + ", " + sys + "; id=x"
	for b.Loop() {
		if _, err := ParseField(v); err != nil {
			b.Fatal(err)
		}
	}
}
