package ndr

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// DefaultRelayTimeout bounds the connection and every command when
// Relay.Timeout is zero. The relay is normally the local MTA, which
// answers at once; the timeout is for when it does not.
const DefaultRelayTimeout = 2 * time.Minute

// Relay submits messages over SMTP to a relay, normally the local MTA.
// The zero value is not usable: Addr is required.
type Relay struct {
	Addr     string        // host:port
	HeloName string        // EHLO name; default "localhost"
	Timeout  time.Duration // connection and per-command timeout; default DefaultRelayTimeout
	// TLS, when set, makes STARTTLS mandatory: a relay that does not offer
	// it is a (temporary) error, never a reason to send in clear text.
	TLS *tls.Config
}

// SendError is a failed submission: which step failed and why.
type SendError struct {
	Step string // "connect", "hello", "starttls", "mail", "rcpt", "data"
	Err  error
	// Permanent is set when the relay refused this message with a 5xx at
	// MAIL, RCPT or DATA, or the message cannot be sent at all; retrying
	// cannot help.
	Permanent bool
}

func (e *SendError) Error() string { return "ndr: relay " + e.Step + ": " + e.Err.Error() }
func (e *SendError) Unwrap() error { return e.Err }

// IsPermanent reports whether err means the relay will never take the
// message: a 5xx reply to MAIL, RCPT or the data, or an address no SMTP
// command can carry. Everything else — 4xx, network errors, timeouts, a
// relay that refuses us at the greeting, EHLO or STARTTLS (its
// configuration, not the message) — is temporary.
func IsPermanent(err error) bool {
	var se *SendError
	if errors.As(err, &se) {
		return se.Permanent
	}
	// Senders other than Relay may return go-smtp's error directly.
	var smtpErr *smtp.SMTPError
	if errors.As(err, &smtpErr) {
		return smtpErr.Code >= 500 && smtpErr.Code <= 599
	}
	return false
}

// Send submits data to the relay with the given envelope. An empty from
// is the null reverse-path (MAIL FROM:<>), which is what reports use; for
// it every RCPT carries NOTIFY=NEVER when the relay offers DSN (RFC 3461
// §6.1), so a report is never itself reported on. The message counts as
// delivered only once the relay answered 250 to the data; ctx cancels the
// whole exchange.
func (r *Relay) Send(ctx context.Context, from string, to []string, data []byte) error {
	if len(to) == 0 {
		return &SendError{Step: "rcpt", Err: errors.New("no recipients"), Permanent: true}
	}
	for _, a := range append([]string{from}, to...) {
		if strings.ContainsFunc(a, func(c rune) bool { return c < 0x20 || c == 0x7f || c == '<' || c == '>' }) {
			return &SendError{Step: "mail", Err: fmt.Errorf("address %q cannot be sent in SMTP", a), Permanent: true}
		}
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultRelayTimeout
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", r.Addr)
	if err != nil {
		return &SendError{Step: "connect", Err: err}
	}
	// go-smtp sets its own per-command deadlines; closing the connection
	// is the one way to make ctx interrupt a command in progress.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var c *smtp.Client
	if r.TLS != nil {
		host, _, _ := net.SplitHostPort(r.Addr)
		cfg := r.TLS
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		// go-smtp says EHLO localhost before STARTTLS; HeloName is used
		// for the EHLO after it, which is the one the MTA logs and trusts.
		if c, err = smtp.NewClientStartTLS(conn, cfg); err != nil {
			conn.Close()
			return r.fail(ctx, "starttls", err, false)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	defer c.Close()
	c.CommandTimeout = timeout
	c.SubmissionTimeout = timeout
	if r.HeloName != "" {
		if err := c.Hello(r.HeloName); err != nil {
			return r.fail(ctx, "hello", err, false)
		}
	}

	var mailOpts *smtp.MailOptions
	if !isASCII(from) || !allASCII(to) {
		mailOpts = &smtp.MailOptions{UTF8: true}
	}
	if err := c.Mail(from, mailOpts); err != nil {
		return r.fail(ctx, "mail", err, true)
	}
	var rcptOpts *smtp.RcptOptions
	if from == "" {
		rcptOpts = &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}
	}
	for _, a := range to {
		if err := c.Rcpt(a, rcptOpts); err != nil {
			return r.fail(ctx, "rcpt", err, true)
		}
	}
	w, err := c.Data()
	if err != nil {
		return r.fail(ctx, "data", err, true)
	}
	if _, err := w.Write(data); err != nil {
		return r.fail(ctx, "data", err, true)
	}
	if !bytes.HasSuffix(data, []byte("\r\n")) {
		// DotWriter ends the data with CRLF "." CRLF; a missing final CRLF
		// would glue the last line to the dot.
		if _, err := w.Write([]byte("\r\n")); err != nil {
			return r.fail(ctx, "data", err, true)
		}
	}
	if err := w.Close(); err != nil {
		return r.fail(ctx, "data", err, true)
	}
	// The relay has the message; a failing QUIT must not cause a resend.
	_ = c.Quit()
	return nil
}

// fail wraps err; a 5xx is permanent only at the steps about the message.
func (r *Relay) fail(ctx context.Context, step string, err error, messageStep bool) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		err = fmt.Errorf("%w (%w)", ctxErr, err)
	}
	var smtpErr *smtp.SMTPError
	perm := messageStep && errors.As(err, &smtpErr) && smtpErr.Code >= 500 && smtpErr.Code <= 599
	return &SendError{Step: step, Err: err, Permanent: perm}
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !isASCII(s) {
			return false
		}
	}
	return true
}
