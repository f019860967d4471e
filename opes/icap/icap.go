// Package icap is the adapter to ICAP servers (RFC 3507) — c-icap and the
// content scanners and filters behind it — as an OPES service: at the end
// of the message it sends the whole message, header and body as RFC 5322
// text, to an ICAP service, and turns the answer into a verdict, a
// replaced body or header changes.
//
// Options, under [service.options]:
//
//	server = "icap://127.0.0.1:1344/srv_cfg_filter"  # required; or a list, tried in order
//	mode = "reqmod"          # reqmod | respmod
//	timeout = "30s"          # whole exchange, OPTIONS included
//	connect_timeout = "5s"   # the connect alone (capped by timeout)
//	preview = 4096           # at most this many octets of preview; 0: none;
//	                         # unset (default): what the server's OPTIONS asks for
//	max_size = 26214400      # octets; larger messages are not sent (status=skipped),
//	                         # and no answer body larger than this is read back
//	on_block = "reject"      # reject | quarantine
//	[service.options.envelope_headers]   # HTTP header names; "" leaves one out
//	mail_from = "X-Mail-From"
//	rcpt_to = "X-Rcpt-To"    # one field per accepted recipient
//	client_ip = "X-Client-IP"
//	helo = "X-Helo"
//
// The message on the wire. In REQMOD the message is the body of an HTTP
// request "POST /<trace-id> HTTP/1.1" whose header carries the envelope
// (X-Mail-From: <a@example.org>, X-Rcpt-To: <b@example.net>, ...,
// Content-Type: message/rfc822). In RESPMOD the same request header
// (as GET) comes first and the message is the body of an "HTTP/1.1 200 OK"
// response with Content-Type message/rfc822. The client address also goes
// into the ICAP header X-Client-IP, which c-icap's ACLs use (unless
// envelope_headers.client_ip is ""). The body is chunked and read from
// opes.Body one 64 KiB chunk at a time, so a large (spooled) message is
// never held in memory. A preview is sent when the
// server's OPTIONS answer announces one (Preview, Transfer-Complete: *
// turns it off, Transfer-Ignore: * makes the service skip every message);
// that answer is cached for its Options-TTL (at most an hour). Every
// request says "Allow: 204". Connections are kept alive and reused (at
// most 8 idle per server, each for at most 30 s); c-icap gives every open
// connection a thread of its own, so size its ThreadsPerChild with that
// in mind.
//
// The answer.
//   - 204, or a 200 whose encapsulated message is byte for byte the one
//     sent (echo services, filters that matched nothing): unchanged,
//     action=analyzed.
//   - 200 with a different message (REQMOD: a request with a body;
//     RESPMOD: a 2xx response with a body): the returned body is the whole
//     RFC 5322 message. It is parsed again; a different body replaces the
//     mail's body (bare LF line ends become CRLF), and header differences
//     are applied to the mail's header, field name by field name: a name
//     whose values are unchanged is left alone, changed values of a name
//     whose field count did not change are changed in place, fields added
//     before or after the
//     existing ones of their name are appended to the header (the existing
//     ones stay where they are), a name that disappeared is deleted, and any
//     other change of a name replaces all its fields (they then come at
//     the end of the header). Differences that only re-fold a value do not
//     count. OPES-* trace fields are never changed, whatever the server
//     returns. action=modified. The returned message is spooled while it
//     is read and compared (256 KiB in memory, then an unlinked file in
//     $TMPDIR), never held whole in memory.
//   - A block: an X-Infection-Found or X-Violations-Found ICAP header (the
//     c-icap virus_scan answer), an encapsulated HTTP response with a
//     status of 300 or more (RESPMOD), or any encapsulated HTTP response to
//     a REQMOD request (the server answered the request itself instead of
//     passing it on, which for mail means "do not deliver"), or a returned
//     message whose Content-Type is not message/rfc822 (a notice page put
//     in place of the mail). on_block says what follows: "reject" refuses
//     with 554 5.7.1 "Message refused by content filter: <reason>",
//     "quarantine" holds the message. The reason
//     is the threat named by X-Infection-Found or X-Violations-Found, else
//     c-icap's X-Response-Desc, else the HTTP status line, made printable
//     ASCII of at most 100 octets.
//   - Anything else is a failure, never "clean": an ICAP status other than
//     100, 200 and 204, an answer that does not parse, a connection refused
//     or closed, a returned message whose header does not parse or whose
//     fields are not valid, an answer body above max_size, no answer within
//     timeout (the error wraps context.DeadlineExceeded). With several
//     servers the next one is tried (one that failed is tried last for 10
//     s); when all fail the hook returns the error and the service's
//     on_error decides.
package icap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/scanheader"
	"github.com/opesmilter/opes-milter/internal/timeoutopt"
	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Server          any             `toml:"server"`
	Mode            string          `toml:"mode"`
	Timeout         string          `toml:"timeout"`
	ConnectTimeout  string          `toml:"connect_timeout"`
	Preview         *int            `toml:"preview"`
	MaxSize         int64           `toml:"max_size"`
	OnBlock         string          `toml:"on_block"`
	EnvelopeHeaders envelopeOptions `toml:"envelope_headers"`
}

