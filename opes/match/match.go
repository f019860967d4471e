// Package match compiles the conditions of policy rules and services
// (client address, HELO, AUTH, TLS, envelope, header fields, size) into an
// opes.Matcher. Everything that can fail — CIDRs, regular expressions,
// addresses — is parsed once at load, so a bad pattern is a configuration
// error with its position and evaluating a message does no parsing.
//
// Within one key the listed values are alternatives (OR); different keys
// must all hold (AND); an empty Spec matches every transaction.
package match

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// MaxPatternLen bounds each configured regular expression. RE2 matches in
// linear time, but the compiled program grows with the pattern; a bound
// keeps a mistaken or hostile policy from costing unbounded memory.
const MaxPatternLen = 1000

// Spec is the TOML form of a condition. The keys are shared by rule
// conditions and by services that select mail (acl entries, tag's when).
type Spec struct {
	Client          []string `toml:"client"`           // IP addresses or CIDRs, IPv4 or IPv6
	Helo            []string `toml:"helo"`             // regexes against the HELO/EHLO name
	Auth            []string `toml:"auth"`             // SASL login names, case-insensitive; "*" = any authenticated client
	Authenticated   *bool    `toml:"authenticated"`    // SMTP AUTH succeeded (or not)
	TLS             *bool    `toml:"tls"`              // the session is (not) encrypted
	Sender          []string `toml:"sender"`           // exact addresses, case-insensitive; "<>" = null reverse-path
	SenderDomain    []string `toml:"sender_domain"`    // "example.org" = that domain, ".example.org" = any subdomain
	SenderRegex     []string `toml:"sender_regex"`     // regexes against the sender address
	Recipient       []string `toml:"recipient"`        // like sender, for recipients
	RecipientDomain []string `toml:"recipient_domain"` // like sender_domain
	RecipientRegex  []string `toml:"recipient_regex"`  // like sender_regex
	Header          []string `toml:"header"`           // "Name: regex"; "Name:" alone = the field is present
	SizeOver        int64    `toml:"size_over"`        // body larger than this many octets; 0 = no size condition

	// Lookup lists: files with one entry per line ('#' starts a comment),
	// added to the list of the same name. They are read when the policy
	// is loaded, so SIGHUP picks up their changes.
	ClientFile          string `toml:"client_file"`
	SenderFile          string `toml:"sender_file"`
	SenderDomainFile    string `toml:"sender_domain_file"`
	RecipientFile       string `toml:"recipient_file"`
	RecipientDomainFile string `toml:"recipient_domain_file"`
}

// Condition is a compiled Spec. It implements opes.Matcher. The zero
// value and a nil *Condition match everything.
type Condition struct {
	clients       []netip.Prefix
	helo          []*regexp.Regexp
	auth          []string // lower-cased login names
	authAny       bool
	authenticated *bool
	tls           *bool

	sender    addrCond
	recipient addrCond

	header   []headerCond
	sizeOver int64 // 0 = no size condition; Compile refuses negative values
}

// addrCond is the envelope part of a condition for one address. The three
// kinds are ANDed; each one is an OR of its values.
type addrCond struct {
	exact   []string // lower-cased; "" is the null reverse-path
	domains []domainPattern
	regex   []*regexp.Regexp
}

func (a *addrCond) empty() bool {
	return len(a.exact) == 0 && len(a.domains) == 0 && len(a.regex) == 0
}

type domainPattern struct {
	domain string // lower-case, without the leading dot
	sub    bool   // ".domain": strict subdomains only, as in Postfix tables
}

type headerCond struct {
	name string
	re   *regexp.Regexp // nil: the field only has to be present
}

