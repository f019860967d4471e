// Package reroute is the service that rewrites envelope recipients and
// selects their next hop from a directory (RFC 4496 §4.7): a map file, an
// LDAP server, or both (the map first).
//
// The lookup runs at RCPT, so an unknown recipient (with unknown =
// "reject") or a directory that is down is answered for that recipient
// in the SMTP dialog. The changes are made at the end of the message,
// the only place the milter protocol allows them: a rewritten recipient
// is deleted and its new address added, and every To, Cc, Bcc, Resent-To
// and Resent-Cc field naming the old address is rewritten to the new one,
// display names kept (RFC 4902 §5.6); the trace says action=rewritten.
// A next hop is handed to the MTA in a header field (X-OPES-Next-Hop) that
// Postfix acts on through milter_header_checks (see the docs); the trace
// says action=rerouted. Since that routes the whole message, recipients
// with different next hops are split into separate transactions with 452
// 4.5.3 at RCPT, which every SMTP client handles by sending them again.
//
// Options, under [service.options]:
//
//	map = "/etc/opes-milter/reroute.map"  # see MapFile
//	unknown = "pass"                      # or "reject" (550 5.1.1)
//	max_hops = 5                          # chained rewrites followed
//	headers = ["To", "Cc", "Bcc", "Resent-To", "Resent-Cc"]
//	next_hop_header = "X-OPES-Next-Hop"
//	[service.options.ldap]
//	url = "ldap://127.0.0.1:389"
//	base_dn = "dc=example,dc=org"
//	filter = "(mail=%s)"
//	address_attribute = "mailRoutingAddress"
//	next_hop_attribute = "mailHost"
package reroute

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Map           string       `toml:"map"`
	Unknown       string       `toml:"unknown"`
	MaxHops       int          `toml:"max_hops"`
	Headers       []string     `toml:"headers"`
	NextHopHeader string       `toml:"next_hop_header"`
	LDAP          *ldapOptions `toml:"ldap"`
}

type ldapOptions struct {
	URL                 string `toml:"url"`
	StartTLS            bool   `toml:"start_tls"`
	BindDN              string `toml:"bind_dn"`
	BindPasswordFile    string `toml:"bind_password_file"`
	BaseDN              string `toml:"base_dn"`
	Scope               string `toml:"scope"`
	Filter              string `toml:"filter"`
	AddressAttribute    string `toml:"address_attribute"`
	NextHopAttribute    string `toml:"next_hop_attribute"`
	Timeout             string `toml:"timeout"`
	MaxConnections      int    `toml:"max_connections"`
	InsecureOffLoopback bool   `toml:"insecure_off_loopback"`
}

// Defaults and bounds.
const (
	DefaultMaxHops       = 5
	DefaultNextHopHeader = "X-OPES-Next-Hop"
	maxMaxHops           = 20
	maxLDAPTimeout       = 60 * time.Second
)

// DefaultHeaders are the fields whose addresses follow a rewrite: the
// visible recipients and their resent counterparts. Delivered-To is not
// among them: delivery agents add it to record where mail was delivered
// and to detect loops, so it must keep saying what really happened.
var DefaultHeaders = []string{"To", "Cc", "Bcc", "Resent-To", "Resent-Cc"}

// Config is the service's configuration as Go values.
type Config struct {
	Directories   []Directory // consulted in order; the first with an entry wins
	RejectUnknown bool        // 550 5.1.1 for a recipient no directory knows
	MaxHops       int         // default DefaultMaxHops
	Headers       []string    // default DefaultHeaders
	NextHopHeader string      // default DefaultNextHopHeader
	Log           *slog.Logger
}

// Service is the reroute service.
type Service struct {
	cfg Config
	log *slog.Logger
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("reroute: decode options: %w", err)
		}
	}
	cfg := Config{MaxHops: o.MaxHops, Headers: o.Headers, NextHopHeader: o.NextHopHeader, Log: slog.Default()}
	switch o.Unknown {
	case "", "pass":
	case "reject":
		cfg.RejectUnknown = true
	default:
		return nil, opes.FieldErrorf("unknown", "%q is not \"pass\" or \"reject\"", o.Unknown)
	}
	if o.MaxHops < 0 || o.MaxHops > maxMaxHops {
		return nil, opes.FieldErrorf("max_hops", "%d is not in 1-%d", o.MaxHops, maxMaxHops)
	}
	if cfg.MaxHops == 0 {
		cfg.MaxHops = DefaultMaxHops
	}
	if o.Map == "" && o.LDAP == nil {
		return nil, opes.FieldErrorf("map", "map or [ldap] is required: without a directory the service changes nothing")
	}
	if o.Map != "" {
		m, err := LoadMapFile(o.Map)
		if err == nil {
			err = m.checkChains(cfg.MaxHops)
		}
		if err != nil {
			return nil, &opes.FieldError{Field: "map", Err: err}
		}
		cfg.Directories = append(cfg.Directories, m)
	}
	if o.LDAP != nil {
		d, err := newLDAPFromOptions(o.LDAP)
		if err != nil {
			return nil, err
		}
		cfg.Directories = append(cfg.Directories, d)
	}
	return NewService(cfg)
}

