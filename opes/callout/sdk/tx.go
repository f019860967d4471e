package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// maxHeaderFields bounds the fields of a received HEADERS part.
const maxHeaderFields = 1000

// serverTx runs one OSMTP transaction on the callout server.
type serverTx struct {
	s   *Server
	st  *ocp.ServerTx
	g   *group
	svc Service // the group's service, or its reloaded replacement
	p   ocp.Profile
	// verdict is the last answer that was not "continue", for Metrics.
	verdict opes.VerdictKind
	ended   bool // the service answered the whole message
	m       *Message
	tx      Tx

	org, adp uint32
	amsSent  bool
	paused   bool
	queued   []*ocp.Message
}

var errInvalid = errors.New("sdk: invalid message from processor")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalid, fmt.Sprintf(format, args...))
}

func (t *serverTx) next(ctx context.Context) (*ocp.Message, error) {
	if len(t.queued) > 0 {
		m := t.queued[0]
		t.queued = t.queued[1:]
		return m, nil
	}
	return t.st.Recv(ctx)
}

func (t *serverTx) run(ctx context.Context) error {
	t.tx = t.svc.Begin(t.m)
	defer t.tx.Close()
	defer func() {
		if t.m.Body != nil {
			_ = t.m.Body.Close()
		}
	}()
	orgAMS := false
	for {
		m, err := t.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the processor ended the transaction or the connection
			}
			return err
		}
		switch m.Name {
		case ocp.MsgAMS:
			if orgAMS {
				return invalidf("second AMS")
			}
			orgAMS = true
		case ocp.MsgDUM:
			if !orgAMS {
				return invalidf("DUM before AMS")
			}
			if err := t.dum(ctx, m); err != nil {
				return err
			}
		case ocp.MsgAME:
			if !orgAMS {
				return invalidf("AME before AMS")
			}
			a, err := t.tx.End(ctx)
			if err != nil {
				return fmt.Errorf("service: %w", err)
			}
			return t.sendEnd(ctx, a)
		case ocp.MsgTE:
			return nil
		case ocp.MsgDWP:
			t.paused = true
			if err := t.st.Send(ocp.NewMessage(ocp.MsgDPM, ocp.UniAtom(t.st.Xid))); err != nil {
				return err
			}
		case ocp.MsgDWM:
			t.paused = false
		}
	}
}

func (t *serverTx) dum(ctx context.Context, m *ocp.Message) error {
	if len(m.Anon) < 2 || !m.HasPayload {
		return invalidf("DUM needs xid, offset and payload")
	}
	off, err := ocp.Uni(m.Anon[1])
	if err != nil || off != t.org {
		return invalidf("DUM offset %v, want %d (no gaps)", m.Anon[1], t.org)
	}
	size := uint32(len(m.Payload))
	t.org += size
	part, err := ocp.PartOf(m)
	if err != nil {
		return invalidf("%v", err)
	}
	if !t.p.Sends(part) {
		return invalidf("part %s was not negotiated", part)
	}
	rcpt, err := t.absorb(part, m)
	if err != nil {
		return err
	}
	if !t.p.Answers(part) {
		return nil
	}
	a, err := t.tx.Decide(ctx, part, rcpt)
	if err != nil {
		return fmt.Errorf("service at %s: %w", part, err)
	}
	return t.sendAnswer(ctx, part, off, size, a)
}