// Compile checks and compiles s. Errors are *opes.FieldError whose Field
// is the TOML key with a 1-based index, e.g. "client[2]".
func Compile(s Spec) (*Condition, error) {
	for _, lf := range []struct {
		key  string
		path string
		list *[]string
	}{
		{"client_file", s.ClientFile, &s.Client},
		{"sender_file", s.SenderFile, &s.Sender},
		{"sender_domain_file", s.SenderDomainFile, &s.SenderDomain},
		{"recipient_file", s.RecipientFile, &s.Recipient},
		{"recipient_domain_file", s.RecipientDomainFile, &s.RecipientDomain},
	} {
		if lf.path == "" {
			continue
		}
		entries, err := readList(lf.path)
		if err != nil {
			return nil, &opes.FieldError{Field: lf.key, Err: err}
		}
		// Check each entry alone first, so an error names its line.
		base := len(*lf.list)
		*lf.list = append(append([]string(nil), (*lf.list)...), entryValues(entries)...)
		if err := checkListEntries(lf.key, lf.path, entries, base, *lf.list); err != nil {
			return nil, err
		}
	}
	return compileLists(s)
}

// compileLists compiles the inline lists of s (files already merged).
func compileLists(s Spec) (*Condition, error) {
	c := &Condition{authenticated: s.Authenticated, tls: s.TLS}
	for i, v := range s.Client {
		p, err := parseClient(v)
		if err != nil {
			return nil, fieldErr("client", i, err)
		}
		c.clients = append(c.clients, p)
	}
	for i, v := range s.Helo {
		re, err := compileRegex(v)
		if err != nil {
			return nil, fieldErr("helo", i, err)
		}
		c.helo = append(c.helo, re)
	}
	for i, v := range s.Auth {
		v = strings.TrimSpace(v)
		if v == "*" {
			c.authAny = true
			continue
		}
		if err := checkPrintable(v, 256); err != nil {
			return nil, fieldErr("auth", i, fmt.Errorf("login name %w", err))
		}
		c.auth = append(c.auth, strings.ToLower(v))
	}
	var err error
	if c.sender, err = compileAddr("sender", s.Sender, s.SenderDomain, s.SenderRegex, true); err != nil {
		return nil, err
	}
	if c.recipient, err = compileAddr("recipient", s.Recipient, s.RecipientDomain, s.RecipientRegex, false); err != nil {
		return nil, err
	}
	for i, v := range s.Header {
		h, err := parseHeaderCond(v)
		if err != nil {
			return nil, fieldErr("header", i, err)
		}
		c.header = append(c.header, h)
	}
	if s.SizeOver < 0 {
		return nil, opes.FieldErrorf("size_over", "must not be negative, got %d", s.SizeOver)
	}
	c.sizeOver = s.SizeOver
	return c, nil
}

func fieldErr(key string, i int, err error) *opes.FieldError {
	return &opes.FieldError{Field: fmt.Sprintf("%s[%d]", key, i+1), Err: err}
}

// parseClient accepts "192.0.2.1", "2001:db8::1", "192.0.2.0/24" or
// "2001:db8::/32". Host bits set in a CIDR are cleared: "192.0.2.7/24"
// is read as the network, the way people write it in Postfix tables.
func parseClient(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return netip.Prefix{}, errors.New("empty address")
	}
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
		}
		// An IPv4-mapped prefix would never match: client addresses are
		// unmapped before the comparison.
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("%q: write IPv4-mapped networks as IPv4", v)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", v)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zoned addresses are not supported", v)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// compileRegex compiles a case-insensitive RE2 expression: host names,
// addresses and header names are case-insensitive, so a pattern that is
// case-sensitive by default would silently miss mail. "(?-i)" restores
// case sensitivity where it is wanted.
func compileRegex(v string) (*regexp.Regexp, error) {
	if v == "" {
		return nil, errors.New("empty regular expression")
	}
	if len(v) > MaxPatternLen {
		return nil, fmt.Errorf("regular expression longer than %d characters", MaxPatternLen)
	}
	re, err := regexp.Compile("(?i)" + v)
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %w", v, err)
	}
	return re, nil
}

func compileAddr(key string, exact, domains, regexes []string, null bool) (addrCond, error) {
	var a addrCond
	for i, v := range exact {
		v = strings.TrimSpace(v)
		if null && v == "<>" {
			a.exact = append(a.exact, "")
			continue
		}
		// Angle brackets are how addresses appear in logs; accept them.
		if len(v) > 2 && v[0] == '<' && v[len(v)-1] == '>' {
			v = v[1 : len(v)-1]
		}
		if err := checkAddress(v); err != nil {
			return a, fieldErr(key, i, err)
		}
		a.exact = append(a.exact, strings.ToLower(v))
	}
	for i, v := range domains {
		d, err := parseDomain(v)
		if err != nil {
			return a, fieldErr(key+"_domain", i, err)
		}
		a.domains = append(a.domains, d)
	}
	for i, v := range regexes {
		re, err := compileRegex(v)
		if err != nil {
			return a, fieldErr(key+"_regex", i, err)
		}
		a.regex = append(a.regex, re)
	}
	return a, nil
}