type envelopeOptions struct {
	MailFrom *string `toml:"mail_from"`
	RcptTo   *string `toml:"rcpt_to"`
	ClientIP *string `toml:"client_ip"`
	Helo     *string `toml:"helo"`
}

// Defaults and bounds of the options.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultConnectTimeout = 5 * time.Second
	DefaultMaxSize        = 25 << 20
	// maxTimeout keeps a typo ("30m") from holding an SMTP client far
	// beyond the MTA's own end-of-data timeout.
	maxTimeout = 5 * time.Minute
	maxServers = 16
	maxReason  = 100
)

// Service is a configured ICAP adapter.
type Service struct {
	client   *client
	method   string // REQMOD or RESPMOD
	timeout  time.Duration
	maxSize  int64
	onBlock  opes.VerdictKind
	envelope envelopeNames
}

type envelopeNames struct {
	mailFrom, rcptTo, clientIP, helo string
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("icap: decode options: %w", err)
		}
	}
	servers, err := parseServers(o.Server)
	if err != nil {
		return nil, err
	}
	s := &Service{
		client:  &client{servers: servers, connectTimeout: DefaultConnectTimeout, previewCap: -1, now: time.Now},
		method:  "REQMOD",
		timeout: DefaultTimeout,
		maxSize: DefaultMaxSize,
		onBlock: opes.Reject,
	}
	switch strings.ToLower(strings.TrimSpace(o.Mode)) {
	case "", "reqmod":
	case "respmod":
		s.method = "RESPMOD"
	default:
		return nil, opes.FieldErrorf("mode", "unknown mode %q (want reqmod or respmod)", o.Mode)
	}
	if o.Timeout != "" {
		if s.timeout, err = timeoutopt.Parse(o.Timeout, maxTimeout); err != nil {
			return nil, &opes.FieldError{Field: "timeout", Err: err}
		}
	}
	if o.ConnectTimeout != "" {
		if s.client.connectTimeout, err = timeoutopt.Parse(o.ConnectTimeout, maxTimeout); err != nil {
			return nil, &opes.FieldError{Field: "connect_timeout", Err: err}
		}
	}
	if o.Preview != nil {
		if *o.Preview < 0 || *o.Preview > maxPreview {
			return nil, opes.FieldErrorf("preview", "%d is not between 0 (no preview) and %d", *o.Preview, maxPreview)
		}
		s.client.previewCap = *o.Preview
	}
	switch {
	case o.MaxSize < 0:
		return nil, opes.FieldErrorf("max_size", "must not be negative")
	case o.MaxSize > 0:
		s.maxSize = o.MaxSize
	}
	switch strings.ToLower(strings.TrimSpace(o.OnBlock)) {
	case "", "reject":
	case "quarantine":
		s.onBlock = opes.Quarantine
	default:
		return nil, opes.FieldErrorf("on_block", "unknown value %q (want reject or quarantine)", o.OnBlock)
	}
	if s.envelope, err = parseEnvelopeNames(o.EnvelopeHeaders); err != nil {
		return nil, err
	}
	return s, nil
}

