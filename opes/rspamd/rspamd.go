// Package rspamd is the spam filter service backed by rspamd: at the end
// of the message it posts the message to rspamd's /checkv2 (the callout
// server of RFC 4496 §4.2), with the envelope and the client facts as
// request header fields, and turns rspamd's action and score into
// actions: X-Spam-* header fields and a Subject mark for the reader,
// quarantine, a temporary refusal, or a refusal.
//
// Options, under [service.options]:
//
//	address = "127.0.0.1:11333"    # required; normal worker: host:port, http://host:port, or a unix socket
//	timeout = "30s"                # whole exchange with rspamd
//	max_size = 20971520            # octets; larger messages are not scanned (status=skipped)
//	add_header = false             # X-Spam-* fields on every scanned message, not only on spam
//	subject_prefix = "***SPAM***"  # see below
//	greylist = true                # rspamd's "greylist" action tempfails (false: treated as no action)
//	tag_score = 0.0                # local thresholds; 0 = rspamd's action decides that level
//	quarantine_score = 0.0
//	reject_score = 0.0
//	[[service.options.recipient]]  # per-recipient thresholds, see package threshold
//	match = ["@example.net", "joe@example.org"]
//	reject_score = 10.0
//
// What rspamd's action does (before local thresholds):
//
//	reject, discard     refuse at the end of data, 554 5.7.1 with the score and the main symbols
//	                    (discard too: mail is never dropped silently)
//	quarantine          hold the message
//	soft reject         451 4.7.1, the MTA's client retries
//	greylist            451 4.7.1 when greylist = true
//	rewrite subject     tag: header fields and the Subject mark
//	add header          tag: header fields
//	no action           nothing (header fields only with add_header = true)
//
// A local threshold that is set replaces rspamd's judgement for its level
// (spamlevel.Set.Level): reject_score = 20 makes a message rspamd rejects
// at 16 a tagged one. The Subject is marked with subject_prefix on every
// tagged message when subject_prefix is configured, and otherwise only
// when rspamd says "rewrite subject" (with rspamd's default prefix,
// "***SPAM***"); rspamd's proposed subject line itself is not used, so
// the original subject, encoded words included, is kept byte for byte
// and is not marked twice.
//
// With [[service.options.recipient]] entries each recipient's class has
// its own thresholds and the levels combine as package threshold says:
// reject only when every recipient's level is reject, otherwise deliver
// (tagged) or quarantine, with the per-class levels in X-Spam-Levels.
//
// The order: reject when every recipient's level is reject (whatever
// rspamd's action); else a temporary refusal when rspamd asks for one
// (soft reject, greylist); else quarantine when every level is at least
// quarantine; else delivery, tagged or not.
//
// A failure to reach rspamd, a timeout, an HTTP status other than 200 or
// an answer that is not rspamd's JSON is an error, so the service's
// on_error policy decides, not this package.
package rspamd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/spamengine"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/spamlevel"
)

type options struct {
	spamlevel.Options
	Greylist *bool `toml:"greylist"`
}

// Defaults and bounds of the options.
const (
	DefaultTimeout       = spamlevel.DefaultTimeout
	DefaultMaxSize       = 20 << 20
	DefaultSubjectPrefix = "***SPAM***" // rspamd's own default subject is "***SPAM*** %s"
	maxMaxSize           = 50 << 20     // rspamd's default max_message: bigger is refused by rspamd
)

// Header fields the service writes.
const (
	FieldScore  = "X-Spam-Score"
	FieldStatus = "X-Spam-Status"
	FieldResult = "X-Spamd-Result" // rspamd's own name for the symbol summary
	FieldLevels = "X-Spam-Levels"  // per-recipient classes, with recipient entries only
)

