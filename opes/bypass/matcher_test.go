package bypass

import (
	"testing"
)

func mustParse(t testing.TB, v string) Request {
	t.Helper()
	r, err := ParseField(v)
	if err != nil {
		t.Fatalf("ParseField(%q): %v", v, err)
	}
	return r
}

func TestMatcher(t *testing.T) {
	const other = "https://mx.other.example/opes/"
	// Configured URIs need not be in normal form.
	services := []string{"HTTPS://mx1.example.net:443/opes/svc/av", tr}
	strict := NewMatcher("https://MX1.example.net/opes/", services, false)
	loose := NewMatcher("https://MX1.example.net/opes/", services, true)

	cases := []struct {
		req           string
		svc           string
		strict, loose Reason
	}{
		{"*", av, CoveredAll, CoveredAll},
		{av, av, CoveredService, CoveredService},
		{av, services[0], CoveredService, CoveredService}, // configured spelling
		{av, tr, NotCovered, NotCovered},                  // another known service
		// Paths are case-sensitive: /OPES/ is not /opes/.
		{"https://mx1.example.net:443/OPES/svc/../svc/translate-de", tr, NotCovered, CoveredUnknown},
		{"https://mx1.example.net:443/opes/svc/../svc/translate-de", tr, CoveredService, CoveredService},
		{sys, av, CoveredSystem, CoveredSystem},
		{"HTTPS://mx1.example.net/opes/", tr, CoveredSystem, CoveredSystem},
		{other, av, NotCovered, CoveredUnknown},
		{other + ", " + tr, av, NotCovered, CoveredUnknown},
		{other + ", " + av, av, CoveredService, CoveredService}, // most specific wins
		{other + ", " + sys, av, CoveredSystem, CoveredSystem},
		{sys + ", " + av, av, CoveredService, CoveredService},
		// The system URI without its trailing "/" is another resource:
		// unknown, hence "*" when that rule is on.
		{"https://mx1.example.net/opes", av, NotCovered, CoveredUnknown},
		// A service URI prefix names nothing.
		{"https://mx1.example.net/opes/svc/", av, NotCovered, CoveredUnknown},
	}
	for _, c := range cases {
		r := mustParse(t, c.req)
		if got := strict.Match(r, c.svc); got != c.strict {
			t.Errorf("strict: %q covers %q: %v, want %v", c.req, c.svc, got, c.strict)
		}
		if got := loose.Match(r, c.svc); got != c.loose {
			t.Errorf("unknown-as-all: %q covers %q: %v, want %v", c.req, c.svc, got, c.loose)
		}
		if strict.Covers(r, c.svc) != (c.strict != NotCovered) || loose.Covers(r, c.svc) != (c.loose != NotCovered) {
			t.Errorf("Covers disagrees with Match for %q, %q", c.req, c.svc)
		}
	}
	if strict.Covers(Request{}, av) || loose.Covers(Request{}, av) {
		t.Error("the zero Request covers a service")
	}
	// A service the Matcher was not given is compared as it is.
	unknownSvc := "https://mx1.example.net/opes/svc/new"
	if got := strict.Match(mustParse(t, unknownSvc), unknownSvc); got != CoveredService {
		t.Errorf("unregistered service: %v", got)
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{
		NotCovered: "not-covered", CoveredUnknown: "unknown-uri", CoveredAll: "wildcard",
		CoveredSystem: "system", CoveredService: "service", 99: "invalid",
	} {
		if r.String() != want {
			t.Errorf("Reason(%d) = %q, want %q", r, r.String(), want)
		}
	}
}

func TestCoversAllocations(t *testing.T) {
	svcs := uris(20)
	m := NewMatcher(sys, svcs, true)
	reqs := []Request{
		{All: true},
		mustParse(t, "https://mx.other.example/opes/"),
		{URIs: uris(MaxURIs)},
		{URIs: uris(MaxURIs)[5:]},
	}
	for _, r := range reqs {
		if n := testing.AllocsPerRun(100, func() { m.Covers(r, svcs[19]) }); n != 0 {
			t.Errorf("Covers allocates %v times for %d URIs", n, len(r.URIs))
		}
	}
}

// The worst cases the processor meets: a request at MaxURIs (requests
// are deduplicated, so at most the system and the known services are
// among them, and the rest are unknown), none of them the service, checked
// for one of 20 services.
func BenchmarkCovers(b *testing.B) {
	svcs := uris(20)
	worst := Request{URIs: append([]string{sys}, svcs[:19]...)}
	for _, u := range uris(MaxURIs + 20)[20:] {
		if len(worst.URIs) == MaxURIs {
			break
		}
		worst.URIs = append(worst.URIs, "https://other.example/"+u[len("https://"):])
	}
	for _, c := range []struct {
		name         string
		r            Request
		unknownAsAll bool
	}{
		{"one-uri", Request{URIs: []string{svcs[3]}}, true},
		{"wildcard", Request{All: true}, true},
		{"max-uris/unknown-as-all", worst, true},
		{"max-uris/strict", worst, false},
	} {
		m := NewMatcher(sys, svcs, c.unknownAsAll)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m.Covers(c.r, svcs[19])
			}
		})
	}
}
