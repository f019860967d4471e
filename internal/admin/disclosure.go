package admin

import (
	"net/url"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// DisclosureView is what the system URI page says (PROFILE §6, RFC 3914
// §2, RFC 4902 §5), built from the running policy; its JSON form is the
// page for tools.
type DisclosureView struct {
	System   SystemView    `json:"system"`
	Consent  ConsentView   `json:"consent"`
	Services []ServiceView `json:"services"`
	Rules    []RuleView    `json:"rules"`
	Bypass   BypassView    `json:"bypass"`
	// TraceLookup is the URL of the trace-id lookup for authorised users.
	TraceLookup string `json:"trace_lookup"`
}

// SystemView identifies the system and its operator.
type SystemView struct {
	URI string `json:"uri"`
	// Page is the path this page is served at (the system URI's path).
	Page          string `json:"page"`
	Operator      string `json:"operator"`
	Contact       string `json:"contact"`
	PrivacyURL    string `json:"privacy_url"`
	PrivacyPolicy string `json:"privacy_policy"`
	// Retention says what trace data is kept and for how long.
	Retention string `json:"retention"`
	// TraceDetail is full, actions or minimal (PROFILE §2);
	// TraceDetailText says what that shows in delivered mail.
	TraceDetail     string `json:"trace_detail"`
	TraceDetailText string `json:"trace_detail_text"`
}

// ConsentView names the parties on whose behalf the services act.
type ConsentView struct {
	// EveryParty: services act on all mail (no consent list, or all).
	EveryParty bool     `json:"every_party"`
	Party      string   `json:"party"`
	Recipients []string `json:"recipients"`
	Senders    []string `json:"senders"`
	Summary    string   `json:"summary"`
}

// ServiceView is one OPES service: its URI is what the trace names.
type ServiceView struct {
	Name                string `json:"name"`
	Kind                string `json:"kind"`
	URI                 string `json:"uri"`
	Page                string `json:"page"`
	Bypassable          bool   `json:"bypassable"`
	RequiredForDelivery bool   `json:"required_for_delivery"`
	// BypassHonoured: a trusted bypass request can switch it off.
	BypassHonoured bool `json:"bypass_honoured"`
	// OnError is what its failure does: tempfail, continue or reject.
	OnError   string   `json:"on_error"`
	Stages    []string `json:"stages"`
	Reads     []string `json:"reads"`
	MayChange []string `json:"may_change"`
}

// RuleView is a rule whose verdict the trace may name.
type RuleView struct {
	Name    string `json:"name"`
	Stage   string `json:"stage"`
	Verdict string `json:"verdict"`
	URI     string `json:"uri"`
	Page    string `json:"page"`
}

// BypassView says how to ask for a bypass and when it is honoured.
type BypassView struct {
	InMessage BypassWay `json:"in_message"`
	InDialog  BypassWay `json:"in_dialog"`
	OutOfBand BypassWay `json:"out_of_band"`
	// Trust lists what authenticates an in-message or dialog request.
	Trust           []string `json:"trust"`
	UnknownURIAsAll bool     `json:"unknown_uri_as_all"`
	// NotBypassable lists the URIs of services no request switches off.
	NotBypassable []string `json:"not_bypassable"`
}

// BypassWay is one way of asking.
type BypassWay struct {
	Syntax string `json:"syntax"`
	Note   string `json:"note"`
}

// disclosure builds the view; base is the system URI's path.
func disclosure(p *opes.Policy) DisclosureView {
	base := systemPath(p)
	v := DisclosureView{
		System: SystemView{
			URI: p.System.URI, Page: base, Operator: p.System.Operator, Contact: p.System.Contact,
			PrivacyURL: p.System.PrivacyURL, PrivacyPolicy: p.System.PrivacyPolicy, Retention: p.System.Retention,
		},
		Consent:     consentView(p.Consent),
		Services:    []ServiceView{},
		Rules:       []RuleView{},
		TraceLookup: base + "trace",
	}
	if v.System.PrivacyURL == "" {
		v.System.PrivacyURL = p.System.URI
	}
	v.System.TraceDetail, v.System.TraceDetailText = traceDetail(p.System.TraceDetail)
	for _, s := range p.Services {
		v.Services = append(v.Services, serviceView(base, s))
	}
	for _, r := range p.Rules {
		if r.Verdict == nil {
			continue // not an agent of the trace
		}
		v.Rules = append(v.Rules, RuleView{Name: r.Name, Stage: r.Stage.String(), Verdict: r.Verdict.Kind.String(),
			URI: r.URI, Page: base + "rule/" + url.PathEscape(r.Name)})
	}
	v.Bypass = bypassView(p, v.Services)
	return v
}

// systemPath is the path of the system URI, where the page is served.
func systemPath(p *opes.Policy) string {
	u, err := url.Parse(p.System.URI)
	if err != nil || u.Path == "" {
		return "/"
	}
	if !strings.HasSuffix(u.Path, "/") {
		return u.Path + "/"
	}
	return u.Path
}

func traceDetail(d opes.TraceDetail) (string, string) {
	switch d {
	case opes.TraceActions:
		return "actions", "Delivered mail names this system and every service that changed, refused, was bypassed or failed on it."
	case opes.TraceMinimal:
		return "minimal", "Delivered mail names this system only; refusals still name the service or rule that refused."
	}
	return "full", "Delivered mail names this system and every service that processed it, with what each did."
}

func consentView(c *opes.Consent) ConsentView {
	if c == nil {
		return ConsentView{EveryParty: true, Recipients: []string{}, Senders: []string{},
			Summary: "The services act on behalf of every party: the operator processes all mail this system receives."}
	}
	v := ConsentView{EveryParty: c.All, Party: c.Party, Recipients: nonNil(c.Recipients), Senders: nonNil(c.Senders)}
	switch {
	case c.All:
		v.Summary = "Every recipient and sender has consented: the services act on all mail this system receives."
	case len(c.Recipients) == 0 && len(c.Senders) == 0:
		v.Summary = "Nobody has consented: no service acts on mail; every message only receives the trace."
	default:
		v.Summary = "The services act only on mail to the recipients or from the senders listed; other mail only receives the trace."
	}
	return v
}

var stageChanges = map[opes.Stage]string{
	opes.StageConnect: "refuse the connection",
	opes.StageHelo:    "refuse the session at HELO/EHLO",
	opes.StageMail:    "refuse the sender (MAIL FROM)",
	opes.StageRcpt:    "refuse a recipient (RCPT TO)",
	opes.StageData:    "refuse the message at DATA",
	opes.StageHeaders: "refuse the message after its header",
}

// serviceView derives what the service may do from the stages it acts at:
// the processor lets a service refuse at any stage and change the message
// only at the end of data, so that is the honest upper bound.
func serviceView(base string, s *opes.ServiceSpec) ServiceView {
	v := ServiceView{
		Name: s.Name, Kind: s.Kind, URI: s.URI, Page: base + "svc/" + url.PathEscape(s.Name),
		Bypassable: s.Bypassable, RequiredForDelivery: s.RequiredForDelivery,
		BypassHonoured: s.Bypassable && !s.RequiredForDelivery,
		OnError:        onErrorName(s),
		Stages:         []string{}, Reads: []string{"the connection and envelope"}, MayChange: []string{},
	}
	var n opes.Needs
	if s.Impl != nil {
		n = s.Impl.Needs()
	}
	if n.Headers {
		v.Reads = append(v.Reads, "the header fields")
	}
	if n.Body {
		v.Reads = append(v.Reads, "the message body")
	}
	for st := opes.StageConnect; st <= opes.StageEOM; st++ {
		if !n.Stages.Has(st) {
			continue
		}
		v.Stages = append(v.Stages, st.String())
		if c, ok := stageChanges[st]; ok {
			v.MayChange = append(v.MayChange, c)
		}
	}
	if n.Stages.Has(opes.StageEOM) {
		v.MayChange = append(v.MayChange,
			"add, change or remove header fields (e.g. a tag or the Subject)",
			"replace the message body",
			"change the envelope sender or recipients",
			"quarantine the message",
			"refuse the message at the end of data")
	}
	return v
}

func onErrorName(s *opes.ServiceSpec) string {
	switch s.OnError {
	case opes.OnErrorTempFail:
		return "tempfail"
	case opes.OnErrorContinue:
		return "continue"
	case opes.OnErrorReject:
		return "reject"
	}
	// The processor's default, restated: failure must not let mail pass
	// a service that may not be skipped.
	if s.RequiredForDelivery || !s.Bypassable {
		return "tempfail"
	}
	return "continue"
}

func bypassView(p *opes.Policy, svcs []ServiceView) BypassView {
	b := p.Bypass
	v := BypassView{
		InMessage: BypassWay{
			Syntax: "OPES-Bypass: * | <service-or-system-uri>[, <uri>...]",
			Note: "A header field of the message (RFC 4236 syntax). It affects services that act at DATA or later, " +
				"never those that ran before; a system URI names all its services. The field stays in the message for downstream systems.",
		},
		InDialog: BypassWay{
			Syntax: "MAIL FROM:<sender> X-OPES-BYPASS=<xtext>   or   RCPT TO:<recipient> X-OPES-BYPASS=<xtext>",
			Note: "The EHLO keyword is X-OPES; the decoded value is * or comma-separated URIs. On MAIL it covers the " +
				"whole transaction, on RCPT that recipient, from that stage on; a malformed or repeated parameter " +
				"gets 501 5.5.4. Stock Postfix and Sendmail refuse unknown MAIL and RCPT parameters before this " +
				"system sees them, so this works only through an MTA that passes the parameter on.",
		},
		OutOfBand: BypassWay{
			Syntax: "ask the contact below (operators: opesctl bypass add, or the admin API)",
			Note: "A recipient (or an administrator for them) can record \"deliver the non-OPES version of mail from " +
				"this sender\" or \"no optional OPES services for me\", for all bypassable services or for " +
				"named ones; a quarantined original can be released the same way.",
		},
		UnknownURIAsAll: b.UnknownAsAll,
		Trust:           []string{},
		NotBypassable:   []string{},
	}
	if b.TrustAuth {
		v.Trust = append(v.Trust, "the sending client authenticated with SMTP AUTH")
	}
	if len(b.DKIMDomains) > 0 {
		var ds []string
		for _, d := range b.DKIMDomains {
			if d == "sender" {
				d = "the envelope sender's own domain"
			}
			ds = append(ds, d)
		}
		v.Trust = append(v.Trust, "a valid DKIM signature whose signed fields include OPES-Bypass, by "+strings.Join(ds, ", "))
	}
	if len(b.TrustNetworks) > 0 {
		v.Trust = append(v.Trust, "the client is in one of the operator's trusted networks")
	}
	if b.TrustPreferences {
		v.Trust = append(v.Trust, "every recipient has an out-of-band entry for the sender")
	}
	for _, s := range svcs {
		if !s.BypassHonoured {
			v.NotBypassable = append(v.NotBypassable, s.URI)
		}
	}
	return v
}