type service struct {
	network, addr string // "tcp" host:port or "unix" path
	client        *http.Client
	endpoint      string
	timeout       time.Duration
	maxSize       int64
	addHeader     bool
	prefix        string // configured prefix, "" = only on "rewrite subject"
	greylist      bool
	table         *spamlevel.Table
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("rspamd: decode options: %w", err)
		}
	}
	var err error
	if o.Address, err = httpHostPort(o.Address); err != nil {
		return nil, &opes.FieldError{Field: "address", Err: err}
	}
	e, err := o.Check(spamlevel.Limits{DefaultMaxSize: DefaultMaxSize, MaxMaxSize: maxMaxSize,
		Example: `"127.0.0.1:11333" or "/run/rspamd/normal.sock"`})
	if err != nil {
		return nil, err
	}
	s := &service{network: e.Network, addr: e.Addr, timeout: e.Timeout, maxSize: e.MaxSize, addHeader: e.AddHeader,
		prefix: e.Prefix, table: e.Table, greylist: true}
	if o.Greylist != nil {
		s.greylist = *o.Greylist
	}
	s.client, s.endpoint = newClient(s.network, s.addr)
	return s, nil
}

// httpHostPort turns "http://host:port" into "host:port" (the normal
// worker speaks plain HTTP); other forms are left to
// spamlevel.ParseAddress.
func httpHostPort(a string) (string, error) {
	if !strings.Contains(a, "://") {
		return a, nil
	}
	u, err := url.Parse(strings.TrimSpace(a))
	if err != nil {
		return "", fmt.Errorf("%q: %v", a, err)
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("%q: scheme %q: the normal worker speaks plain http (use a unix socket or loopback)", a, u.Scheme)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Port() == "" {
		return "", fmt.Errorf("%q: want http://host:port and nothing else", a)
	}
	return u.Host, nil
}

// newClient makes the HTTP client of one service: its own transport (no
// proxy from the environment, which would send mail to a third party),
// dialling the configured socket whatever the URL says.
func newClient(network, addr string) (*http.Client, string) {
	var d net.Dialer
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        30 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	host := addr
	if network == "unix" {
		host = "rspamd" // any name: the dialer ignores it
	}
	c := &http.Client{
		Transport: tr,
		// rspamd never redirects; following one would send the message
		// elsewhere. The 3xx is then an unexpected status, an error.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, "http://" + host + "/checkv2"
}

func (s *service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	s, tx := t.s, t.tx
	head := opes.FormatHeader(tx.Header.Fields()) + "\r\n"
	if size := int64(len(head)) + tx.Size(); size > s.maxSize {
		return spamengine.TooLarge(), nil
	}
	res, err := s.check(ctx, head, tx)
	if err != nil {
		return opes.Verdict{}, err
	}
	return s.act(tx, res)
}

// check posts the message to /checkv2 and reads the answer.
func (s *service) check(ctx context.Context, head string, tx *opes.Transaction) (*result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	body := io.Reader(strings.NewReader(head))
	if tx.Body != nil {
		// The body is streamed from the spool: it may be on disk.
		body = io.MultiReader(body, tx.Body.Reader())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, body)
	if err != nil {
		return nil, s.wrap("build request", err)
	}
	req.ContentLength = int64(len(head)) + tx.Size()
	setEnvelope(req.Header, tx)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, s.wrap("request", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, s.wrap("answer", fmt.Errorf("HTTP status %q: %s", spamengine.Clip(resp.Status), spamengine.Clip(string(b))))
	}
	res, err := parseResult(resp.Body)
	if err != nil {
		return nil, s.wrap("read answer", err)
	}
	return res, nil
}

func (s *service) wrap(what string, err error) error {
	return spamengine.CallError("rspamd", s.addr, what, s.timeout, err)
}

// setEnvelope puts the envelope and the client facts into the request
// header fields rspamd reads. Every value comes from the wire: one that is
// not a plain token is left out rather than sent mangled (Go's client
// would refuse a CR or LF anyway).
func setEnvelope(h http.Header, tx *opes.Transaction) {
	set := func(name, v string) {
		if v = token(v); v != "" {
			h.Add(name, v)
		}
	}
	if tx.Sender != nil {
		if tx.Sender.Addr == "" {
			h.Set("From", "<>")
		} else {
			set("From", tx.Sender.Addr)
		}
	}
	for _, r := range tx.AcceptedRecipients() {
		set("Rcpt", r.Addr)
	}
	set("Queue-Id", tx.QueueID)
	if c := tx.Conn; c != nil {
		if c.Addr.IsValid() {
			h.Set("IP", c.Addr.Unmap().String())
		}
		set("Helo", c.Helo)
		// Only a verified reverse name: Postfix reports "unknown" or
		// "[IP]" otherwise, and rspamd would take either for a host name.
		if n := c.Hostname; n != "" && n != "unknown" && !strings.HasPrefix(n, "[") {
			set("Hostname", n)
		}
		if c.Authenticated() {
			set("User", c.AuthUser)
		}
		set("MTA-Name", c.MTAName)
	}
}

// token returns v if it is 1..512 octets of printable US-ASCII without
// spaces, else "".
func token(v string) string {
	if len(v) > 512 {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= 0x20 || c > 0x7e {
			return ""
		}
	}
	return v
}

// engineLevel is what rspamd's action means as a threshold level, and
// whether it asks for a temporary refusal.
func (s *service) engineLevel(action string) (lvl spamlevel.Level, tempfail bool) {
	switch action {
	case actionReject, actionDiscard:
		return spamlevel.Reject, false
	case actionQuarantine:
		return spamlevel.Quarantine, false
	case actionAddHeader, actionRewriteSubject:
		return spamlevel.Tag, false
	case actionSoftReject:
		return spamlevel.Ham, true
	case actionGreylist:
		return spamlevel.Ham, s.greylist
	}
	return spamlevel.Ham, false
}

// act turns rspamd's answer into the verdict and header changes.
func (s *service) act(tx *opes.Transaction, res *result) (opes.Verdict, error) {
	engine, tempfail := s.engineLevel(res.Action)
	d := s.table.Decide(res.Score, engine, spamengine.Recipients(tx))
	score := spamengine.FormatScore(res.Score)
	reason := fmt.Sprintf("spam score %s, rspamd action %s", score, res.Action)
	if d.Level == spamlevel.Reject {
		text := "Message refused as spam (score " + score + summary(res.Symbols) + ")"
		if res.Message != "" && engine == spamlevel.Reject {
			text = res.Message + " (score " + score + summary(res.Symbols) + ")"
		}
		return spamengine.Refuse(reason, text), nil
	}
	if tempfail {
		text := res.Message
		if text == "" {
			text = "Try again later"
		}
		return opes.Verdict{
			Kind: opes.TempFail, Action: "rejected", Reason: reason,
			Reply: opes.Reply{Code: 451, Enhanced: "4.7.1", Text: text},
		}, nil
	}
	m := spamengine.Marking{Engine: "rspamd", Owned: []string{FieldScore, FieldStatus, FieldResult, FieldLevels},
		SubjectPrefix: s.subjectPrefix(d.Level, res.Action)}
	if spam := d.Level >= spamlevel.Tag; spam || s.addHeader {
		m.Fields = append(m.Fields,
			opes.HeaderField{Name: FieldScore, Value: score},
			opes.HeaderField{Name: FieldStatus, Value: statusValue(spam, res)},
			opes.HeaderField{Name: FieldResult, Value: resultValue(spam, res)})
	}
	if s.table.PerRecipient() {
		m.Fields = append(m.Fields, opes.HeaderField{Name: FieldLevels, Value: d.HeaderValue(FieldLevels)})
	}
	return m.Apply(tx, d.Level, reason)
}

// subjectPrefix is the Subject mark for a message at level lvl, "" for
// none.
func (s *service) subjectPrefix(lvl spamlevel.Level, action string) string {
	if lvl < spamlevel.Tag {
		return ""
	}
	if s.prefix != "" {
		return s.prefix
	}
	if action == actionRewriteSubject {
		return DefaultSubjectPrefix
	}
	return ""
}

// summary is ": SYM1, SYM2, SYM3" with the three symbols that weigh most
// (not below zero: those argue for the message), for an SMTP reply.
func summary(syms []symbol) string {
	top := make([]symbol, 0, len(syms))
	for _, s := range syms {
		if s.Score >= 0 {
			top = append(top, s)
		}
	}
	sort.SliceStable(top, func(i, j int) bool { return top[i].Score > top[j].Score })
	if len(top) == 0 {
		return ""
	}
	var names []string
	n := 0
	for _, s := range top {
		if len(names) == 3 || n+len(s.Name) > 120 {
			break
		}
		names = append(names, s.Name)
		n += len(s.Name) + 2
	}
	if len(names) == 0 {
		return ""
	}
	return ": " + strings.Join(names, ", ")
}