func checkAddress(v string) error {
	if v == "" || v == "<>" {
		return errors.New(`empty address (the null reverse-path "<>" is only a sender)`)
	}
	if len(v) > 512 {
		return errors.New("address longer than 512 octets")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= 0x20 || c == 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("address %q contains byte 0x%02x", v, c)
		}
	}
	return nil
}

func parseDomain(v string) (domainPattern, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	var d domainPattern
	if strings.HasPrefix(v, ".") {
		d.sub = true
		v = v[1:]
	}
	// The domain of an address never ends with a dot; a configured
	// trailing dot (FQDN style) would otherwise never match.
	v = strings.TrimSuffix(v, ".")
	if v == "" {
		return d, errors.New("empty domain")
	}
	if len(v) > 255 {
		return d, errors.New("domain longer than 255 octets")
	}
	if strings.HasPrefix(v, "[") != strings.HasSuffix(v, "]") {
		return d, fmt.Errorf("domain %q: unbalanced address literal brackets", v)
	}
	if d.sub && strings.HasPrefix(v, "[") {
		return d, fmt.Errorf("domain %q: an address literal has no subdomains", v)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= 0x20 || c == 0x7f || c == '@' || c == '<' || c == '>' {
			return d, fmt.Errorf("domain %q contains byte 0x%02x", v, c)
		}
	}
	if strings.Contains(v, "..") || strings.HasPrefix(v, ".") {
		return d, fmt.Errorf("domain %q has an empty label", v)
	}
	d.domain = v
	return d, nil
}

