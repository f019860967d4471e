package childmilter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/opes"
)

// closeGrace bounds ABORT and QUIT when the transaction ends: a child
// that stopped reading must not hold the SMTP session.
const closeGrace = time.Second

var analyzed = opes.Verdict{Kind: opes.Continue, Action: "analyzed"}

// txState is one child session, following one opes transaction.
type txState struct {
	s  *Service
	tx *opes.Transaction

	sess   *milter.ClientSession
	conn   *deadlineConn
	macros *txMacros

	// How far the child has been taken through the milter dialog.
	connected, helo, mail, data, header, ended bool
	sentRcpt                                   map[*opes.Recipient]bool

	err     error         // a failure: repeated by every later hook
	refusal *opes.Verdict // the child refused the transaction: repeated
	done    bool          // the child accepted: it wants nothing more
	discard bool          // the child discarded at RCPT: answered at the next stage
}

func (t *txState) Connect(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageConnect, nil)
}

func (t *txState) Helo(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageHelo, nil)
}

func (t *txState) Mail(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageMail, nil)
}

func (t *txState) Rcpt(ctx context.Context, r *opes.Recipient) (opes.Verdict, error) {
	return t.run(ctx, opes.StageRcpt, r)
}

func (t *txState) Data(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageData, nil)
}

func (t *txState) Headers(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageHeaders, nil)
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	return t.run(ctx, opes.StageEOM, nil)
}

// Close ends the child session: ABORT if the message did not reach the
// end of data, then QUIT.
func (t *txState) Close() { t.shut() }