func newLDAPFromOptions(o *ldapOptions) (*LDAPDirectory, error) {
	cfg := LDAPConfig{
		URL: o.URL, StartTLS: o.StartTLS, BindDN: o.BindDN, BaseDN: o.BaseDN, Filter: o.Filter,
		AddressAttr: o.AddressAttribute, NextHopAttr: o.NextHopAttribute, MaxConnections: o.MaxConnections,
	}
	if o.URL == "" {
		return nil, opes.FieldErrorf("ldap.url", "is required, e.g. \"ldap://127.0.0.1:389\"")
	}
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps" && u.Scheme != "ldapi") || (u.Scheme != "ldapi" && u.Host == "") {
		return nil, opes.FieldErrorf("ldap.url", "%q is not ldap://host[:port], ldaps://host[:port] or ldapi://", o.URL)
	}
	if u.User != nil {
		return nil, opes.FieldErrorf("ldap.url", "credentials do not belong in the URL: use bind_dn and bind_password_file")
	}
	if o.StartTLS && u.Scheme != "ldap" {
		return nil, opes.FieldErrorf("ldap.start_tls", "applies to ldap:// URLs only")
	}
	if o.BindDN != "" {
		if _, err := ldap.ParseDN(o.BindDN); err != nil {
			return nil, opes.FieldErrorf("ldap.bind_dn", "%q is not a DN: %v", o.BindDN, err)
		}
		if o.BindPasswordFile == "" {
			return nil, opes.FieldErrorf("ldap.bind_password_file", "is required with bind_dn (an empty password would be an unauthenticated bind)")
		}
		// A password in clear text off this host would be readable on the
		// network (RFC 4513 §5.1.2).
		if u.Scheme == "ldap" && !o.StartTLS && !o.InsecureOffLoopback && !isLoopback(u.Hostname()) {
			return nil, opes.FieldErrorf("ldap.url", "%s is not on loopback: use ldaps://, start_tls = true, or set insecure_off_loopback = true", o.URL)
		}
	}
	if o.BindPasswordFile != "" {
		if o.BindDN == "" {
			return nil, opes.FieldErrorf("ldap.bind_password_file", "is set but bind_dn is not")
		}
		pw, err := readPasswordFile(o.BindPasswordFile)
		if err != nil {
			return nil, &opes.FieldError{Field: "ldap.bind_password_file", Err: err}
		}
		cfg.BindPassword = pw
	}
	if _, err := ldap.ParseDN(o.BaseDN); err != nil || o.BaseDN == "" {
		return nil, opes.FieldErrorf("ldap.base_dn", "%q is not a DN (required)", o.BaseDN)
	}
	switch o.Scope {
	case "", "sub":
		cfg.Scope = ldap.ScopeWholeSubtree
	case "one":
		cfg.Scope = ldap.ScopeSingleLevel
	case "base":
		cfg.Scope = ldap.ScopeBaseObject
	default:
		return nil, opes.FieldErrorf("ldap.scope", "%q is not sub, one or base", o.Scope)
	}
	if o.Filter == "" {
		cfg.Filter = "(mail=%s)"
	}
	if !strings.Contains(cfg.Filter, "%s") {
		return nil, opes.FieldErrorf("ldap.filter", "must contain %%s where the address goes, e.g. \"(mail=%%s)\"")
	}
	if _, err := ldap.CompileFilter(buildFilter(cfg.Filter, "joe@example.org")); err != nil {
		return nil, opes.FieldErrorf("ldap.filter", "%q is not an LDAP filter: %v", cfg.Filter, err)
	}
	for _, a := range []struct{ key, v string }{{"ldap.address_attribute", o.AddressAttribute}, {"ldap.next_hop_attribute", o.NextHopAttribute}} {
		if a.v != "" && !isAttrName(a.v) {
			return nil, opes.FieldErrorf(a.key, "%q is not an attribute name", a.v)
		}
	}
	if o.AddressAttribute == "" && o.NextHopAttribute == "" {
		return nil, opes.FieldErrorf("ldap.address_attribute", "address_attribute or next_hop_attribute is required")
	}
	if o.Timeout != "" {
		t, err := time.ParseDuration(o.Timeout)
		if err != nil || t <= 0 || t > maxLDAPTimeout {
			return nil, opes.FieldErrorf("ldap.timeout", "%q is not a duration in (0s, %s]", o.Timeout, maxLDAPTimeout)
		}
		cfg.Timeout = t
	}
	if o.MaxConnections < 0 || o.MaxConnections > 100 {
		return nil, opes.FieldErrorf("ldap.max_connections", "%d is not in 1-100", o.MaxConnections)
	}
	d, err := NewLDAPDirectory(cfg)
	if err != nil {
		return nil, &opes.FieldError{Field: "ldap", Err: err}
	}
	return d, nil
}

