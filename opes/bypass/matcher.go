package bypass

// Reason says why a request covers a service, for the trace and the audit
// log. The zero value means it does not.
type Reason uint8

// Reasons, from the least to the most specific. Match reports the most
// specific one that applies.
const (
	NotCovered     Reason = iota
	CoveredUnknown        // names a URI unknown here, counted as "*" (RFC 3897 §4.3)
	CoveredAll            // "*"
	CoveredSystem         // names the system URI: all its services (RFC 3897 §4)
	CoveredService        // names the service
)

func (r Reason) String() string {
	switch r {
	case NotCovered:
		return "not-covered"
	case CoveredUnknown:
		return "unknown-uri"
	case CoveredAll:
		return "wildcard"
	case CoveredSystem:
		return "system"
	case CoveredService:
		return "service"
	}
	return "invalid"
}

// Matcher decides whether a bypass request names a service of this OPES
// system. It is built once per policy and is safe for concurrent use.
type Matcher struct {
	system       string              // normalised system URI
	services     map[string]string   // configured and normalised service URI → normalised
	known        map[string]struct{} // normalised system and service URIs
	unknownAsAll bool
}

// NewMatcher normalises the system URI and the service URIs once. A URI
// NormalizeURI refuses is kept as given (the policy validates URIs before
// this); since parsed requests hold only normalised URIs, such a URI can
// then be named only through "*" or the unknown-URI rule.
//
// unknownAsAll is the RFC 3897 §4.3 rule "a URI that identifies no entity
// known to the recipient MUST be treated as a wildcard" (PROFILE §5,
// switchable): with it, a request naming another OPES system also covers
// every service here.
func NewMatcher(systemURI string, serviceURIs []string, unknownAsAll bool) *Matcher {
	norm := func(s string) string {
		if n, err := NormalizeURI(s); err == nil {
			return n
		}
		return s
	}
	m := &Matcher{
		system:       norm(systemURI),
		services:     make(map[string]string, 2*len(serviceURIs)),
		known:        make(map[string]struct{}, len(serviceURIs)+1),
		unknownAsAll: unknownAsAll,
	}
	m.known[m.system] = struct{}{}
	for _, s := range serviceURIs {
		n := norm(s)
		m.services[s] = n
		m.services[n] = n
		m.known[n] = struct{}{}
	}
	return m
}

// Covers reports whether r asks to bypass the service with URI serviceURI
// (as given to NewMatcher, in configured or normalised form). It does not
// allocate.
func (m *Matcher) Covers(r Request, serviceURI string) bool {
	return m.Match(r, serviceURI) != NotCovered
}

// Match is Covers with the reason. The request is assumed to come from
// ParseField, ParseParam, Collect or Merge (URIs normalised). A serviceURI
// the Matcher was not given is compared as it is.
//
// Whether a covered service is then really bypassed is not decided here:
// the service must be bypassable and not required for delivery, and the
// request must come from a trusted source (see the package comment).
func (m *Matcher) Match(r Request, serviceURI string) Reason {
	if r.All {
		return CoveredAll
	}
	svc, ok := m.services[serviceURI]
	if !ok {
		svc = serviceURI
	}
	best := NotCovered
	for _, u := range r.URIs {
		switch {
		case u == svc:
			return CoveredService
		case u == m.system:
			best = CoveredSystem
		case best == NotCovered && m.unknownAsAll:
			if _, known := m.known[u]; !known {
				best = CoveredUnknown
			}
		}
	}
	return best
}
