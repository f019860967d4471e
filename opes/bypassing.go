package opes

import (
	"context"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes/bypass"
)

// This file decides consent and bypass (PROFILE §5–§6, RFC 3897, RFC 4902
// §3.2). Three sources may ask to bypass a service:
//
//   - the recipient's out-of-band preferences (trusted: the recipient
//     made them), known from RCPT on;
//   - X-OPES-BYPASS on MAIL (whole transaction) or RCPT (that recipient),
//     from that stage on, trusted under the dialog trust (AUTH, networks);
//   - OPES-Bypass header fields, from the header stage on, never for a
//     service that already ran before DATA, trusted under the dialog
//     trust, the recipients' preferences or a DKIM signature covering
//     the field (at the end of message only).
//
// A covered service is bypassed only when it is bypassable and not
// required for delivery; every decision is traced and audit-logged.
// A message has one content, so all accepted recipients of a transaction
// must share one consent and bypass outcome: a recipient that would need
// a different one is deferred with 452 4.5.3 and the client sends it in
// its own transaction (docs/decisions.md).

// Preferences is the out-of-band preference store as the processor reads
// it, once per RCPT.
type Preferences interface {
	MatchPreferences(ctx context.Context, rcpt, sender string, now time.Time) ([]store.Preference, error)
}

// Auditor records bypass requests and decisions (RFC 3837 §3.2).
type Auditor interface {
	Record(ev audit.Event) error
}

// LookupTXT resolves DKIM key records.
type LookupTXT func(ctx context.Context, domain string) ([]string, error)

// WithPreferences makes the processor honour recipients' out-of-band
// bypass preferences.
func WithPreferences(p Preferences) Option { return func(proc *Processor) { proc.prefs = p } }

// WithAudit sends every bypass request and decision to a.
func WithAudit(a Auditor) Option { return func(proc *Processor) { proc.audit = a } }

// WithLookupTXT replaces the DNS resolver used to verify DKIM signatures
// on OPES-Bypass fields (tests inject one).
func WithLookupTXT(l LookupTXT) Option { return func(proc *Processor) { proc.lookupTXT = l } }

// Bypass trace reasons (PROFILE §2).
const (
	reasonNonBypassable   = "non-bypassable"
	reasonUnauthenticated = "unauthenticated"
	reasonNoNonOPES       = "no-non-opes-version"
)

// paramBypass is the ESMTP parameter of a dialog bypass request.
const paramBypass = "X-OPES-BYPASS"

// rcptClass is what the accepted recipients of a transaction share.
type rcptClass struct {
	consent bool
	// honored are the services bypassed for every recipient (preferences
	// and RCPT parameters); refused the requests turned down, by reason.
	honored map[*ServiceSpec]string // value: the source, for the audit
	refused map[*ServiceSpec]string
	prefs   bool // the recipient has a preference entry for the sender
}

func (c *rcptClass) key() string {
	var b strings.Builder
	if c.consent {
		b.WriteString("consent")
	}
	uris := make([]string, 0, len(c.honored))
	for s := range c.honored {
		uris = append(uris, s.URI)
	}
	slices.Sort(uris)
	for _, u := range uris {
		b.WriteString(" ")
		b.WriteString(u)
	}
	return b.String()
}

// bypassRun is the per-transaction bypass state.
type bypassRun struct {
	dialog     *bypass.Request // X-OPES-BYPASS on MAIL
	class      *rcptClass      // fixed by the first accepted recipient
	pending    *rcptClass      // the recipient being checked at RCPT
	allPrefs   bool            // every accepted recipient has a preference for the sender
	message    *bypass.Request // OPES-Bypass fields, collected at the header stage
	msgTrusted int8            // 0 unknown, 1 yes, -1 no
}

// dialogTrusted reports whether the client is trusted to ask for a
// bypass: authenticated, or from a trusted network.
func (s *Session) dialogTrusted() bool {
	bp := &s.p.policy.Bypass
	if bp.TrustAuth && s.conn.Authenticated() {
		return true
	}
	if s.conn.Addr.IsValid() {
		a := s.conn.Addr.Unmap()
		for _, n := range bp.TrustNetworks {
			if n.Contains(a) {
				return true
			}
		}
	}
	return false
}

