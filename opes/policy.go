package opes

import (
	"fmt"
	"net/url"
	"strings"
)

// TraceDetail selects how much the trace discloses (PROFILE §2).
type TraceDetail uint8

// Trace detail levels.
const (
	TraceFull    TraceDetail = iota // every service
	TraceActions                    // only services that changed, refused, were bypassed or failed
	TraceMinimal                    // the system entry only
)

// ParseTraceDetail accepts "full", "actions" or "minimal".
func ParseTraceDetail(s string) (TraceDetail, error) {
	switch s {
	case "", "full":
		return TraceFull, nil
	case "actions":
		return TraceActions, nil
	case "minimal":
		return TraceMinimal, nil
	}
	return 0, fmt.Errorf("unknown trace detail %q (want full, actions or minimal)", s)
}

// System identifies this OPES system (PROFILE §1).
type System struct {
	URI         string // OPES system URI; service URIs default to URI+"svc/"+name
	PrivacyURL  string // where the reply's last line points; default URI
	Contact     string
	TraceDetail TraceDetail

	// Disclosure (PROFILE §6): shown on the system URI page.
	Operator      string // who runs this system
	PrivacyPolicy string // what is done with mail and trace data
	Retention     string // what trace data is kept, and how long
}

// Matcher is a compiled rule condition. It is evaluated at the rule's
// stage with the recipient being checked (nil outside RCPT).
type Matcher interface {
	Match(tx *Transaction, rcpt *Recipient) bool
	// Needs reports what the condition reads, so the MTA sends it.
	Needs() Needs
}

// Rule is one policy rule: at Stage, when When matches, the services in
// Run are enabled for the rest of the transaction and/or Verdict applies.
type Rule struct {
	Name    string
	Stage   Stage
	When    Matcher // nil matches everything
	Run     []*ServiceSpec
	Verdict *Verdict
	// URI identifies the rule in the trace when its verdict applies:
	// <system-uri>rule/<name>.
	URI string
}

// Limits bound what one transaction may consume (Postfix-style: every
// resource bounded, failure is a defined reply).
type Limits struct {
	MaxHeaderFields int   // default 1000
	MaxHeaderBytes  int   // default 1 MiB
	MaxMessageSize  int64 // body octets; 0 = unlimited
	Body            BodyOptions
}

// Policy is a loaded, validated configuration as the processor runs it.
type Policy struct {
	System   System
	Services []*ServiceSpec
	Rules    []*Rule
	Limits   Limits
	// Consent says whose mail services may act on (PROFILE §6). nil
	// means every party consented, for policies built in code by an
	// embedder that decides consent itself; the policy file loader always
	// sets it, and an empty Consent means nobody: trace only.
	Consent *Consent
	Bypass  BypassPolicy
}

// Validate checks what the processor relies on. The policy package
// reports errors with file positions before this is reached; this is the
// last line of defence for policies built in code.
func (p *Policy) Validate() error {
	if err := CheckAgentURI(p.System.URI); err != nil {
		return fmt.Errorf("system uri: %w", err)
	}
	if u, _ := url.Parse(p.System.URI); u.Scheme != "https" || u.RawQuery != "" || !strings.HasSuffix(u.Path, "/") {
		return fmt.Errorf("system uri %q must be https, without query, ending with '/'", p.System.URI)
	}
	// Trace records are keyed by URI: two agents with one URI would
	// merge in the trace and in bypass matching.
	uris := map[string]string{p.System.URI: "the system"}
	claim := func(uri, who string) error {
		if err := CheckAgentURI(uri); err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		if other, dup := uris[uri]; dup {
			return fmt.Errorf("%s: uri %q already used by %s", who, uri, other)
		}
		uris[uri] = who
		return nil
	}
	known := map[*ServiceSpec]bool{}
	for _, s := range p.Services {
		who := fmt.Sprintf("service %q", s.Name)
		if s.Impl == nil {
			return fmt.Errorf("%s has no implementation", who)
		}
		if err := claim(s.URI, who); err != nil {
			return err
		}
		known[s] = true
	}
	names := map[string]bool{}
	for _, r := range p.Rules {
		who := fmt.Sprintf("rule %q", r.Name)
		if names[r.Name] {
			return fmt.Errorf("%s defined twice", who)
		}
		names[r.Name] = true
		if r.Verdict == nil && len(r.Run) == 0 {
			return fmt.Errorf("%s neither runs a service nor sets a verdict", who)
		}
		for _, s := range r.Run {
			if !known[s] {
				return fmt.Errorf("%s runs a service that is not in the policy's services", who)
			}
		}
		if r.Verdict != nil {
			if err := claim(r.URI, who); err != nil {
				return err
			}
			if v := r.Verdict; v.Reply.Code != 0 && (v.Kind == Reject || v.Kind == TempFail) {
				enh := v.Reply.Enhanced
				if enh == "" { // the processor supplies x.7.1
					enh = fmt.Sprintf("%d.7.1", v.Reply.Code/100)
				}
				if err := validReplyCodes(v.Reply.Code, enh, v.Kind); err != nil {
					return fmt.Errorf("%s: %w", who, err)
				}
			}
		}
	}
	return nil
}

// Needs computes what the MTA must send for this policy: the end of
// message always (the trace is added there), the stages where rules are
// evaluated, what their conditions read, and what every service that a
// rule can enable needs from that rule's stage on.
func (p *Policy) Needs() Needs {
	n := Needs{Stages: StagesOf(StageEOM)}
	for _, r := range p.Rules {
		n.Stages = n.Stages.Add(r.Stage)
		if r.When != nil {
			n = n.Union(r.When.Needs())
		}
		// A service enabled late may still read data of earlier stages
		// (an acl entry at RCPT testing the client address), so its
		// stages are kept whole.
		for _, s := range r.Run {
			n = n.Union(s.Impl.Needs())
		}
	}
	if len(p.Services) > 0 || len(p.Rules) > 0 {
		if p.Consent != nil && !p.Consent.All {
			// Consent is decided per recipient, and by sender.
			n.Stages |= StagesOf(StageMail, StageRcpt)
		}
		for _, s := range p.Services {
			if s.Bypassable && !s.RequiredForDelivery {
				// Bypass requests: X-OPES-BYPASS on MAIL and RCPT,
				// OPES-Bypass fields, and DKIM needs the whole message.
				n.Stages |= StagesOf(StageMail, StageRcpt, StageHeaders)
				n.Body = n.Body || len(p.Bypass.DKIMDomains) > 0
				break
			}
		}
	}
	if n.Stages.Has(StageHeaders) || n.Body {
		// A service reading the body may replace it, which needs the
		// Content-Type to tell signed content (PROFILE §6).
		n.Headers = true
	}
	return n
}