func parseHeaderCond(v string) (headerCond, error) {
	name, pattern, ok := strings.Cut(v, ":")
	if !ok {
		return headerCond{}, fmt.Errorf(`%q is not "Name: regex"`, v)
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 76 {
		return headerCond{}, fmt.Errorf("header field name %q is empty or longer than 76 octets", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 {
			return headerCond{}, fmt.Errorf("header field name %q contains byte 0x%02x", name, c)
		}
	}
	h := headerCond{name: name}
	if pattern = strings.TrimSpace(pattern); pattern != "" {
		re, err := compileRegex(pattern)
		if err != nil {
			return headerCond{}, err
		}
		h.re = re
	}
	return h, nil
}

// checkPrintable refuses empty, over-long and non-printable values.
func checkPrintable(v string, max int) error {
	if v == "" {
		return errors.New("is empty")
	}
	if len(v) > max {
		return fmt.Errorf("is longer than %d octets", max)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("%q contains control byte 0x%02x", v, c)
		}
	}
	return nil
}

// Empty reports whether the condition has no key and so matches
// everything.
func (c *Condition) Empty() bool {
	return c == nil || (len(c.clients) == 0 && len(c.helo) == 0 && len(c.auth) == 0 && !c.authAny &&
		c.authenticated == nil && c.tls == nil && c.sender.empty() && c.recipient.empty() &&
		len(c.header) == 0 && c.sizeOver == 0)
}

// Match reports whether the transaction (and, at RCPT, the recipient being
// checked) satisfies every key of the condition. Data that does not exist
// yet — no sender before MAIL, no header before the end of the header —
// never matches, so a condition evaluated too early is false, not true.
func (c *Condition) Match(tx *opes.Transaction, rcpt *opes.Recipient) bool {
	if c == nil {
		return true
	}
	if tx == nil {
		return c.Empty()
	}
	conn := tx.Conn
	if conn == nil {
		conn = &opes.Connection{}
	}
	if len(c.clients) > 0 && !c.matchClient(conn.Addr) {
		return false
	}
	if len(c.helo) > 0 && !anyRegex(c.helo, conn.Helo) {
		return false
	}
	if (len(c.auth) > 0 || c.authAny) && !c.matchAuth(conn.AuthUser) {
		return false
	}
	if c.authenticated != nil && conn.Authenticated() != *c.authenticated {
		return false
	}
	if c.tls != nil && conn.TLS() != *c.tls {
		return false
	}
	if !c.sender.empty() && (tx.Sender == nil || !c.sender.match(*tx.Sender)) {
		return false
	}
	if !c.recipient.empty() && !c.matchRecipients(tx, rcpt) {
		return false
	}
	if len(c.header) > 0 && !c.matchHeader(tx.Header) {
		return false
	}
	if c.sizeOver > 0 && messageSize(tx) <= c.sizeOver {
		return false
	}
	return true
}

func (c *Condition) matchClient(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	// The MTA may report an IPv4 client on a dual-stack socket as
	// ::ffff:a.b.c.d, and a link-local client with a zone; neither should
	// escape an IPv4 or plain IPv6 entry.
	a = a.Unmap().WithZone("")
	for _, p := range c.clients {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (c *Condition) matchAuth(user string) bool {
	if user == "" {
		return false
	}
	if c.authAny {
		return true
	}
	for _, u := range c.auth {
		if strings.EqualFold(u, user) {
			return true
		}
	}
	return false
}

// matchRecipients tests the recipient at RCPT; at other stages it asks
// whether one accepted recipient satisfies every recipient key, so that
// recipient = [...] and recipient_domain = [...] describe one recipient
// rather than possibly two different ones.
func (c *Condition) matchRecipients(tx *opes.Transaction, rcpt *opes.Recipient) bool {
	if rcpt != nil {
		return c.recipient.match(rcpt.Address)
	}
	for _, r := range tx.Recipients {
		if r != nil && !r.Refused && c.recipient.match(r.Address) {
			return true
		}
	}
	return false
}

func (a *addrCond) match(addr opes.Address) bool {
	if len(a.exact) > 0 {
		ok := false
		for _, e := range a.exact {
			if strings.EqualFold(e, addr.Addr) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(a.domains) > 0 {
		dom := strings.TrimSuffix(addr.Domain(), ".")
		ok := false
		for _, d := range a.domains {
			if d.match(dom) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(a.regex) > 0 && !anyRegex(a.regex, addr.Addr) {
		return false
	}
	return true
}

func (d domainPattern) match(dom string) bool {
	if dom == "" {
		return false
	}
	if !d.sub {
		return dom == d.domain
	}
	return len(dom) > len(d.domain) && strings.HasSuffix(dom, d.domain) && dom[len(dom)-len(d.domain)-1] == '.'
}

func (c *Condition) matchHeader(hdr *opes.Header) bool {
	for _, h := range c.header {
		if h.match(hdr) {
			return true
		}
	}
	return false
}

func (h headerCond) match(hdr *opes.Header) bool {
	if hdr == nil {
		return false
	}
	for _, v := range hdr.Values(h.name) {
		if h.re == nil || h.re.MatchString(v) {
			return true
		}
	}
	return false
}

func anyRegex(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// messageSize is the body size once the body is complete. Before the end
// of the message it is at least the size the client declared with
// MAIL FROM SIZE= (RFC 1870), so a size rule can refuse at MAIL or RCPT
// instead of after the data was transferred.
func messageSize(tx *opes.Transaction) int64 {
	n := tx.Size()
	if tx.Stage() >= opes.StageEOM || tx.Sender == nil {
		return n
	}
	if v, ok := tx.Sender.Arg("SIZE"); ok {
		if d, err := strconv.ParseInt(v, 10, 64); err == nil && d > n {
			return d
		}
	}
	return n
}

// Needs reports the stages whose data the condition reads, so the MTA
// sends them even when no rule or service acts there.
func (c *Condition) Needs() opes.Needs {
	var n opes.Needs
	if c == nil {
		return n
	}
	for _, r := range c.requirements() {
		n.Stages = n.Stages.Add(r.stage)
	}
	if len(c.header) > 0 {
		n.Headers = true
	}
	if c.sizeOver > 0 {
		n.Body = true
	}
	return n
}

// EarliestStage is the first stage at which every datum the condition
// reads exists. An empty condition can be evaluated at connect.
func (c *Condition) EarliestStage() opes.Stage {
	st := opes.StageConnect
	if c == nil {
		return st
	}
	for _, r := range c.requirements() {
		st = max(st, r.stage)
	}
	return st
}

// CheckStage reports an error naming the first key whose data is not
// known yet at st, e.g. "recipient is not known before rcpt". Rule and
// service loaders use it to refuse conditions that could never match.
func (c *Condition) CheckStage(st opes.Stage) error {
	if c == nil {
		return nil
	}
	for _, r := range c.requirements() {
		if r.stage > st {
			return fmt.Errorf("%s is not known before %s", r.key, r.stage)
		}
	}
	return nil
}

type requirement struct {
	key   string
	stage opes.Stage
}

// requirements lists the keys in use with the stage their data arrives.
// The order is the order of Spec, so error messages are predictable.
func (c *Condition) requirements() []requirement {
	var out []requirement
	add := func(used bool, key string, st opes.Stage) {
		if used {
			out = append(out, requirement{key, st})
		}
	}
	add(len(c.clients) > 0, "client", opes.StageConnect)
	add(len(c.helo) > 0, "helo", opes.StageHelo)
	add(len(c.auth) > 0 || c.authAny, "auth", opes.StageMail)
	add(c.authenticated != nil, "authenticated", opes.StageMail)
	// The MTA reports TLS with the HELO macros: STARTTLS comes after
	// EHLO, and the client must send EHLO again inside the tunnel.
	add(c.tls != nil, "tls", opes.StageHelo)
	add(len(c.sender.exact) > 0, "sender", opes.StageMail)
	add(len(c.sender.domains) > 0, "sender_domain", opes.StageMail)
	add(len(c.sender.regex) > 0, "sender_regex", opes.StageMail)
	add(len(c.recipient.exact) > 0, "recipient", opes.StageRcpt)
	add(len(c.recipient.domains) > 0, "recipient_domain", opes.StageRcpt)
	add(len(c.recipient.regex) > 0, "recipient_regex", opes.StageRcpt)
	add(len(c.header) > 0, "header", opes.StageHeaders)
	add(c.sizeOver > 0, "size_over", opes.StageEOM)
	return out
}

// listEntry is one line of a lookup list file.
type listEntry struct {
	line  int
	value string
}

// Bounds of a lookup list: a typo pointing at a huge file must fail fast.
const (
	maxListBytes   = 64 << 20
	maxListEntries = 1 << 20
)

// readList reads a lookup list: one entry per line, '#' comments, blank
// lines ignored.
func readList(path string) ([]listEntry, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%q is not an absolute path", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []listEntry
	sc := bufio.NewScanner(io.LimitReader(f, maxListBytes+1))
	sc.Buffer(make([]byte, 4096), 4096)
	n, read := 0, 0
	for sc.Scan() {
		n++
		read += len(sc.Bytes()) + 1
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if len(out) == maxListEntries {
			return nil, fmt.Errorf("%s: more than %d entries", path, maxListEntries)
		}
		out = append(out, listEntry{line: n, value: line})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, n+1, err)
	}
	if read > maxListBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxListBytes)
	}
	return out, nil
}

func entryValues(es []listEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.value
	}
	return out
}

// checkListEntries compiles the list with the file's entries and, on an
// error in one of them, reports it as path:line.
func checkListEntries(key, path string, entries []listEntry, base int, list []string) error {
	var probe Spec
	switch key {
	case "client_file":
		probe.Client = list
	case "sender_file":
		probe.Sender = list
	case "sender_domain_file":
		probe.SenderDomain = list
	case "recipient_file":
		probe.Recipient = list
	case "recipient_domain_file":
		probe.RecipientDomain = list
	}
	_, err := compileLists(probe)
	var fe *opes.FieldError
	if err == nil || !errors.As(err, &fe) {
		return err
	}
	var idx int
	if _, scanErr := fmt.Sscanf(fe.Field[strings.IndexByte(fe.Field, '[')+1:], "%d]", &idx); scanErr != nil || idx <= base {
		return err // an inline value: reported under its own key
	}
	e := entries[idx-base-1]
	return &opes.FieldError{Field: key, Err: fmt.Errorf("%s:%d: %w", path, e.line, fe.Err)}
}