// parseDialogBypass reads X-OPES-BYPASS from a MAIL or RCPT; more than one
// is an error like a malformed one (501 5.5.4).
func parseDialogBypass(a Address) (*bypass.Request, error) {
	var req *bypass.Request
	for _, arg := range a.Args {
		k, v, _ := strings.Cut(arg, "=")
		if !strings.EqualFold(k, paramBypass) {
			continue
		}
		if req != nil {
			return nil, errDuplicateParam
		}
		r, err := bypass.ParseParam(v)
		if err != nil {
			return nil, err
		}
		req = &r
	}
	return req, nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errDuplicateParam = constError("duplicate X-OPES-BYPASS parameter")

// badBypassOutcome refuses a malformed dialog request: 501 5.5.4 with the
// trace (PROFILE §3).
func (s *Session) badBypassOutcome(st Stage, err error) *Outcome {
	rec := s.record(s.p.policy.System.URI, false)
	rec.note("rejected")
	s.p.metrics.Outcome(st, Reject)
	if st != StageRcpt {
		s.run.outcome = &OutcomeInfo{Stage: st.String(), Verdict: Reject.String(), Code: 501}
	}
	s.auditEvent("bypass-request", "", "rejected", "malformed", map[string]string{"stage": st.String(), "error": SanitizeText(err.Error(), 200)})
	reply := buildReply(501, "5.5.4", "Invalid X-OPES-BYPASS parameter ("+SanitizeText(err.Error(), 120)+")",
		s.systemEntry(), s.viaEntries(rec), s.p.policy.System.PrivacyURL)
	return &Outcome{Kind: Reject, Reply: reply, TraceID: s.traceID()}
}

// mailBypass handles X-OPES-BYPASS on MAIL; it returns a refusal for a
// malformed request.
func (s *Session) mailBypass(from Address) *Outcome {
	req, err := parseDialogBypass(from)
	if err != nil {
		return s.badBypassOutcome(StageMail, err)
	}
	if req != nil {
		s.run.bypass.dialog = req
		s.auditEvent("bypass-request", "", "", "", map[string]string{"source": "mail-parameter", "request": req.String()})
	}
	return nil
}

// classify computes the consent and bypass outcome of a recipient and
// defers it when it differs from the transaction's (452 4.5.3).
func (s *Session) classify(ctx context.Context, r *Recipient) *Outcome {
	p := s.p.policy
	req, err := parseDialogBypass(r.Address)
	if err != nil {
		return s.badBypassOutcome(StageRcpt, err)
	}
	sender := ""
	if s.tx.Sender != nil {
		sender = s.tx.Sender.Addr
	}
	c := &rcptClass{
		consent: p.Consent.SenderConsents(sender) || p.Consent.RecipientConsents(r.Addr),
		honored: map[*ServiceSpec]string{},
		refused: map[*ServiceSpec]string{},
	}
	if c.consent && s.p.prefs != nil {
		prefs, err := s.p.prefs.MatchPreferences(ctx, strings.ToLower(r.Addr), strings.ToLower(sender), time.Now())
		if err != nil {
			// Without the recipient's choices we cannot tell what to
			// deliver: try again later rather than guess.
			s.p.log.Warn("opes: preference lookup failed", "trace_id", s.traceID(), "err", err)
			return s.failure(StageRcpt, nil, "preference store unavailable")
		}
		for _, pref := range prefs {
			c.prefs = c.prefs || pref.Sender != ""
			for _, spec := range p.Services {
				if prefCovers(pref, spec, s.p.normURI[spec]) {
					s.decideInto(c, spec, true, "preference "+pref.ID)
				}
			}
		}
	}
	if req != nil {
		s.auditEvent("bypass-request", "", "", "", map[string]string{"source": "rcpt-parameter", "request": req.String()})
		if c.consent {
			trusted := s.dialogTrusted()
			for _, spec := range p.Services {
				if s.p.matcher.Covers(*req, spec.URI) {
					s.decideInto(c, spec, trusted, "rcpt-parameter")
				}
			}
		}
	}
	if run := &s.run.bypass; run.class != nil && run.class.key() != c.key() {
		rec := s.record(p.System.URI, false)
		s.p.metrics.Outcome(StageRcpt, TempFail)
		s.p.log.Info("opes: recipient deferred, different policy", "trace_id", s.traceID())
		reply := buildReply(452, "4.5.3", "Recipient has a different OPES policy; send it in a separate transaction",
			s.systemEntry(), s.viaEntries(rec), p.System.PrivacyURL)
		return &Outcome{Kind: TempFail, Reply: reply, TraceID: s.traceID()}
	}
	s.run.bypass.pending = c
	return nil
}

// prefCovers reports whether a preference asks to bypass spec (whose
// normalised URI is norm). Both kinds cover every bypassable service
// unless the entry names services.
func prefCovers(p store.Preference, spec *ServiceSpec, norm string) bool {
	if len(p.Services) == 0 {
		return true
	}
	return slices.Contains(p.Services, norm) || slices.Contains(p.Services, spec.URI)
}

// decideInto records the decision on a request covering spec.
func (s *Session) decideInto(c *rcptClass, spec *ServiceSpec, trusted bool, source string) {
	if _, done := c.honored[spec]; done {
		return
	}
	if reason := refusal(spec, trusted); reason != "" {
		c.refused[spec] = reason
		return
	}
	delete(c.refused, spec)
	c.honored[spec] = source
}

// refusal is why a covered service cannot be bypassed, "" if it can.
func refusal(spec *ServiceSpec, trusted bool) string {
	switch {
	case !spec.Bypassable:
		return reasonNonBypassable
	case spec.RequiredForDelivery:
		return reasonNoNonOPES
	case !trusted:
		return reasonUnauthenticated
	}
	return ""
}

// acceptRecipient fixes the transaction's class after a recipient passed
// its stage.
func (s *Session) acceptRecipient() {
	run := &s.run.bypass
	if run.pending == nil {
		return
	}
	if run.class == nil {
		run.class = run.pending
		run.allPrefs = run.pending.prefs
	} else {
		run.allPrefs = run.allPrefs && run.pending.prefs
	}
	run.pending = nil
}

// consented reports whether services may act at stage st. Before RCPT
// the party is unknown: rules and services there are the operator's own
// access control (docs/decisions.md).
func (s *Session) consented(st Stage) bool {
	if st < StageRcpt || s.p.policy.Consent == nil {
		return true
	}
	run := &s.run.bypass
	if st == StageRcpt && run.pending != nil {
		return run.pending.consent
	}
	if run.class != nil {
		return run.class.consent
	}
	// No RCPT stage seen (the MTA did not send it): every recipient
	// must consent.
	p := s.p.policy
	sender := ""
	if s.tx.Sender != nil {
		sender = s.tx.Sender.Addr
	}
	if p.Consent.SenderConsents(sender) {
		return true
	}
	rcpts := s.tx.AcceptedRecipients()
	for _, r := range rcpts {
		if !p.Consent.RecipientConsents(r.Addr) {
			return false
		}
	}
	return len(rcpts) > 0
}

// currentClass is the class that applies at this point of the dialog.
func (s *Session) currentClass(st Stage) *rcptClass {
	run := &s.run.bypass
	if st == StageRcpt && run.pending != nil {
		return run.pending
	}
	return run.class
}

// bypassed decides whether service a is skipped at stage st, recording
// the decision in its trace entry and the audit log.
func (s *Session) bypassed(ctx context.Context, a *activeService, st Stage) bool {
	if a.honored {
		return true
	}
	if st < StageMail {
		return false
	}
	spec := a.spec
	var (
		covered  bool
		reason   string
		source   string
		honoured bool
	)
	consider := func(trusted bool, src string) {
		covered = true
		if r := refusal(spec, trusted); r == "" {
			honoured, source = true, src
		} else if reason == "" || reason == reasonUnauthenticated {
			reason = r
		}
	}
	if c := s.currentClass(st); c != nil {
		if src, ok := c.honored[spec]; ok {
			covered, honoured, source = true, true, src
		} else if r, ok := c.refused[spec]; ok {
			covered, reason = true, r
		}
	}
	run := &s.run.bypass
	if !honoured && run.dialog != nil && s.p.matcher.Covers(*run.dialog, spec.URI) {
		consider(s.dialogTrusted(), "mail-parameter")
	}
	if !honoured && st >= StageHeaders && !a.ranBeforeData {
		if req := s.messageBypass(); req != nil && s.p.matcher.Covers(*req, spec.URI) {
			consider(s.messageTrusted(ctx, st), "message")
		}
	}
	if !covered {
		return false
	}
	if a.rec == nil {
		a.rec = s.record(spec.URI, spec.Bypassable)
	}
	if honoured {
		a.honored = true
		a.rec.bypass, a.rec.reason, a.rec.action = "honored", "", ""
		a.rec.status = "skipped"
		s.auditEvent("bypass-decision", spec.URI, "honored", "", map[string]string{"source": source, "stage": st.String()})
		s.p.metrics.Bypass("honored", "")
		return true
	}
	if a.rec.bypass != "refused" || a.rec.reason != reason {
		a.rec.bypass, a.rec.reason = "refused", reason
		s.auditEvent("bypass-decision", spec.URI, "refused", reason, map[string]string{"stage": st.String()})
		s.p.metrics.Bypass("refused", reason)
	}
	return false
}

// messageBypass collects the OPES-Bypass fields once; nil when there are
// none (or only malformed ones).
func (s *Session) messageBypass() *bypass.Request {
	run := &s.run.bypass
	if run.message != nil {
		if run.message.All || len(run.message.URIs) > 0 {
			return run.message
		}
		return nil
	}
	vals := s.tx.Header.Values(FieldBypass)
	req, malformed := bypass.Collect(vals)
	run.message = &req
	if malformed > 0 {
		s.p.log.Info("opes: malformed OPES-Bypass fields ignored", "trace_id", s.traceID(), "count", malformed)
	}
	if len(vals) > 0 {
		s.auditEvent("bypass-request", "", "", "", map[string]string{"source": "message", "request": req.String()})
	}
	return s.messageBypass()
}

// messageTrusted decides whether the OPES-Bypass fields are authenticated.
// A DKIM signature can only be checked with the whole message, at the end
// of it; the decision is made once.
func (s *Session) messageTrusted(ctx context.Context, st Stage) bool {
	run := &s.run.bypass
	if run.msgTrusted != 0 {
		return run.msgTrusted > 0
	}
	ok := s.dialogTrusted() || (s.p.policy.Bypass.TrustPreferences && run.class != nil && run.allPrefs)
	if !ok && st == StageEOM && len(s.p.policy.Bypass.DKIMDomains) > 0 {
		ok = s.dkimTrusted(ctx)
	}
	if ok {
		run.msgTrusted = 1
	} else {
		run.msgTrusted = -1
	}
	return ok
}

// dkimTrusted verifies the message's DKIM signatures and looks for one by
// a trusted domain that covers OPES-Bypass.
func (s *Session) dkimTrusted(ctx context.Context) bool {
	if s.tx.Body == nil {
		return false
	}
	var hdr strings.Builder
	for _, f := range s.tx.Header.Fields() {
		if f.orig >= 0 { // not ours, not a service's
			writeField(&hdr, f)
		}
	}
	hdr.WriteString("\r\n")
	body := s.tx.Body.Reader()
	if _, err := body.Seek(0, 0); err != nil {
		return false
	}
	lookup := s.p.lookupTXT
	domains, err := bypass.SignedBy(ctx, io.MultiReader(strings.NewReader(hdr.String()), body), bypass.LookupTXTFunc(lookup))
	if err != nil {
		s.p.log.Info("opes: DKIM check of OPES-Bypass failed", "trace_id", s.traceID(), "err", err)
		return false
	}
	sender := ""
	if s.tx.Sender != nil {
		sender = s.tx.Sender.Domain()
	}
	for _, d := range domains {
		d = strings.ToLower(d)
		for _, want := range s.p.policy.Bypass.DKIMDomains {
			if strings.EqualFold(want, d) || (want == "sender" && sender != "" && d == sender) {
				return true
			}
		}
	}
	return false
}

// auditEvent writes one audit record; a failing audit log is logged, it
// does not stop mail (the decision is also in the trace).
func (s *Session) auditEvent(kind, service, decision, reason string, detail map[string]string) {
	if s.p.audit == nil {
		return
	}
	ev := audit.Event{Time: time.Now().UTC(), Kind: kind, TraceID: s.traceID(), Actor: "processor",
		Service: service, Decision: decision, Reason: reason, Detail: detail}
	if s.tx != nil && s.tx.Sender != nil {
		ev.Subject = SanitizeText(s.tx.Sender.Addr, 256)
	}
	if err := s.p.audit.Record(ev); err != nil {
		s.p.log.Error("opes: audit log write failed", "trace_id", s.traceID(), "err", err)
	}
}