func (t *txState) run(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	switch {
	case t.err != nil:
		return opes.Verdict{}, t.err
	case t.refusal != nil:
		return *t.refusal, nil
	case t.discard && st != opes.StageRcpt:
		return discardVerdict(), nil
	case t.done || t.discard || t.ended:
		return analyzed, nil
	}
	timeout := t.s.commandTimeout
	if st == opes.StageEOM {
		timeout = t.s.eomTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := t.advance(ctx, st, rcpt)
	if err != nil {
		t.err = fmt.Errorf("milter %s at %s: %w", t.s, st, err)
		t.shut()
		return opes.Verdict{}, t.err
	}
	if t.refusal != nil || t.done || t.discard || t.ended {
		// The child wants nothing more of this transaction.
		t.shut()
	}
	return v, nil
}

// advance takes the child from where it is to stage st, replaying what it
// has not seen, and returns its verdict for st.
func (t *txState) advance(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	if t.sess == nil {
		if err := t.open(ctx); err != nil {
			return opes.Verdict{}, err
		}
	}
	unbind := t.conn.bind(ctx)
	defer unbind()

	if !t.connected {
		host, family, port, addr := connInfo(t.tx.Conn)
		act, err := t.sess.Conn(host, family, port, addr)
		if err != nil {
			return opes.Verdict{}, classify(ctx, "connect", err)
		}
		t.connected = true
		if v, goOn := t.answer(st, "connect", act, false); !goOn {
			return v, nil
		}
	}
	if st == opes.StageConnect {
		return analyzed, nil
	}
	if !t.helo {
		act, err := t.sess.Helo(heloName(t.tx.Conn))
		if err != nil {
			return opes.Verdict{}, classify(ctx, "helo", err)
		}
		t.helo = true
		if v, goOn := t.answer(st, "helo", act, false); !goOn {
			return v, nil
		}
	}
	if st == opes.StageHelo {
		return analyzed, nil
	}
	if !t.mail {
		if t.tx.Sender == nil {
			return opes.Verdict{}, errors.New("mail: the transaction has no sender")
		}
		act, err := t.sess.Mail(t.tx.Sender.Addr, strings.Join(t.tx.Sender.Args, " "))
		if err != nil {
			return opes.Verdict{}, classify(ctx, "mail", err)
		}
		t.mail = true
		if v, goOn := t.answer(st, "mail", act, false); !goOn {
			return v, nil
		}
	}
	if st == opes.StageMail {
		return analyzed, nil
	}
	// Recipients the child has not seen (the service was enabled after
	// them, or rcpt is not among its stages) are replayed first.
	for _, r := range t.tx.Recipients {
		if r == rcpt || r.Refused || t.sentRcpt[r] {
			continue
		}
		if v, goOn, err := t.sendRcpt(ctx, st, r, false); err != nil || !goOn {
			return v, err
		}
	}
	if st == opes.StageRcpt {
		if rcpt == nil {
			return analyzed, nil
		}
		v, _, err := t.sendRcpt(ctx, st, rcpt, true)
		return v, err
	}
	if len(t.sentRcpt) == 0 {
		return opes.Verdict{}, errors.New("data: no recipient was accepted")
	}
	if !t.data {
		act, err := t.sess.DataStart()
		if err != nil {
			return opes.Verdict{}, classify(ctx, "data", err)
		}
		t.data = true
		if v, goOn := t.answer(st, "data", act, false); !goOn {
			return v, nil
		}
	}
	if st == opes.StageData {
		return analyzed, nil
	}
	if !t.header {
		if v, goOn, err := t.sendHeader(ctx, st); err != nil || !goOn {
			return v, err
		}
	}
	if st == opes.StageHeaders {
		return analyzed, nil
	}
	return t.endOfMessage(ctx)
}

// open dials the child and negotiates; the hook's context bounds both.
func (t *txState) open(ctx context.Context) error {
	d := &dialer{ctx: ctx, timeout: t.s.connectTimeout}
	client := milter.NewClient(t.s.network, t.s.address, append(t.s.clientOpts[:len(t.s.clientOpts):len(t.s.clientOpts)], milter.WithDialer(d))...)
	t.macros = &txMacros{allowed: t.s.macros, tx: t.tx}
	sess, err := client.Session(t.macros)
	if d.unbind != nil {
		d.unbind()
	}
	if err != nil {
		if d.conn != nil {
			_ = d.conn.Close()
		}
		return classify(ctx, "open session", err)
	}
	t.sess, t.conn = sess, d.conn
	return nil
}

func (t *txState) sendRcpt(ctx context.Context, st opes.Stage, r *opes.Recipient, current bool) (opes.Verdict, bool, error) {
	t.macros.rcpt = r
	act, err := t.sess.Rcpt(r.Addr, strings.Join(r.Args, " "))
	t.macros.rcpt = nil
	if err != nil {
		return opes.Verdict{}, false, classify(ctx, "rcpt", err)
	}
	t.sentRcpt[r] = true
	step := "rcpt"
	if !current {
		// A replayed recipient cannot be refused alone any more.
		step = "replayed rcpt"
	}
	v, goOn := t.answer(st, step, act, current)
	return v, goOn, nil
}

// sendHeader sends the header fields and the end of the header. At the
// end of data the processor has already put its own OPES-System field on
// top of the working header; the child gets the header as the MTA sent it
// (plus what earlier services changed), not our trace.
func (t *txState) sendHeader(ctx context.Context, st opes.Stage) (opes.Verdict, bool, error) {
	fields := t.tx.Header.Fields()
	if st == opes.StageEOM && len(fields) > 0 && isOwnSystemField(fields[0], t.tx.TraceID()) {
		fields = fields[1:]
	}
	leadSpace := t.sess.ProtocolOption(milter.OptHeaderLeadingSpace)
	for _, f := range fields {
		act, err := t.sess.HeaderField(f.Name, wireValue(f.Value, leadSpace), nil)
		if err != nil {
			return opes.Verdict{}, false, classify(ctx, "header", err)
		}
		if v, goOn := t.answer(st, "header", act, false); !goOn {
			return v, false, nil
		}
		if t.sess.Skip() {
			break
		}
	}
	act, err := t.sess.HeaderEnd()
	if err != nil {
		return opes.Verdict{}, false, classify(ctx, "end of header", err)
	}
	t.header = true
	v, goOn := t.answer(st, "end of header", act, false)
	return v, goOn, nil
}

// endOfMessage streams the body, sends the end of message and maps the
// child's decision and changes. go-milter sends the body in packets of
// the negotiated size and stops early when the child skips or refuses.
func (t *txState) endOfMessage(ctx context.Context) (opes.Verdict, error) {
	// An empty body goes as one empty line. go-milter's client refuses
	// End without a body packet before it (BodyReadFrom sends none for
	// an empty reader), and libmilter drops the connection on an empty
	// body packet (seen with OpenDKIM). For a DKIM signer or verifier an
	// empty body and a single CRLF are the same body (RFC 6376 §3.4).
	var body io.Reader = strings.NewReader("\r\n")
	if cur := t.tx.CurrentBody(); cur != nil && cur.Size() > 0 { // what will be delivered
		body = cur.Reader()
	}
	mods, act, err := t.sess.BodyReadFrom(body)
	if err != nil {
		return opes.Verdict{}, classify(ctx, "body and end of message", err)
	}
	t.ended = true
	switch act.Type {
	case milter.ActionContinue, milter.ActionAccept, milter.ActionSkip:
		return t.applyChanges(mods)
	}
	v, _ := t.answer(opes.StageEOM, "end of data", act, false)
	return v, nil
}

// answer maps one answer of the child. goOn reports whether the dialog
// continues to the next step; otherwise v is the hook's verdict.
// forRcpt marks the answer to the recipient of the current RCPT hook,
// whose refusal concerns that recipient only.
func (t *txState) answer(st opes.Stage, step string, act *milter.Action, forRcpt bool) (v opes.Verdict, goOn bool) {
	switch act.Type {
	case milter.ActionContinue, milter.ActionSkip:
		return analyzed, true
	case milter.ActionAccept:
		t.done = true
		return analyzed, false
	case milter.ActionDiscard:
		t.discard = true
		if st == opes.StageRcpt {
			// The message, not this recipient: answered at the next stage.
			return analyzed, false
		}
		return discardVerdict(), false
	}
	v = refusalVerdict(act, step)
	if !forRcpt {
		t.refusal = &v
	}
	return v, false
}

func discardVerdict() opes.Verdict {
	return opes.Verdict{Kind: opes.Discard, Action: "rejected", Reason: "discarded by the child milter"}
}

// refusalVerdict turns reject, tempfail or a reply with a code into a
// refusal carrying the child's reply.
func refusalVerdict(act *milter.Action, step string) opes.Verdict {
	v := opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "refused by the child milter at " + step}
	switch act.Type {
	case milter.ActionTempFail:
		v.Kind = opes.TempFail
	case milter.ActionRejectWithCode:
		v.Reply = parseReply(int(act.SMTPCode), act.SMTPReply)
		if v.Reply.Code < 500 {
			v.Kind = opes.TempFail
		}
	}
	return v
}