// parseServers accepts one URI or a list of them.
func parseServers(v any) ([]*server, error) {
	var raws []string
	switch x := v.(type) {
	case nil:
		return nil, opes.FieldErrorf("server", `is required: "icap://127.0.0.1:1344/service" or a list of such URIs`)
	case string:
		raws = []string{x}
	case []any:
		if len(x) == 0 {
			return nil, opes.FieldErrorf("server", "is an empty list")
		}
		if len(x) > maxServers {
			return nil, opes.FieldErrorf("server", "lists %d servers, at most %d are allowed", len(x), maxServers)
		}
		for i, e := range x {
			str, ok := e.(string)
			if !ok {
				return nil, opes.FieldErrorf(fmt.Sprintf("server[%d]", i+1), "is a %T, want a string", e)
			}
			raws = append(raws, str)
		}
	default:
		return nil, opes.FieldErrorf("server", "is a %T, want a string or a list of strings", v)
	}
	var out []*server
	for i, raw := range raws {
		s, err := parseServer(raw)
		if err != nil {
			field := "server"
			if _, list := v.([]any); list {
				field = fmt.Sprintf("server[%d]", i+1)
			}
			return nil, &opes.FieldError{Field: field, Err: err}
		}
		out = append(out, s)
	}
	return out, nil
}

// Close drops the idle connections. The service stays usable.
func (s *Service) Close() { s.client.close() }

// Needs: the whole message, at the end of data.
func (s *Service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

// Begin starts the work on one transaction.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *Service
	tx *opes.Transaction
}

// answer is what an ICAP exchange decided.
type answer struct {
	blocked bool
	reason  string
	message *opes.Body // returned message that differs from the one sent
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	s := t.s
	sent := t.tx.Header.Fields()
	head := scanheader.Format(sent)
	size := int64(len(head)) + t.tx.Size()
	if size > s.maxSize {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped",
			Reason: fmt.Sprintf("message of %d octets is larger than max_size %d", size, s.maxSize)}, nil
	}
	open := func() io.Reader {
		if t.tx.CurrentBody() == nil {
			return strings.NewReader(head)
		}
		return io.MultiReader(strings.NewReader(head), t.tx.CurrentBody().Reader())
	}
	req := s.buildRequest(t.tx, size, open)
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var ans *answer
	err := s.client.do(ctx, req, func(resp *response) error {
		if ans != nil && ans.message != nil { // an earlier server's partial answer
			_ = ans.message.Close()
		}
		var err error
		ans, err = s.interpret(resp, open)
		return err
	})
	if errors.Is(err, errSkip) {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: errSkip.Error()}, nil
	}
	if err != nil {
		if ans != nil && ans.message != nil {
			_ = ans.message.Close()
		}
		return opes.Verdict{}, err
	}
	if ans.blocked {
		reason := opes.SanitizeText(ans.reason, maxReason)
		if reason == "" {
			reason = "blocked by the ICAP service"
		}
		if s.onBlock == opes.Quarantine {
			return opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: reason}, nil
		}
		return opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: reason,
			Reply: opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Message refused by content filter: " + reason}}, nil
	}
	if ans.message == nil {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	defer ans.message.Close()
	changed, err := applyMessage(t.tx, sent, ans.message)
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("icap: apply the modified message: %w", err)
	}
	if !changed {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	return opes.Verdict{Kind: opes.Continue, Action: "modified", Reason: "modified by the ICAP service"}, nil
}

