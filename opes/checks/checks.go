// Package checks is the built-in spam checks service of RFC 4496 §4.2:
// cheap tests on the SMTP dialog that need no content scanner — a sane
// HELO name, the client address in DNS block lists, and an envelope
// sender that matches the visible From: domain. Each check is switched on
// by its option; one action applies to every finding.
//
// Options, under [service.options]:
//
//	helo = true                       # HELO/EHLO name sanity
//	local_names = ["mx1.example.net"] # our own names: a client using one lies
//	from_mismatch = true              # envelope sender vs From: domain
//	dnsbl = ["zen.spamhaus.org"]      # DNS block list zones for the client address
//	dnsbl_stage = "connect"           # connect | mail
//	resolver = "127.0.0.1:53"         # required with dnsbl; IP[:port]
//	timeout = "2s"                    # per DNS lookup
//	action = "tag"                    # tag | reject
//
// With action "tag" the findings of every stage are collected and one
// X-OPES-Checks field listing them is added at the end of the message;
// with "reject" the stage a finding arises at is refused with 550 5.7.1.
// Every failure to check (a DNS timeout, an unparsable address) lets the
// mail pass: these checks are hints, and a broken resolver must not stop
// the mail.
package checks

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// HeaderField is the field the tag action adds.
const HeaderField = "X-OPES-Checks"

// Defaults and bounds of the options.
const (
	DefaultTimeout = 2 * time.Second
	// maxTimeout: the lookups hold the SMTP client at connect; a typo
	// ("2m") must not turn into minutes of waiting per connection.
	maxTimeout = 30 * time.Second
	maxZones   = 16
	maxLocal   = 64
)

type options struct {
	Helo         bool     `toml:"helo"`
	LocalNames   []string `toml:"local_names"`
	FromMismatch bool     `toml:"from_mismatch"`
	DNSBL        []string `toml:"dnsbl"`
	DNSBLStage   string   `toml:"dnsbl_stage"`
	Resolver     string   `toml:"resolver"`
	Timeout      string   `toml:"timeout"`
	Action       string   `toml:"action"`
}

type service struct {
	helo       bool
	localNames map[string]bool
	from       bool
	dnsbl      *dnsbl // nil when off
	dnsblStage opes.Stage
	reject     bool
	needs      opes.Needs
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("checks: decode options: %w", err)
		}
	}
	s := &service{helo: o.Helo, from: o.FromMismatch, dnsblStage: opes.StageConnect}
	switch strings.ToLower(strings.TrimSpace(o.Action)) {
	case "", "tag":
	case "reject":
		s.reject = true
	default:
		return nil, opes.FieldErrorf("action", "unknown action %q (want tag or reject)", o.Action)
	}
	if len(o.LocalNames) > maxLocal {
		return nil, opes.FieldErrorf("local_names", "more than %d names", maxLocal)
	}
	if len(o.LocalNames) > 0 {
		if !o.Helo {
			return nil, opes.FieldErrorf("local_names", "needs helo = true: only the HELO check uses it")
		}
		s.localNames = map[string]bool{}
		for i, n := range o.LocalNames {
			d, ok := normalizeDomain(n)
			if !ok {
				return nil, opes.FieldErrorf(fmt.Sprintf("local_names[%d]", i+1), "%q is not a valid domain name", n)
			}
			s.localNames[d] = true
		}
	}
	if len(o.DNSBL) > 0 {
		d, err := newDNSBL(o)
		if err != nil {
			return nil, err
		}
		s.dnsbl = d
		switch strings.ToLower(strings.TrimSpace(o.DNSBLStage)) {
		case "", "connect":
		case "mail":
			s.dnsblStage = opes.StageMail
		default:
			return nil, opes.FieldErrorf("dnsbl_stage", "unknown stage %q (want connect or mail)", o.DNSBLStage)
		}
	} else {
		for _, f := range []struct{ name, v string }{{"resolver", o.Resolver}, {"timeout", o.Timeout}, {"dnsbl_stage", o.DNSBLStage}} {
			if f.v != "" {
				return nil, opes.FieldErrorf(f.name, "is only used with dnsbl")
			}
		}
	}
	if !s.helo && !s.from && s.dnsbl == nil {
		return nil, opes.FieldErrorf("helo", "no check is enabled: set helo, from_mismatch or dnsbl")
	}
	s.needs = s.computeNeeds()
	return s, nil
}

// computeNeeds lists the hooks that do work. MAIL is among them for the
// HELO and DNSBL checks: a second message on one connection starts after CONNECT and HELO, so
// the checks of those stages run again there for the new transaction
// (see txState.catchUp).
func (s *service) computeNeeds() opes.Needs {
	var st opes.StageSet
	var n opes.Needs
	if s.helo || s.dnsbl != nil {
		st = st.Add(opes.StageMail)
	}
	if s.helo {
		st = st.Add(opes.StageHelo)
	}
	if s.dnsbl != nil && s.dnsblStage == opes.StageConnect {
		st = st.Add(opes.StageConnect)
	}
	if s.from {
		st = st.Add(opes.StageEOM)
		n.Headers = true
	}
	if !s.reject {
		st = st.Add(opes.StageEOM)
	}
	n.Stages = st
	return n
}