// shut ends the child session; it is safe to call more than once.
func (t *txState) shut() {
	if t.sess == nil {
		return
	}
	t.conn.setLimit(time.Now().Add(closeGrace))
	if t.err == nil && t.helo && !t.ended {
		_ = t.sess.Abort(nil)
	}
	_ = t.sess.Close()
	t.sess = nil
}

// connInfo is what SMFIC_CONNECT carries, from the connection facts.
func connInfo(c *opes.Connection) (host string, family milter.ProtoFamily, port uint16, addr string) {
	if c == nil {
		return "unknown", milter.FamilyUnknown, 0, ""
	}
	host = c.Hostname
	switch {
	case c.Addr.IsValid():
		a := c.Addr.Unmap()
		family, port, addr = milter.FamilyInet6, c.Port, a.String()
		if a.Is4() {
			family = milter.FamilyInet
		}
		if host == "" {
			host = "[" + addr + "]"
		}
	case c.Family == "unix":
		family = milter.FamilyUnix
	default:
		family = milter.FamilyUnknown
	}
	if host == "" {
		host = "unknown"
	}
	return cString(host), family, port, addr
}

// heloName is the HELO argument the child gets. go-milter's client (like
// libmilter's state machine) needs a HELO before MAIL; when the client
// sent none, the MTA's name for it stands in.
func heloName(c *opes.Connection) string {
	if c != nil && c.Helo != "" {
		return cString(c.Helo)
	}
	host, _, _, _ := connInfo(c)
	return host
}

// wireValue is a header value as an MTA passes it to a milter: LF line
// ends, and without the leading white space unless the child asked for it
// (SMFIP_HDR_LEADSPC). The working header keeps the space after the colon.
func wireValue(v string, leadSpace bool) string {
	v = cString(strings.ReplaceAll(v, "\r\n", "\n"))
	if !leadSpace {
		v = strings.TrimLeft(v, " \t")
	}
	return v
}

// cString replaces NUL, which would end a milter string early.
func cString(s string) string { return strings.ReplaceAll(s, "\x00", " ") }

func isOwnSystemField(f opes.HeaderField, traceID string) bool {
	return traceID != "" && strings.EqualFold(f.Name, opes.FieldSystem) &&
		strings.Contains(f.Value, "; id="+traceID)
}