// interpret reads one ICAP answer (RFC 3507 §4.8.2, §4.9.2).
func (s *Service) interpret(resp *response, open func() io.Reader) (*answer, error) {
	switch resp.code {
	case 204:
		return &answer{}, nil
	case 200:
	default:
		return nil, fmt.Errorf("ICAP status %d %s", resp.code, clip(opes.SanitizeText(resp.reason, 80)))
	}
	if r := threatReason(resp.header); r != "" {
		return &answer{blocked: true, reason: r}, nil
	}
	switch {
	case resp.resHdr != nil:
		code, reason, err := parseStatusLine(resp.resHdr.start, "HTTP")
		if err != nil {
			return nil, fmt.Errorf("encapsulated response: %w", err)
		}
		if s.method == "REQMOD" || code >= 300 {
			return &answer{blocked: true, reason: blockReason(resp.header, code, reason)}, nil
		}
		if r := replacedBy(resp.resHdr); r != "" {
			return &answer{blocked: true, reason: r}, nil
		}
	case resp.reqHdr != nil:
		if s.method == "RESPMOD" {
			return nil, protoErrorf("RESPMOD answer carries a request, not a response")
		}
		if r := replacedBy(resp.reqHdr); r != "" {
			return &answer{blocked: true, reason: r}, nil
		}
	default:
		return nil, protoErrorf("200 answer without an encapsulated message")
	}
	if resp.body == nil {
		return nil, protoErrorf("200 answer whose encapsulated message has no body")
	}
	msg := opes.NewBody(opes.BodyOptions{})
	same, err := copyCompare(msg, resp.body, open())
	if err != nil {
		_ = msg.Close()
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("read the returned message: %w (%d)", err, s.maxSize)
		}
		return nil, fmt.Errorf("read the returned message: %w", err)
	}
	if same {
		_ = msg.Close()
		return &answer{}, nil
	}
	return &answer{message: msg}, nil
}

// threatReason names what X-Infection-Found or X-Violations-Found report.
//
//	X-Infection-Found: Type=0; Resolution=2; Threat=EICAR;
//	X-Violations-Found: 1
//		<filename>
//		<threat>
//		<id>
//		<resolution>
func threatReason(h header) string {
	if v := h.get("X-Infection-Found"); v != "" {
		for _, p := range strings.Split(v, ";") {
			k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(k, "Threat") && strings.TrimSpace(val) != "" {
				return "infection found: " + strings.TrimSpace(val)
			}
		}
		return "infection found"
	}
	if h.has("X-Violations-Found") {
		lines := strings.Split(h.get("X-Violations-Found"), "\n")
		var threats []string
		for i := 2; i < len(lines); i += 4 {
			if t := strings.TrimSpace(lines[i]); t != "" {
				threats = append(threats, t)
			}
		}
		if len(threats) == 0 {
			return "violation found"
		}
		return "violation found: " + strings.Join(threats, ", ")
	}
	return ""
}

// replacedBy names the content type of an encapsulated message that is
// not a mail any more: a filter that answers with a page of its own (an
// HTML notice with status 200) has replaced the message, which for mail
// is a block, not a new body.
func replacedBy(h *httpHead) string {
	ct := h.header.get("Content-Type")
	if ct == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt == "message/rfc822" {
		return ""
	}
	return "blocked: message replaced by " + clip(ct) + " content"
}

// blockReason explains a block answer without a threat header.
func blockReason(h header, code int, reason string) string {
	if d := strings.TrimSpace(h.get("X-Response-Desc")); d != "" {
		return "blocked: " + d
	}
	if d := strings.TrimSpace(h.get("X-Response-Info")); d != "" && !strings.EqualFold(d, "block") {
		return "blocked: " + d
	}
	return strings.TrimSpace(fmt.Sprintf("blocked: HTTP %d %s", code, reason))
}
