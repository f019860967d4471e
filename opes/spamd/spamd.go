// Package spamd is the spam filter service: at the end of the message it
// hands the message to SpamAssassin's spamd (the callout server of RFC
// 4496 §4.2), speaking the SPAMC/1.5 protocol over TCP or a unix socket,
// and turns the score into actions: X-Spam-* header fields and a Subject
// prefix for the reader, quarantine, or a refusal.
//
// spamd sees the message as it will be delivered (the working header,
// including changes of services that ran before, and the body), plus two
// synthetic lines on top that exist only in the copy sent to spamd: a
// Return-Path with the envelope sender and a Received line for the hop
// from the SMTP client to this MTA (client IP, reverse name, HELO, ESMTPA
// when authenticated). The MTA adds its own Received line only after the
// milter has run, so without them SpamAssassin's network and envelope
// rules (RBL checks on the relay, SPF, HELO tests, ALL_TRUSTED) would see
// no last hop. Wire values in them are sanitised and bounded.
//
// Options, under [service.options]:
//
//	address = "127.0.0.1:783"   # required; host:port, or a unix socket ("/path" or "unix:/path")
//	timeout = "30s"             # whole exchange with spamd
//	max_size = 512000           # octets; larger messages are not scanned (like spamc's 500 KiB; status=skipped)
//	user = "spam"               # optional: spamd user whose preferences apply
//	add_header = true           # X-Spam-Score and X-Spam-Status on every scanned message
//	subject_prefix = "[SPAM]"   # on spam (spamd's own threshold); not added twice
//	tag_score = 0.0             # 0 = spamd's own threshold (required_score) decides
//	quarantine_score = 10.0     # 0 = off
//	reject_score = 15.0         # 0 = off; 554 5.7.1 at the end of data
//	[[service.options.recipient]]   # per-recipient thresholds
//	name = "strict"                 # label in X-Spam-Levels
//	match = ["@example.net", "joe@example.org"]
//	reject_score = 8.0              # a score not given is the service's
//
// At least one action must be configured. The thresholds are compared
// with the score spamd reports; reject beats quarantine beats marking
// (the Subject prefix); the tag level is spamd's own "spam" unless
// tag_score is set. With recipient entries each recipient's class has its
// own thresholds and the levels combine as package threshold
// (opes/rspamd/threshold) says, because a milter can only refuse or hold
// the message as a whole at the end of data: reject only when every
// recipient's level is reject, quarantine when every level is at least
// quarantine, otherwise deliver, marked when any level is tag or above,
// with the per-class levels in X-Spam-Levels. Per-recipient spamd users
// are out of scope.
//
// A failure to reach spamd, a timeout or a malformed answer is an error,
// so the service's on_error policy decides, not this package: mail is not
// lost because spamd is down. Spam filtering is usually declared
// bypassable = true, and then the default on_error delivers the message
// unscanned with status=failed in the trace; a service that is not
// bypassable tempfails instead.
package spamd

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/spamengine"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/spamlevel"
)

type options struct {
	spamlevel.Options
	User string `toml:"user"`
}

// Defaults and bounds of the options.
const (
	DefaultTimeout = spamlevel.DefaultTimeout
	DefaultMaxSize = 500 << 10 // spamc's default: bigger mail is rarely spam and slow to scan
	maxMaxSize     = 256 << 20 // spamc's hard limit
	maxUser        = 64
)

// Header fields the service writes.
const (
	FieldScore  = "X-Spam-Score"
	FieldStatus = "X-Spam-Status"
	FieldLevels = "X-Spam-Levels" // per-recipient classes, with recipient entries only
)

type service struct {
	network, addr string
	timeout       time.Duration
	maxSize       int64
	user          string
	addHeader     bool
	prefix        string
	table         *spamlevel.Table
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("spamd: decode options: %w", err)
		}
	}
	e, err := o.Check(spamlevel.Limits{DefaultMaxSize: DefaultMaxSize, MaxMaxSize: maxMaxSize, Example: `"127.0.0.1:783" or "/run/spamd.sock"`})
	if err != nil {
		return nil, err
	}
	s := &service{network: e.Network, addr: e.Addr, timeout: e.Timeout, maxSize: e.MaxSize, addHeader: e.AddHeader, prefix: e.Prefix, table: e.Table}
	if o.User != "" {
		if err := checkUser(o.User); err != nil {
			return nil, &opes.FieldError{Field: "user", Err: err}
		}
		s.user = o.User
	}
	if !s.addHeader && s.prefix == "" && o.QuarantineScore == 0 && o.RejectScore == 0 && !s.table.PerRecipient() {
		return nil, opes.FieldErrorf("add_header", "add_header, subject_prefix, quarantine_score, reject_score or a recipient entry is required: a spamd service without any changes nothing")
	}
	return s, nil
}