// readPasswordFile reads a secret kept out of the policy file, without
// its final line break.
func readPasswordFile(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q is not an absolute path", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if len(b) > 4096 {
		return "", fmt.Errorf("%s: longer than 4096 bytes", path)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pw, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isAttrName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ';') {
			return false
		}
	}
	return true
}

// NewService checks cfg and returns the service.
func NewService(cfg Config) (*Service, error) {
	if len(cfg.Directories) == 0 {
		return nil, fmt.Errorf("reroute: no directory")
	}
	if cfg.MaxHops <= 0 {
		cfg.MaxHops = DefaultMaxHops
	}
	if cfg.Headers == nil {
		cfg.Headers = DefaultHeaders
	}
	for i, h := range cfg.Headers {
		if !isFieldName(h) {
			return nil, opes.FieldErrorf(fmt.Sprintf("headers[%d]", i+1), "%q is not a header field name", h)
		}
		if isTraceField(h) {
			return nil, opes.FieldErrorf(fmt.Sprintf("headers[%d]", i+1), "%s is a trace field; its addresses are not rewritten", h)
		}
	}
	if cfg.NextHopHeader == "" {
		cfg.NextHopHeader = DefaultNextHopHeader
	}
	if !isFieldName(cfg.NextHopHeader) || isTraceField(cfg.NextHopHeader) {
		return nil, opes.FieldErrorf("next_hop_header", "%q is not a header field name of our own", cfg.NextHopHeader)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, log: log}, nil
}

func isFieldName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

func isTraceField(s string) bool {
	for _, f := range []string{opes.FieldSystem, opes.FieldVia, opes.FieldBypass} {
		if strings.EqualFold(s, f) {
			return true
		}
	}
	return false
}

// Needs implements opes.Service: lookups at RCPT, changes at the end of
// the message, which reads the header to rewrite it.
func (s *Service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageRcpt, opes.StageEOM), Headers: true}
}

// Begin implements opes.Service.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx {
	return &txState{s: s, tx: tx, decided: map[*opes.Recipient]Decision{}}
}

type txState struct {
	opes.BaseTx
	s       *Service
	tx      *opes.Transaction
	decided map[*opes.Recipient]Decision
}

var (
	unknownReply = opes.Reply{Code: 550, Enhanced: "5.1.1", Text: "Recipient address unknown in the directory"}
	splitReply   = opes.Reply{Code: 452, Enhanced: "4.5.3", Text: "Recipient has another next hop: send it in a separate transaction"}
)

func (t *txState) lookup(ctx context.Context, r *opes.Recipient) (Decision, error) {
	d, err := resolve(ctx, t.s.cfg.Directories, r.Addr, t.s.cfg.MaxHops)
	if err != nil {
		return Decision{}, fmt.Errorf("reroute: look up recipient: %w", err)
	}
	return d, nil
}

// Rcpt looks the recipient up. A directory failure is returned as an
// error, which the processor answers with 451 4.3.0 for this recipient
// (unless the policy's on_error says otherwise).
func (t *txState) Rcpt(ctx context.Context, r *opes.Recipient) (opes.Verdict, error) {
	d, err := t.lookup(ctx, r)
	if err != nil {
		return opes.Verdict{}, err
	}
	if !d.Known && t.s.cfg.RejectUnknown {
		return opes.Verdict{Kind: opes.Reject, Reply: unknownReply, Reason: "unknown recipient"}, nil
	}
	// The next hop is a decision for the whole message: a recipient that
	// goes elsewhere than those already accepted waits for a transaction
	// of its own.
	for q, dq := range t.decided {
		if q != r && !q.Refused && dq.NextHop != d.NextHop {
			// Traced as "rerouted", not "rejected": the recipient is only
			// deferred, and the trace of the delivered part must not
			// read as a refusal.
			return opes.Verdict{Kind: opes.TempFail, Action: "rerouted", Reply: splitReply, Reason: "different next hop"}, nil
		}
	}
	t.decided[r] = d
	return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
}

