package policy

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
)

// The sections of the OPES guarantees (issue 3): consent, bypass, the
// store, the quarantine, non-delivery reports and the audit log.

var (
	consentKeys    = []string{"all", "recipients", "senders", "party"}
	bypassKeys     = []string{"unknown_as_wildcard", "trust_auth", "trusted_networks", "trust_preferences", "dkim_domains"}
	storeKeys      = []string{"backend", "path", "dsn", "max_quarantine_size"}
	quarantineKeys = []string{"mode", "expire", "release_relay", "release_helo"}
	ndrKeys        = []string{"relay", "hostname", "from", "max_age"}
	auditKeys      = []string{"log"}
)

// Store is the [store] section; Backend "" means no store.
type Store = store.Config

// Quarantine holds the [quarantine] settings.
type Quarantine struct {
	// Mode: "mta" keeps held mail in the MTA's hold queue (no store
	// needed); "store" keeps the original in our store and lets the MTA
	// drop its copy; "both" does both.
	Mode string
	// Expire is how long a message stays held before it expires (and its
	// sender gets an NDR).
	Expire time.Duration
	// ReleaseRelay is host:port of the SMTP listener released messages
	// are re-injected into; it must not run this milter again.
	ReleaseRelay string
	ReleaseHelo  string
}

// NDR holds the [ndr] settings (PROFILE §4).
type NDR struct {
	// Relay is host:port of the SMTP relay reports are submitted to; ""
	// disables reports, and discard verdicts become refusals.
	Relay    string
	Hostname string // Reporting-MTA and HELO name; default the host name
	From     string // header From; default MAILER-DAEMON@<hostname>
	MaxAge   time.Duration
}

// Audit holds the [audit] settings.
type Audit struct {
	Log string // append-only JSON-lines file; "" = off
}

func (l *loader) consent(v any, present bool) *opes.Consent {
	p := path{{key: "consent"}}
	c := &opes.Consent{}
	t, ok := l.table(v, p, consentKeys)
	if !ok || !present {
		return c
	}
	if b, ok := t.boolean("all"); ok {
		c.All = b
	}
	c.Recipients = l.parties(t, "recipients")
	c.Senders = l.parties(t, "senders")
	if s, ok := t.str("party"); ok {
		if err := checkText(s, 400); err != nil {
			l.errorf(p.key("party"), "%v", err)
		}
		c.Party = s
	}
	return c
}

// parties reads a list of "user@domain" and "@domain" entries, lower-cased.
func (l *loader) parties(t table, k string) []string {
	list, _ := t.strings(k)
	out := make([]string, 0, len(list))
	for i, e := range list {
		if err := checkParty(e); err != nil {
			l.errorf(t.p.key(k).index(i+1), "%v", err)
			continue
		}
		out = append(out, strings.ToLower(e))
	}
	return out
}

func checkParty(s string) error {
	at := strings.LastIndexByte(s, '@')
	switch {
	case at < 0:
		return fmt.Errorf(`%q: want "user@example.net" or "@example.net"`, s)
	case at == len(s)-1 || strings.ContainsAny(s, " \t<>,;\"()[]\\") || strings.Contains(s[at+1:], ".."):
		return fmt.Errorf("%q is not an address or @domain", s)
	}
	return checkText(s, 320)
}

func (l *loader) bypassSection(v any, b *opes.BypassPolicy) {
	p := path{{key: "bypass"}}
	*b = opes.BypassPolicy{UnknownAsAll: true, TrustAuth: true, TrustPreferences: true}
	t, ok := l.table(v, p, bypassKeys)
	if !ok {
		return
	}
	if x, ok := t.boolean("unknown_as_wildcard"); ok {
		b.UnknownAsAll = x
	}
	if x, ok := t.boolean("trust_auth"); ok {
		b.TrustAuth = x
	}
	if x, ok := t.boolean("trust_preferences"); ok {
		b.TrustPreferences = x
	}
	nets, _ := t.strings("trusted_networks")
	for i, n := range nets {
		pfx, err := netip.ParsePrefix(n)
		if err != nil {
			if a, aerr := netip.ParseAddr(n); aerr == nil {
				pfx, err = a.Prefix(a.BitLen())
			}
		}
		if err != nil {
			l.errorf(p.key("trusted_networks").index(i+1), "%q is not an address or CIDR prefix", n)
			continue
		}
		b.TrustNetworks = append(b.TrustNetworks, pfx.Masked())
	}
	doms, _ := t.strings("dkim_domains")
	for i, d := range doms {
		if d != "sender" && (d == "" || strings.ContainsAny(d, " @/;,") || checkText(d, 253) != nil) {
			l.errorf(p.key("dkim_domains").index(i+1), `%q is not a domain name or "sender"`, d)
			continue
		}
		b.DKIMDomains = append(b.DKIMDomains, strings.ToLower(d))
	}
}