func (s *service) Needs() opes.Needs { return s.needs }

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

// Finding is one failed check: Name goes into the X-OPES-Checks field,
// Text into the refusal.
type Finding struct {
	Name string
	Text string
}

// txState is the per-transaction state: which checks ran and what they
// found, so the tag action can report the findings of every stage at the
// end of the message.
type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction

	heloDone, dnsblDone bool
	findings            []Finding
	status              string // trace status still to report ("timeout", "failed")
}

func (t *txState) Connect(ctx context.Context) (opes.Verdict, error) {
	if t.s.dnsbl != nil && t.s.dnsblStage == opes.StageConnect {
		return t.verdict(t.runDNSBL(ctx)), nil
	}
	return opes.ContinueVerdict, nil
}

func (t *txState) Helo(context.Context) (opes.Verdict, error) {
	if t.s.helo {
		return t.verdict(t.runHelo()), nil
	}
	return opes.ContinueVerdict, nil
}

func (t *txState) Mail(ctx context.Context) (opes.Verdict, error) {
	return t.verdict(t.catchUp(ctx)), nil
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	found := t.catchUp(ctx)
	if t.s.from {
		found = append(found, t.runFrom()...)
	}
	if t.s.reject {
		return t.verdict(found), nil
	}
	v := opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: t.takeStatus()}
	if len(t.findings) == 0 {
		return v, nil
	}
	if err := t.tx.Header.Add(HeaderField, formatFindings(t.findings)); err != nil {
		return opes.Verdict{}, fmt.Errorf("checks: add %s: %w", HeaderField, err)
	}
	v.Action = "header-added"
	return v, nil
}

// catchUp runs the HELO and connect-time checks that have not run for
// this transaction: the MTA skips stages, a rule may enable the service
// after them, and a second message on the connection starts at MAIL.
func (t *txState) catchUp(ctx context.Context) []Finding {
	var found []Finding
	// Dialog order, so the field lists findings alike for every message.
	if t.s.dnsbl != nil && !t.dnsblDone {
		found = append(found, t.runDNSBL(ctx)...)
	}
	if t.s.helo && !t.heloDone {
		found = append(found, t.runHelo()...)
	}
	return found
}

func (t *txState) runHelo() []Finding {
	t.heloDone = true
	f, ok := checkHelo(t.tx.Conn.Helo, t.tx.Conn.Addr, t.s.localNames)
	if !ok {
		return nil
	}
	t.findings = append(t.findings, f)
	return []Finding{f}
}

func (t *txState) runDNSBL(ctx context.Context) []Finding {
	t.dnsblDone = true
	addr := t.tx.Conn.Addr
	if !addr.IsValid() {
		return nil // not an IP connection: nothing to look up
	}
	found, status := t.s.dnsbl.check(ctx, addr)
	if status != "" {
		t.status = status
	}
	t.findings = append(t.findings, found...)
	return found
}

func (t *txState) runFrom() []Finding {
	f, ok := checkFrom(t.tx.Sender, t.tx.Header.Values("From"))
	if !ok {
		return nil
	}
	t.findings = append(t.findings, f)
	return []Finding{f}
}

func (t *txState) takeStatus() string {
	s := t.status
	t.status = ""
	return s
}

// verdict turns the findings of one hook into its verdict: with the
// reject action the first finding refuses the stage; with tag they wait
// for the end of the message.
func (t *txState) verdict(found []Finding) opes.Verdict {
	v := opes.Verdict{Kind: opes.Continue, Status: t.takeStatus()}
	if t.s.reject && len(found) > 0 {
		f := found[0]
		v.Kind = opes.Reject
		v.Action = "rejected"
		v.Reason = f.Name
		v.Reply = opes.Reply{Code: 550, Enhanced: "5.7.1", Text: f.Text}
	}
	return v
}

// formatFindings renders the field value, folded so that no line grows
// beyond 78 octets however many zones list the client.
func formatFindings(fs []Finding) string {
	var b strings.Builder
	line := len(HeaderField) + 2
	for i, f := range fs {
		if i > 0 {
			b.WriteByte(',')
			line++
			if line+1+len(f.Name) > 78 {
				b.WriteString("\r\n\t")
				line = 1
			} else {
				b.WriteByte(' ')
				line++
			}
		}
		b.WriteString(f.Name)
		line += len(f.Name)
	}
	return b.String()
}

// unmap returns a in the form used for comparisons and lookups: an
// IPv4-mapped IPv6 address is the IPv4 client it stands for.
func unmap(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }
