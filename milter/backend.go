package milter

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/opes"
)

// Deadlines for the processor, inside Postfix's default milter timeouts
// (30 s for commands, 300 s for content) so that we answer, with a trace,
// before the MTA gives up on us.
const (
	commandDeadline = 25 * time.Second
	contentDeadline = 280 * time.Second
)

// backend is go-milter's per-connection handler. It translates only.
type backend struct {
	proc      *opes.Processor
	sess      *opes.Session
	log       *slog.Logger
	metrics   SessionMetrics
	leadSpace bool // SMFIP_HDR_LEADSPC negotiated: we write the space after the colon
}

// guard turns a panic anywhere below into a tempfail for this message
// instead of a dead daemon.
func (b *backend) guard(stage string, resp **gomilter.Response, err *error) {
	if p := recover(); p != nil {
		b.log.Error("milter: panic in callback", "stage", stage, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		*resp, *err = gomilter.RespTempFail, nil
	}
}

func respond(o *opes.Outcome) (*gomilter.Response, error) {
	switch o.Kind {
	case opes.Reject, opes.TempFail:
		r, err := gomilter.RejectWithCodeAndReason(uint16(o.Reply.Code), o.Reply.MilterText())
		if err != nil {
			// Cannot happen for replies the processor built; stay safe.
			return gomilter.RespTempFail, nil
		}
		return r, nil
	}
	return gomilter.RespContinue, nil
}

// deadline bounds a stage's processing inside the MTA's milter timeout.
// A policy without services waits for nothing: no timer then, which the
// trace-only path would pay for on every message.
func (b *backend) deadline(d time.Duration) (context.Context, context.CancelFunc) {
	if b.proc.Idle() {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.Background(), d)
}

func (b *backend) NewConnection(gomilter.Modifier) error {
	// SMFIC_QUIT_NC: the MTA reuses this milter connection for a new SMTP
	// connection.
	b.sess.Close()
	b.sess = b.proc.NewSession()
	return nil
}

func (b *backend) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("connect", &resp, &err)
	c := b.sess.Conn()
	c.Hostname, c.Family, c.Port = host, family, port
	if a, perr := netip.ParseAddr(addr); perr == nil {
		c.Addr = a.Unmap()
	}
	c.MTAName = m.Get(gomilter.MacroMTAFQDN)
	c.DaemonName = m.Get(gomilter.MacroDaemonName)
	ctx, cancel := b.deadline(commandDeadline)
	defer cancel()
	return respond(b.sess.Connect(ctx))
}

func (b *backend) Helo(name string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("helo", &resp, &err)
	c := b.sess.Conn()
	c.TLSVersion = m.Get(gomilter.MacroTlsVersion)
	c.Cipher = m.Get(gomilter.MacroCipher)
	c.CertSubject = m.Get(gomilter.MacroCertSubject)
	ctx, cancel := b.deadline(commandDeadline)
	defer cancel()
	return respond(b.sess.Helo(ctx, name))
}

func (b *backend) MailFrom(from, esmtpArgs string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("mail", &resp, &err)
	c := b.sess.Conn()
	c.AuthType = m.Get(gomilter.MacroAuthType)
	c.AuthUser = m.Get(gomilter.MacroAuthAuthen)
	ctx, cancel := b.deadline(commandDeadline)
	defer cancel()
	// Sendmail tells the queue id at MAIL: record it before the stage
	// runs so a MAIL refusal carries the id Sendmail logs.
	b.sess.StartTransaction()
	b.sess.SetQueueID(m.Get(gomilter.MacroQueueId))
	return respond(b.sess.Mail(ctx, opes.Address{Addr: from, Args: strings.Fields(esmtpArgs)}))
}

func (b *backend) RcptTo(rcptTo, esmtpArgs string, m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("rcpt", &resp, &err)
	b.sess.SetQueueID(m.Get(gomilter.MacroQueueId))
	ctx, cancel := b.deadline(commandDeadline)
	defer cancel()
	return respond(b.sess.Rcpt(ctx, opes.Address{Addr: rcptTo, Args: strings.Fields(esmtpArgs)}))
}

func (b *backend) Data(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("data", &resp, &err)
	b.sess.SetQueueID(m.Get(gomilter.MacroQueueId))
	ctx, cancel := b.deadline(commandDeadline)
	defer cancel()
	return respond(b.sess.Data(ctx))
}

func (b *backend) Header(name, value string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("header", &resp, &err)
	if !b.leadSpace {
		// Without HDR_LEADSPC the MTA stripped one space; keep what a
		// reader of the message sees.
		value = " " + value
	}
	b.sess.Header(name, value)
	return gomilter.RespContinue, nil
}

func (b *backend) Headers(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("eoh", &resp, &err)
	b.sess.SetQueueID(m.Get(gomilter.MacroQueueId))
	ctx, cancel := b.deadline(contentDeadline)
	defer cancel()
	return respond(b.sess.EndOfHeaders(ctx))
}

func (b *backend) BodyChunk(chunk []byte, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("body", &resp, &err)
	if o := b.sess.BodyChunk(chunk); o != nil {
		return respond(o)
	}
	return gomilter.RespContinue, nil
}

func (b *backend) EndOfMessage(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer b.guard("eom", &resp, &err)
	defer b.sess.Finish()
	ctx, cancel := b.deadline(contentDeadline)
	defer cancel()
	o := b.sess.EndOfMessage(ctx, m.Get(gomilter.MacroQueueId))
	if o.Kind == opes.Discard {
		// The processor made the message's fate durable first: a report
		// is queued for the sender, or the original is in our quarantine.
		return gomilter.RespDiscard, nil
	}
	if o.Kind != opes.Continue {
		return respond(o)
	}
	if err := b.apply(o, m); err != nil {
		// The changes could not all be sent: the message must not go out
		// without its trace. Tempfail, the MTA keeps it with the client.
		b.log.Error("milter: applying changes failed", "trace_id", o.TraceID, "err", err)
		return gomilter.RespTempFail, nil
	}
	return gomilter.RespAccept, nil
}

// apply sends the outcome's modifications. Order matters: header changes
// (the processor already ordered them safely), envelope, body, and the
// quarantine last.
func (b *backend) apply(o *opes.Outcome, m gomilter.Modifier) error {
	lead := ""
	if b.leadSpace {
		lead = " "
	}
	for _, c := range o.HeaderChanges {
		// The protocol wants LF line ends; converting here keeps go-milter
		// on its fast path (the processor's values hold no CR otherwise).
		c.Value = strings.ReplaceAll(c.Value, "\r\n", "\n")
		var err error
		switch c.Kind {
		case opes.InsertField:
			err = m.InsertHeader(c.Index, c.Name, lead+c.Value)
		case opes.AppendField:
			err = m.AddHeader(c.Name, lead+c.Value)
		case opes.ChangeField:
			err = m.ChangeHeader(c.Index, c.Name, lead+c.Value)
		case opes.DeleteField:
			err = m.ChangeHeader(c.Index, c.Name, "")
		}
		if err != nil {
			return fmt.Errorf("header %s: %w", c.Name, err)
		}
	}
	if o.Sender != nil {
		if err := m.ChangeFrom(o.Sender.Addr, strings.Join(o.Sender.Args, " ")); err != nil {
			return fmt.Errorf("change sender: %w", err)
		}
	}
	for _, r := range o.DelRcpts {
		if err := m.DeleteRecipient(r); err != nil {
			return fmt.Errorf("delete recipient: %w", err)
		}
	}
	for _, r := range o.AddRcpts {
		if err := m.AddRecipient(r.Addr, strings.Join(r.Args, " ")); err != nil {
			return fmt.Errorf("add recipient: %w", err)
		}
	}
	if o.Body != nil {
		if err := m.ReplaceBody(o.Body); err != nil {
			return fmt.Errorf("replace body: %w", err)
		}
	}
	if o.Quarantine != "" {
		if err := m.Quarantine(o.Quarantine); err != nil {
			return fmt.Errorf("quarantine: %w", err)
		}
	}
	return nil
}

func (b *backend) Abort(gomilter.Modifier) error {
	b.sess.Abort()
	return nil
}

func (b *backend) Unknown(string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func (b *backend) Cleanup(gomilter.Modifier) {
	b.sess.Close()
	b.metrics.SessionClosed()
}