func (l *loader) storeSection(v any, s *Store) {
	p := path{{key: "store"}}
	t, ok := l.table(v, p, storeKeys)
	if !ok {
		return
	}
	if b, ok := t.str("backend"); ok {
		switch b {
		case "embedded", "postgres":
			s.Backend = b
		default:
			l.errorf(p.key("backend"), `%q: want "embedded" or "postgres"`, b)
		}
	}
	if x, ok := t.str("path"); ok {
		if !filepath.IsAbs(x) {
			l.errorf(p.key("path"), "%q is not an absolute path", x)
		}
		s.Path = x
	}
	if x, ok := t.str("dsn"); ok {
		s.DSN = x
	}
	if n, ok := t.integer("max_quarantine_size"); ok {
		if n < 0 {
			l.errorf(p.key("max_quarantine_size"), "must not be negative (0 means unbounded)")
		}
		s.MaxQuarantineBytes = n
	}
	switch {
	case s.Backend == "" && (s.Path != "" || s.DSN != ""):
		s.Backend = "embedded"
		if s.DSN != "" {
			s.Backend = "postgres"
		}
	}
	if s.Backend == "embedded" && s.Path == "" {
		l.errorf(p.key("path"), `is required with backend = "embedded", e.g. "/var/lib/opes-milter/store.db"`)
	}
	if s.Backend == "postgres" && s.DSN == "" {
		l.errorf(p.key("dsn"), `is required with backend = "postgres", e.g. "postgres://opes@db/opes"`)
	}
}

func (l *loader) quarantineSection(v any, q *Quarantine, st *Store) {
	p := path{{key: "quarantine"}}
	*q = Quarantine{Mode: "mta", Expire: 30 * 24 * time.Hour}
	t, ok := l.table(v, p, quarantineKeys)
	if !ok {
		return
	}
	if m, ok := t.str("mode"); ok {
		switch m {
		case "mta", "store", "both":
			q.Mode = m
		default:
			l.errorf(p.key("mode"), `%q: want "mta", "store" or "both"`, m)
		}
	}
	if d, ok := t.duration("expire"); ok {
		if d < time.Hour {
			l.errorf(p.key("expire"), "must be at least 1h")
		}
		q.Expire = d
	}
	if s, ok := t.str("release_relay"); ok {
		if err := checkHostPort(s); err != nil {
			l.errorf(p.key("release_relay"), "%v", err)
		}
		q.ReleaseRelay = s
	}
	if s, ok := t.str("release_helo"); ok {
		q.ReleaseHelo = s
	}
	if q.Mode != "mta" && st.Backend == "" {
		l.errorf(p.key("mode"), `%q needs a [store]`, q.Mode)
	}
}

func (l *loader) ndrSection(v any, n *NDR) {
	p := path{{key: "ndr"}}
	*n = NDR{MaxAge: 5 * 24 * time.Hour}
	t, ok := l.table(v, p, ndrKeys)
	if !ok {
		return
	}
	if s, ok := t.str("relay"); ok && s != "" {
		if err := checkHostPort(s); err != nil {
			l.errorf(p.key("relay"), "%v", err)
		}
		n.Relay = s
	}
	if s, ok := t.str("hostname"); ok {
		if s == "" || strings.ContainsAny(s, " @/;,") || checkText(s, 253) != nil {
			l.errorf(p.key("hostname"), "%q is not a host name", s)
		}
		n.Hostname = s
	}
	if s, ok := t.str("from"); ok {
		if err := checkParty(s); err != nil || strings.HasPrefix(s, "@") {
			l.errorf(p.key("from"), "%q is not an address", s)
		}
		n.From = s
	}
	if d, ok := t.duration("max_age"); ok && d > 0 {
		n.MaxAge = d
	}
}

func (l *loader) auditSection(v any, a *Audit) {
	p := path{{key: "audit"}}
	t, ok := l.table(v, p, auditKeys)
	if !ok {
		return
	}
	if s, ok := t.str("log"); ok {
		if s != "" && !filepath.IsAbs(s) {
			l.errorf(p.key("log"), "%q is not an absolute path", s)
		}
		a.Log = s
	}
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf(`%q is not host:port, e.g. "127.0.0.1:10026"`, s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be 1-65535", s)
	}
	return nil
}

// checkProse accepts text for the disclosure page: valid UTF-8, line
// breaks and tabs, no other control characters.
func checkProse(s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("longer than %d bytes", limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not valid UTF-8")
	}
	for i, r := range s {
		if (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f {
			return fmt.Errorf("control character %U at offset %d", r, i)
		}
	}
	return nil
}