// EndOfMessage changes the envelope and the header. Recipients the
// service did not see at RCPT (it was enabled later) are looked up now;
// a failure then refuses the whole message with a tempfail.
func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	tx := t.tx
	accepted := tx.AcceptedRecipients()
	hop, hopSet := "", false
	type rewrite struct {
		r  *opes.Recipient
		to string
	}
	var rewrites []rewrite
	for _, r := range accepted {
		d, ok := t.decided[r]
		if !ok {
			var err error
			if d, err = t.lookup(ctx, r); err != nil {
				return opes.Verdict{}, err
			}
			if !d.Known && t.s.cfg.RejectUnknown {
				return opes.Verdict{Kind: opes.Reject, Reply: opes.Reply{Code: 550, Enhanced: "5.1.1", Text: unknownReply.Text}, Reason: "unknown recipient"}, nil
			}
		}
		if hopSet && d.NextHop != hop {
			// Only possible for recipients not seen at RCPT: routing
			// them all to one host would deliver some to the wrong place.
			return opes.Verdict{}, fmt.Errorf("reroute: recipients with different next hops in one transaction (enable the service before RCPT)")
		}
		hop, hopSet = d.NextHop, true
		if d.Address != "" {
			rewrites = append(rewrites, rewrite{r, d.Address})
		}
	}

	// Envelope: the new address replaces the old one, once, and not at
	// all if it is already a recipient (two aliases of one mailbox).
	present := map[string]bool{}
	for _, r := range accepted {
		present[strings.ToLower(r.Addr)] = true
	}
	for _, rw := range rewrites {
		delete(present, strings.ToLower(rw.r.Addr))
	}
	repl := map[string]string{}
	for _, rw := range rewrites {
		if err := tx.DeleteRecipient(rw.r.Addr); err != nil {
			return opes.Verdict{}, fmt.Errorf("reroute: delete recipient: %w", err)
		}
		key := strings.ToLower(rw.to)
		if !present[key] {
			// The ESMTP parameters (NOTIFY, ORCPT) stay with the recipient.
			if err := tx.AddRecipient(opes.Address{Addr: rw.to, Args: rw.r.Args}); err != nil {
				return opes.Verdict{}, fmt.Errorf("reroute: add recipient: %w", err)
			}
			present[key] = true
		}
		repl[strings.ToLower(rw.r.Addr)] = rw.to
	}
	t.rewriteHeader(repl)

	// A next-hop field in the message as received is someone else's
	// claim: only ours may reach the MTA's milter_header_checks.
	forged := len(tx.Header.Values(t.s.cfg.NextHopHeader)) > 0
	tx.Header.Del(t.s.cfg.NextHopHeader)
	if hop != "" {
		if err := tx.Header.Add(t.s.cfg.NextHopHeader, hop); err != nil {
			return opes.Verdict{}, fmt.Errorf("reroute: add %s: %w", t.s.cfg.NextHopHeader, err)
		}
	}
	action := "analyzed"
	switch {
	case len(rewrites) > 0:
		action = "rewritten"
	case hop != "":
		action = "rerouted"
	case forged:
		action = "modified"
	}
	return opes.Verdict{Kind: opes.Continue, Action: action}, nil
}

// rewriteHeader applies repl to the configured address fields. A field
// that does not parse is left as it is and logged: the envelope decides
// delivery, and a field we cannot read we cannot rewrite correctly either.
func (t *txState) rewriteHeader(repl map[string]string) {
	if len(repl) == 0 {
		return
	}
	h := t.tx.Header
	for _, name := range t.s.cfg.Headers {
		n := 0
		for _, f := range h.Fields() {
			if !strings.EqualFold(f.Name, name) {
				continue
			}
			n++
			nv, changed, err := rewriteAddressList(f.Value, repl)
			if err != nil {
				t.s.log.Warn("reroute: header field not rewritten: it does not parse", "trace_id", t.tx.TraceID(),
					"field", f.Name, "err", err)
				continue
			}
			if !changed {
				continue
			}
			if _, err := h.SetAt(f.Name, n, nv); err != nil {
				t.s.log.Warn("reroute: header field not rewritten", "trace_id", t.tx.TraceID(), "field", f.Name, "err", err)
			}
		}
	}
}
