// Package clamav is the virus-scanning service of RFC 4496 §4.1: at the
// end of the message it streams the whole message — header fields and
// body as RFC 5322 text — to a clamd daemon (INSTREAM), and refuses,
// quarantines or tags the mail clamd finds a signature in. clamd decodes
// MIME itself, so attachments are scanned as files.
//
// Options, under [service.options]:
//
//	socket = "unix:/run/clamav/clamd.ctl"  # required; or "tcp:127.0.0.1:3310"
//	timeout = "30s"            # whole scan: connect, stream, verdict
//	connect_timeout = "5s"     # the connect alone (capped by timeout)
//	action = "reject"          # reject | quarantine | tag
//	max_scan_size = 26214400   # octets; clamd's StreamMaxLength (25M by default)
//	oversize = "reject"        # reject | tempfail | skip
//
// Verdicts. A virus is refused with 554 5.7.1 "Virus found: <signature>"
// (action "reject"), held with the quarantine reason "virus <signature>"
// ("quarantine"), or delivered with "X-Virus: <signature>" added ("tag").
// The signature name comes from clamd and is reduced to printable ASCII
// before it reaches a reply or a header field. A clean message continues
// with action "analyzed" and is not changed.
//
// Failures are never "clean": a clamd that cannot be reached, answers an
// error, dies mid-stream or does not answer within timeout makes the hook
// return an error, and the service's on_error policy decides (by default,
// for a service that is not bypassable, 451 4.3.0 with the trace).
//
// Oversize messages. clamd refuses a stream longer than its
// StreamMaxLength, so a message larger than max_scan_size (its size is
// known before the scan: header plus body) is not sent, and oversize says
// what happens instead: "reject" (default) refuses it with 552 5.3.4 —
// permanent, since the message will not get smaller and a tempfail would
// only bounce it days later; "tempfail" answers 452 4.3.4, for a limit
// that is about to be raised; "skip" delivers it unscanned, traced as
// status=skipped so the trace never claims a scan that did not happen.
// A clamd whose own limit is lower than max_scan_size ("INSTREAM size
// limit exceeded") gets the same treatment. Set max_scan_size to clamd's
// StreamMaxLength.
//
// The header is sent with one space after every colon: clamd (1.4) does
// not decode "Content-Type:multipart/mixed" written without it, which mail
// clients accept, so leaving the space out would hide attachments.
//
// The message is read from the spooled body (opes.Body), one 64 KiB chunk
// at a time: a large message is never held in memory.
package clamav

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/scanheader"
	"github.com/opesmilter/opes-milter/internal/timeoutopt"
	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Socket         string `toml:"socket"`
	Timeout        string `toml:"timeout"`
	ConnectTimeout string `toml:"connect_timeout"`
	Action         string `toml:"action"`
	MaxScanSize    int64  `toml:"max_scan_size"`
	Oversize       string `toml:"oversize"`
}

// Defaults for the options.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultMaxScanSize = 25 << 20 // clamd's default StreamMaxLength
	// maxTimeout keeps a typo ("30m") from holding an SMTP client far
	// beyond the MTA's own end-of-data timeout (Postfix: 10 min total).
	maxTimeout = 5 * time.Minute
	// maxSignature bounds the name in replies and header fields; real
	// signature names are well below it.
	maxSignature = 100
	// VirusField is the header field the "tag" action adds.
	VirusField = "X-Virus"
)

type action uint8

const (
	actReject action = iota
	actQuarantine
	actTag
)

type oversize uint8

const (
	overReject oversize = iota
	overTempfail
	overSkip
)