// checkUser keeps the name a single protocol token: it goes into the
// "User:" request line.
func checkUser(u string) error {
	if len(u) > maxUser {
		return fmt.Errorf("is longer than %d octets", maxUser)
	}
	for i := 0; i < len(u); i++ {
		if c := u[i]; c <= 0x20 || c > 0x7e {
			return fmt.Errorf("has byte 0x%02x at offset %d: only printable US-ASCII without spaces is allowed", c, i)
		}
	}
	return nil
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
	header := opes.FormatHeader(tx.Header.Fields())
	if size := int64(len(header)) + 2 + tx.Size(); size > s.maxSize {
		return spamengine.TooLarge(), nil
	}
	res, err := s.check(ctx, envelopeLines(tx, time.Now())+header+"\r\n", tx)
	if err != nil {
		return opes.Verdict{}, err
	}
	return s.act(tx, res)
}

// act turns spamd's answer into the verdict and header changes. The
// levels of the recipients' classes combine into one decision for the
// message (package threshold).
func (s *service) act(tx *opes.Transaction, res *result) (opes.Verdict, error) {
	engine := spamlevel.Ham
	if res.Spam {
		engine = spamlevel.Tag
	}
	d := s.table.Decide(res.Score, engine, spamengine.Recipients(tx))
	spam := d.Level >= spamlevel.Tag
	score := spamengine.FormatScore(res.Score)
	if d.Level == spamlevel.Reject {
		return spamengine.Refuse("spam score "+score, "Message refused as spam (score "+score+")"), nil
	}
	m := spamengine.Marking{Engine: "spamd", Owned: []string{FieldScore, FieldStatus, FieldLevels}}
	if s.addHeader {
		// Yes/No is our decision (spamd's unless tag_score is set), so it
		// agrees with the Subject mark.
		st := *res
		st.Spam = spam
		m.Fields = append(m.Fields, opes.HeaderField{Name: FieldScore, Value: score}, opes.HeaderField{Name: FieldStatus, Value: statusValue(&st)})
	}
	if s.table.PerRecipient() {
		m.Fields = append(m.Fields, opes.HeaderField{Name: FieldLevels, Value: d.HeaderValue(FieldLevels)})
	}
	reason := "ham score " + score
	if spam {
		m.SubjectPrefix = s.prefix
		reason = "spam score " + score
	}
	return m.Apply(tx, d.Level, reason)
}

// check sends the message to spamd and reads the answer. head is
// everything before the body: synthetic lines, header, blank line.
func (s *service) check(ctx context.Context, head string, tx *opes.Transaction) (*result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, s.network, s.addr)
	if err != nil {
		return nil, s.wrap("connect", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	// A cancelled context (the MTA went away) must end the exchange too,
	// not only the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req strings.Builder
	req.WriteString("SYMBOLS SPAMC/1.5\r\n")
	fmt.Fprintf(&req, "Content-length: %d\r\n", int64(len(head))+tx.Size())
	if s.user != "" {
		fmt.Fprintf(&req, "User: %s\r\n", s.user)
	}
	req.WriteString("\r\n")
	req.WriteString(head)
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return nil, s.wrap("send request", err)
	}
	// The body is streamed from the spool: it may be on disk.
	if cur := tx.CurrentBody(); cur != nil { // what will be delivered
		if _, err := io.Copy(conn, cur.Reader()); err != nil {
			return nil, s.wrap("send message", err)
		}
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	res, err := parseResponse(conn)
	if err != nil {
		return nil, s.wrap("read answer", err)
	}
	return res, nil
}

func (s *service) wrap(what string, err error) error {
	return spamengine.CallError("spamd", s.addr, what, s.timeout, err)
}