// absorb adds a part to the Message.
func (t *serverTx) absorb(part string, m *ocp.Message) (*opes.Recipient, error) {
	msg := t.m
	msg.Received = append(msg.Received, part)
	switch part {
	case ocp.PartConnect:
		c := &msg.Conn
		for _, p := range m.Named {
			a, err := ocp.AtomOf(p.Value())
			if err != nil {
				continue // unknown shapes of extension parameters are ignored
			}
			v := string(a)
			switch p.Name {
			case "Client-Address":
				if addr, err := netip.ParseAddr(v); err == nil {
					c.Addr = addr
				}
			case "Client-Port":
				if n, err := strconv.ParseUint(v, 10, 16); err == nil {
					c.Port = uint16(n)
				}
			case "Client-Family":
				c.Family = v
			case "Client-Name":
				c.Hostname = v
			case "TLS-Version":
				c.TLSVersion = v
			case "TLS-Cipher":
				c.Cipher = v
			case "TLS-Subject":
				c.CertSubject = v
			case "Auth-Type":
				c.AuthType = v
			case "Auth-User":
				c.AuthUser = v
			case "MTA-Name":
				c.MTAName = v
			case "Daemon-Name":
				c.DaemonName = v
			}
		}
	case ocp.PartHelo:
		msg.Conn.Helo = string(m.Payload)
	case ocp.PartMail:
		msg.Sender = &opes.Address{Addr: string(m.Payload), Args: esmtpArgs(m)}
	case ocp.PartRcpt:
		refused, _ := ocp.Bool(m.Param(ocp.ParamRefused))
		r := &opes.Recipient{Address: opes.Address{Addr: string(m.Payload), Args: esmtpArgs(m)}, Refused: refused}
		msg.Recipients = append(msg.Recipients, r)
		return r, nil
	case ocp.PartHeaders:
		fields, err := parseHeader(string(m.Payload))
		if err != nil {
			return nil, invalidf("HEADERS: %v", err)
		}
		msg.Header = fields
	case ocp.PartSize:
		n, err := strconv.ParseInt(string(m.Payload), 10, 64)
		if err != nil || n < 0 {
			return nil, invalidf("SIZE %q is not a size", truncate(string(m.Payload)))
		}
		msg.Size = n
	case ocp.PartBody:
		if msg.Body == nil {
			msg.Body = opes.NewBody(t.s.Body)
		}
		if msg.Body.Size()+int64(len(m.Payload)) > t.s.MaxBody {
			return nil, invalidf("body larger than %d octets", t.s.MaxBody)
		}
		if _, err := msg.Body.Write(m.Payload); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func esmtpArgs(m *ocp.Message) []string {
	l, err := ocp.ListOf(m.Param(ocp.ParamESMTP))
	if err != nil {
		return nil
	}
	var out []string
	for _, v := range l {
		if a, err := ocp.AtomOf(v); err == nil {
			out = append(out, string(a))
		}
	}
	return out
}

// parseHeader splits an RFC 5322 header block into fields; a line that
// starts with white space continues the previous field. Values keep their
// leading white space and folding, as the MTA passed them.
func parseHeader(block string) ([]opes.HeaderField, error) {
	var out []opes.HeaderField
	for {
		line, rest, ok := strings.Cut(block, "\r\n")
		if !ok {
			return nil, errors.New("header block does not end with an empty line")
		}
		block = rest
		if line == "" {
			if block != "" {
				return nil, errors.New("data after the empty line")
			}
			return out, nil
		}
		if strings.ContainsAny(line, "\r\n") {
			return nil, errors.New("bare CR or LF in the header (the processor sends CRLF line ends only)")
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(out) == 0 {
				return nil, errors.New("continuation line before the first field")
			}
			out[len(out)-1].Value += "\r\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("line %q is not a header field", truncate(line))
		}
		if len(out) >= maxHeaderFields {
			return nil, fmt.Errorf("more than %d fields", maxHeaderFields)
		}
		out = append(out, opes.HeaderField{Name: name, Value: value})
	}
}

func (t *serverTx) ensureAMS() error {
	if t.amsSent {
		return nil
	}
	t.amsSent = true
	return t.st.Send(ocp.NewMessage(ocp.MsgAMS, ocp.UniAtom(t.st.Xid)))
}

// waitUnpaused holds data back after a DPM until DWM (RFC 4037 §11.16).
func (t *serverTx) waitUnpaused(ctx context.Context) error {
	for t.paused {
		m, err := t.st.Recv(ctx)
		if err != nil {
			return err
		}
		switch m.Name {
		case ocp.MsgDWM:
			t.paused = false
		case ocp.MsgTE:
			return errors.New("processor ended the transaction while paused")
		default:
			t.queued = append(t.queued, m)
		}
	}
	return nil
}

// sendAnswer answers one adaptive part: DUY when the value is unchanged
// (the processor announced it as Kept), DUM with the new value or with an
// SMTP-Error and an empty payload otherwise.
func (t *serverTx) sendAnswer(ctx context.Context, part string, off, size uint32, a Answer) error {
	if err := t.ensureAMS(); err != nil {
		return err
	}
	if err := t.waitUnpaused(ctx); err != nil {
		return err
	}
	if a.Verdict.Kind != opes.Continue {
		t.verdict = a.Verdict.Kind
	}
	d := decisionOf(a.Verdict)
	xid := ocp.UniAtom(t.st.Xid)
	rewrite := a.Value != nil && (part == ocp.PartMail || part == ocp.PartRcpt)
	var m *ocp.Message
	if rewrite || d.SMTPError != "" {
		payload := []byte{}
		if rewrite && d.SMTPError == "" {
			payload = []byte(*a.Value)
		}
		m = ocp.NewMessage(ocp.MsgDUM, xid, ocp.UniAtom(t.adp)).WithPayload(payload)
		t.adp += uint32(len(payload))
	} else {
		m = ocp.NewMessage(ocp.MsgDUY, xid, ocp.UniAtom(off), ocp.UniAtom(size))
		t.adp += size
	}
	m.Named = append([]ocp.Param{{Name: ocp.ParamAMPart, Values: []ocp.Value{ocp.Atom(part)}}}, m.Named...)
	return t.st.Send(d.AddTo(m))
}

// sendEnd sends the adapted values, the replacement body and the final
// decision on AME.
func (t *serverTx) sendEnd(ctx context.Context, a Answer) error {
	t.verdict = a.Verdict.Kind
	t.ended = true
	if err := t.ensureAMS(); err != nil {
		return err
	}
	if err := t.waitUnpaused(ctx); err != nil {
		return err
	}
	xid := ocp.UniAtom(t.st.Xid)
	data := func(part string, payload []byte, params ...ocp.Param) error {
		m := ocp.NewMessage(ocp.MsgDUM, xid, ocp.UniAtom(t.adp)).With(ocp.ParamAMPart, ocp.Atom(part)).WithPayload(payload)
		m.Named = append(m.Named, params...)
		t.adp += uint32(len(payload))
		return t.st.Send(m)
	}
	op := func(v string) ocp.Param { return ocp.Param{Name: ocp.ParamRcptOp, Values: []ocp.Value{ocp.Atom(v)}} }
	if a.Sender != nil {
		if err := data(ocp.PartMail, []byte(a.Sender.Addr)); err != nil {
			return err
		}
	}
	for _, r := range a.AddRcpts {
		if err := data(ocp.PartRcpt, []byte(r.Addr), op("add")); err != nil {
			return err
		}
	}
	for _, r := range a.DelRcpts {
		if err := data(ocp.PartRcpt, []byte(r), op("delete")); err != nil {
			return err
		}
	}
	if a.Body != nil {
		buf := make([]byte, 64<<10)
		sent := false
		for {
			n, err := io.ReadFull(a.Body, buf)
			if n > 0 || (!sent && (err == io.EOF)) {
				if err := data(ocp.PartBody, buf[:n]); err != nil {
					return err
				}
				sent = true
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read replacement body: %w", err)
			}
		}
	}
	d := decisionOf(a.Verdict)
	for _, c := range a.Header {
		switch c.Kind {
		case opes.InsertField:
			// Insertions at the top come bottom first (each goes above the
			// one before); Prepend-Header lists them top first.
			d.PrependHeader = append([]string{c.Name + ": " + c.Value}, d.PrependHeader...)
		case opes.AppendField:
			d.AddHeader = append(d.AddHeader, c.Name+": "+c.Value)
		case opes.ChangeField:
			d.Change = append(d.Change, ocp.HeaderEdit{Name: c.Name, Index: c.Index, Value: c.Value})
		case opes.DeleteField:
			d.Delete = append(d.Delete, ocp.HeaderEdit{Name: c.Name, Index: c.Index})
		}
	}
	for _, e := range a.Trace {
		d.Via = append(d.Via, e.String())
	}
	return t.st.Send(d.AddTo(ocp.NewMessage(ocp.MsgAME, xid)))
}

// decisionOf expresses a verdict in OSMTP terms.
func decisionOf(v opes.Verdict) *ocp.Decision {
	d := &ocp.Decision{Reason: v.Reason, Action: v.Action, Status: v.Status}
	switch v.Kind {
	case opes.Reject, opes.TempFail:
		if v.Reply.Code != 0 {
			enh := v.Reply.Enhanced
			if enh == "" {
				enh = fmt.Sprintf("%d.7.1", v.Reply.Code/100)
			}
			d.SMTPError = strings.TrimSpace(fmt.Sprintf("%d %s %s", v.Reply.Code, enh, opes.SanitizeText(v.Reply.Text, 400)))
		} else {
			d.Advice = ocp.AdviceTempfail
			if v.Kind == opes.Reject {
				d.Advice = ocp.AdviceReject
			}
			// The processor supplies the codes of the stage, as it does
			// for a local service's reply without codes.
			d.ReplyText = opes.SanitizeText(v.Reply.Text, 200)
		}
	case opes.Discard:
		d.Advice = ocp.AdviceDiscard
	case opes.Quarantine:
		d.Advice = ocp.AdviceQuarantine
	case opes.Accept:
		d.Advice = ocp.AdviceAccept
	}
	return d
}