// Service is the configured virus scanner.
type Service struct {
	client   *Client
	timeout  time.Duration
	action   action
	maxSize  int64
	oversize oversize
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("clamav: decode options: %w", err)
		}
	}
	if strings.TrimSpace(o.Socket) == "" {
		return nil, opes.FieldErrorf("socket", `is required: "unix:/run/clamav/clamd.ctl" or "tcp:127.0.0.1:3310"`)
	}
	c, err := NewClient(o.Socket)
	if err != nil {
		return nil, &opes.FieldError{Field: "socket", Err: err}
	}
	s := &Service{client: c, timeout: DefaultTimeout, maxSize: DefaultMaxScanSize}
	if o.Timeout != "" {
		if s.timeout, err = timeoutopt.Parse(o.Timeout, maxTimeout); err != nil {
			return nil, &opes.FieldError{Field: "timeout", Err: err}
		}
	}
	if o.ConnectTimeout != "" {
		d, err := timeoutopt.Parse(o.ConnectTimeout, maxTimeout)
		if err != nil {
			return nil, &opes.FieldError{Field: "connect_timeout", Err: err}
		}
		c.SetConnectTimeout(d)
	}
	switch strings.ToLower(strings.TrimSpace(o.Action)) {
	case "", "reject":
		s.action = actReject
	case "quarantine":
		s.action = actQuarantine
	case "tag":
		s.action = actTag
	default:
		return nil, opes.FieldErrorf("action", "unknown action %q (want reject, quarantine or tag)", o.Action)
	}
	switch {
	case o.MaxScanSize < 0:
		return nil, opes.FieldErrorf("max_scan_size", "must not be negative")
	case o.MaxScanSize > 0:
		s.maxSize = o.MaxScanSize
	}
	switch strings.ToLower(strings.TrimSpace(o.Oversize)) {
	case "", "reject":
		s.oversize = overReject
	case "tempfail":
		s.oversize = overTempfail
	case "skip":
		s.oversize = overSkip
	default:
		return nil, opes.FieldErrorf("oversize", "unknown value %q (want reject, tempfail or skip)", o.Oversize)
	}
	return s, nil
}

// Client returns the clamd client, e.g. for a readiness check.
func (s *Service) Client() *Client { return s.client }

// Ping checks that clamd answers within the scan timeout.
func (s *Service) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.client.Ping(ctx)
}

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

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	s := t.s
	header := scanheader.Format(t.tx.Header.Fields()) // with the space clamd needs after each colon
	size := int64(len(header)) + t.tx.Size()
	if size > s.maxSize {
		return s.oversized(fmt.Sprintf("message of %d octets is larger than max_scan_size %d", size, s.maxSize))
	}
	var body io.Reader = strings.NewReader("")
	if cur := t.tx.CurrentBody(); cur != nil { // what will be delivered
		body = cur.Reader()
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res, err := s.client.Scan(ctx, io.MultiReader(strings.NewReader(header), body))
	if errors.Is(err, ErrStreamTooLarge) {
		return s.oversized("clamd refused the message as larger than its StreamMaxLength")
	}
	if err != nil {
		return opes.Verdict{}, err
	}
	if !res.Infected {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	sig := SanitizeSignature(res.Signature)
	switch s.action {
	case actQuarantine:
		return opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: "virus " + sig}, nil
	case actTag:
		if err := t.tx.Header.Add(VirusField, sig); err != nil {
			return opes.Verdict{}, fmt.Errorf("clamav: add %s: %w", VirusField, err)
		}
		return opes.Verdict{Kind: opes.Continue, Action: "header-added", Reason: "virus " + sig}, nil
	}
	return opes.Verdict{
		Kind:   opes.Reject,
		Action: "rejected",
		Reason: "virus " + sig,
		Reply:  opes.Reply{Code: 554, Enhanced: "5.7.1", Text: "Virus found: " + sig},
	}, nil
}

// oversized applies the oversize option to a message that was not scanned.
func (s *Service) oversized(why string) (opes.Verdict, error) {
	switch s.oversize {
	case overSkip:
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: why}, nil
	case overTempfail:
		return opes.Verdict{Kind: opes.TempFail, Action: "rejected", Reason: why,
			Reply: opes.Reply{Code: 452, Enhanced: "4.3.4", Text: "Message too big to scan for viruses, try again later"}}, nil
	}
	return opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: why,
		Reply: opes.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message too big to scan for viruses"}}, nil
}

// SanitizeSignature makes a clamd signature name safe for an SMTP reply
// and a header field: printable ASCII only (anything else becomes "?"),
// at most 100 octets, never empty. clamd is trusted, but its names come
// from signature databases that third parties write.
func SanitizeSignature(sig string) string {
	var b strings.Builder
	for i := 0; i < len(sig) && b.Len() < maxSignature; i++ {
		c := sig[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	if v := strings.TrimSpace(b.String()); v != "" {
		return v
	}
	return "unknown"
}
