package callout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// chunk is the BODY payload size per DUM.
const chunk = 64 << 10

// txState is the callout service's state for one SMTP transaction: one
// OCP transaction, opened at the first hook that has something to send.
type txState struct {
	via []opes.TraceEntry // the callout's own trace entries, for TraceEntries
	pre *prefetched       // the answer Prefetch fetched for the next hook
	s   *Service
	tx  *opes.Transaction
	srv *server
	c   *conn
	ot  *ocp.ClientTx

	err      error // sticky: the OCP transaction failed
	finished bool  // the OCP transaction ended normally
	// replay: the transaction was restarted on another connection after
	// the first one was lost; parts of stages before replayStage (and
	// recipients before replayRcpt) were decided already.
	replayed    bool
	replayStage opes.Stage
	replayRcpt  *opes.Recipient
	org         uint32
	adp         uint32
	// Preservation (RFC 4037 §7): the processor keeps all original data
	// of the transaction (it has the whole message), announced as Kept;
	// a DPI narrows what the server may refer to with DUY.
	dpiOff, dpiEnd uint32
	stopAt         int64 // DWSR: original octets the server still needs; -1 none
	paused         bool  // DWP received and DPM sent: no data until DWM
	serverAMS      bool
	serverAME      bool
	probed         bool           // a PQ was sent for this transaction
	pending        []*ocp.Message // arrived while sending, not yet handled

	sent struct {
		connect, helo, mail, headers, eom bool
		rcpts                             int
	}
	expect []expectation

	// Changes to apply at the end of the message.
	sender  *opes.Address
	rcptOps []rcptOp
	body    *opes.Body
	final   *ocp.Decision // the server's AME decision
}

type expectation struct {
	// replayed: the part was decided on the connection that was lost;
	// the answer of the server it was replayed to is not a new decision.
	replayed bool
	part     string
	rcpt     *opes.Recipient // for RCPT
	off      uint32          // original range of the part
	size     uint32
	orig     string // MAIL/RCPT address as sent
}

type rcptOp struct {
	del string
	add *opes.Address
}

func (t *txState) Connect(ctx context.Context) (opes.Verdict, error) {
	return t.step(ctx, opes.StageConnect, nil)
}
func (t *txState) Helo(ctx context.Context) (opes.Verdict, error) {
	return t.step(ctx, opes.StageHelo, nil)
}
func (t *txState) Mail(ctx context.Context) (opes.Verdict, error) {
	return t.step(ctx, opes.StageMail, nil)
}
func (t *txState) Rcpt(ctx context.Context, r *opes.Recipient) (opes.Verdict, error) {
	return t.step(ctx, opes.StageRcpt, r)
}

// Data has no OSMTP part: nothing travels.
func (t *txState) Data(context.Context) (opes.Verdict, error) { return opes.ContinueVerdict, nil }
func (t *txState) Headers(ctx context.Context) (opes.Verdict, error) {
	return t.step(ctx, opes.StageHeaders, nil)
}
func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	return t.step(ctx, opes.StageEOM, nil)
}

// Close ends the OCP transaction if the SMTP transaction ended before
// the end of the message (RSET, refusal, QUIT: draft §3.3).
func (t *txState) Close() {
	if t.ot != nil && !t.finished && t.err == nil {
		t.ot.End(ocp.Failure("SMTP transaction ended"))
	}
	if t.body != nil {
		_ = t.body.Close()
	}
}

func (t *txState) step(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	if t.err != nil {
		return opes.Verdict{}, t.err
	}
	if t.finished {
		if st == opes.StageEOM {
			return t.applyEOM()
		}
		return opes.ContinueVerdict, nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.s.cfg.Timeout)
	defer cancel()
	v, err := t.run(ctx, st, rcpt)
	if err != nil && t.replayable(err) {
		t.s.log.Warn("callout: connection lost in a transaction; replaying it on the next connection",
			"service", t.s.cfg.Service, "server", t.srv.addr, "stage", st.String(), "err", err)
		t.ot.End(ocp.Failure("connection lost"))
		t.srv.failed(err)
		t.restart(st, rcpt)
		v, err = t.run(ctx, st, rcpt)
	}
	if err != nil {
		reason := "processing failed"
		if errors.Is(err, context.DeadlineExceeded) {
			reason = "timeout"
			err = fmt.Errorf("callout %s: no answer at %s within %s: %w", t.s.cfg.Service, st, t.s.cfg.Timeout, err)
		} else {
			err = fmt.Errorf("callout %s at %s: %w", t.s.cfg.Service, st, err)
		}
		if t.ot != nil {
			t.ot.End(ocp.Failure(reason))
		}
		if t.srv != nil {
			t.srv.failed(err)
		}
		t.err = err
		return opes.Verdict{}, err
	}
	if t.srv != nil {
		t.srv.succeeded()
	}
	return v, nil
}

// replayable reports whether the transaction can start again on another
// connection after err: once, when the connection it ran on was lost —
// not when the server answered, refused or broke the protocol, and not
// after a deadline (a second try would overrun the MTA's own timeout).
func (t *txState) replayable(err error) bool {
	if t.replayed || t.ot == nil || t.finished {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, ErrInvalidAnswer) {
		return false
	}
	var txErr *ocp.TxError
	if errors.As(err, &txErr) {
		return false // the server ended the transaction: its answer
	}
	return !t.c.c.Usable()
}

// restart forgets the lost OCP transaction. The next fetch begins a new
// one (on the first server that works) and sends every part again; the
// answers to parts decided before stage st are not decisions again.
func (t *txState) restart(st opes.Stage, rcpt *opes.Recipient) {
	if t.body != nil {
		_ = t.body.Close()
	}
	*t = txState{s: t.s, tx: t.tx, replayed: true, replayStage: st, replayRcpt: rcpt}
}

// partStage is the stage at which a part is decided: the inverse of
// stageParts; the size and the body belong to the end of the message.
func partStage(part string) opes.Stage {
	for st, p := range stageParts {
		if p == part {
			return st
		}
	}
	return opes.StageEOM
}

// prefetched is what Prefetch fetched for the hook of one stage.
type prefetched struct {
	st   opes.Stage
	rcpt *opes.Recipient
	v    opes.Verdict
	err  error
}

// Prefetch exchanges the stage's parts with the callout server ahead of
// the hook (opes.Prefetcher), so that several callouts of one stage wait
// at the same time. It changes nothing in the transaction; the hook
// applies the answer.
func (t *txState) Prefetch(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) {
	if t.err != nil || t.finished {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, t.s.cfg.Timeout)
	defer cancel()
	v, err := t.fetch(ctx, st, rcpt)
	t.pre = &prefetched{st: st, rcpt: rcpt, v: v, err: err}
}

func (t *txState) run(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	v, err := t.fetch(ctx, st, rcpt)
	if err != nil {
		return opes.Verdict{}, err
	}
	if st != opes.StageEOM {
		return v, nil
	}
	// Everything is checked and applied before the transaction ends, so
	// that an invalid answer ends it with TE 400 and changes nothing.
	ev, err := t.applyEOM()
	if err != nil {
		return opes.Verdict{}, err
	}
	t.ot.End(ocp.OK)
	t.finished = true
	return combine(v, ev), nil
}

// fetch sends the parts of stage st and collects the callout's answers,
// or returns what Prefetch already fetched for this stage.
func (t *txState) fetch(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	if p := t.pre; p != nil {
		t.pre = nil
		if p.st == st && p.rcpt == rcpt {
			return p.v, p.err
		}
	}
	if t.ot == nil {
		srv, c, ot, err := t.s.begin(ctx)
		if err != nil {
			return opes.Verdict{}, err
		}
		t.srv, t.c, t.ot = srv, c, ot
		t.dpiEnd, t.stopAt = ocp.MaxUni, -1
		if err := t.ot.Send(ocp.NewMessage(ocp.MsgAMS, ocp.UniAtom(ot.Xid)).With(ocp.ParamAllow, ocp.Allowed)); err != nil {
			return opes.Verdict{}, err
		}
	}
	if err := t.sendParts(ctx, st); err != nil {
		return opes.Verdict{}, err
	}
	return t.collect(ctx, st, rcpt)
}

// sendParts sends every negotiated part that is available at stage st
// and has not travelled yet, in SMTP order.
func (t *txState) sendParts(ctx context.Context, st opes.Stage) error {
	tx := t.tx
	if !t.sent.connect {
		t.sent.connect = true
		if err := t.send(ctx, expectation{part: ocp.PartConnect}, nil, connectParams(tx.Conn)...); err != nil {
			return err
		}
	}
	if !t.sent.helo && st >= opes.StageHelo && tx.Conn != nil && tx.Conn.Helo != "" {
		t.sent.helo = true
		if err := t.send(ctx, expectation{part: ocp.PartHelo}, []byte(tx.Conn.Helo)); err != nil {
			return err
		}
	}
	if !t.sent.mail && st >= opes.StageMail && tx.Sender != nil {
		t.sent.mail = true
		e := expectation{part: ocp.PartMail, orig: tx.Sender.Addr}
		if err := t.send(ctx, e, []byte(tx.Sender.Addr), esmtp(tx.Sender.Args)...); err != nil {
			return err
		}
	}
	for st >= opes.StageRcpt && t.sent.rcpts < len(tx.Recipients) {
		r := tx.Recipients[t.sent.rcpts]
		t.sent.rcpts++
		params := esmtp(r.Args)
		if r.Refused {
			params = append(params, ocp.Param{Name: ocp.ParamRefused, Values: []ocp.Value{ocp.Atom("true")}})
		}
		if err := t.send(ctx, expectation{part: ocp.PartRcpt, rcpt: r, orig: r.Addr}, []byte(r.Addr), params...); err != nil {
			return err
		}
	}
	if !t.sent.headers && st >= opes.StageHeaders {
		t.sent.headers = true
		block := opes.FormatHeader(tx.Header.MessageFields()) + "\r\n"
		if err := t.send(ctx, expectation{part: ocp.PartHeaders}, []byte(block)); err != nil {
			return err
		}
	}
	if st < opes.StageEOM || t.sent.eom {
		return nil
	}
	t.sent.eom = true
	if t.c.profile.Sends(ocp.PartSize) {
		size := int64(len(opes.FormatHeader(tx.Header.MessageFields()))) + 2 + tx.Size()
		if err := t.send(ctx, expectation{part: ocp.PartSize}, []byte(strconv.FormatInt(size, 10))); err != nil {
			return err
		}
	}
	result := ocp.OK
	if cur := tx.CurrentBody(); t.c.profile.Sends(ocp.PartBody) && cur != nil {
		r := cur.Reader()
		buf := make([]byte, chunk)
		for {
			if t.stopAt >= 0 && int64(t.org) >= t.stopAt {
				// DWSR: the server has what it needs (RFC 4037 §8.1).
				result = ocp.Result{Code: ocp.CodePartial, Reason: "server needs no more"}
				break
			}
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				if err := t.send(ctx, expectation{part: ocp.PartBody}, buf[:n]); err != nil {
					return err
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				return fmt.Errorf("read body: %w", err)
			}
		}
	}
	ame := ocp.NewMessage(ocp.MsgAME, ocp.UniAtom(t.ot.Xid))
	if result.Code != ocp.CodeOK {
		ame.Anon = append(ame.Anon, result.Value())
	}
	return t.ot.Send(ame)
}

// send sends one DUM of part e.part if the profile lets it travel.
func (t *txState) send(ctx context.Context, e expectation, payload []byte, params ...ocp.Param) error {
	prof := t.c.profile
	if !prof.Sends(e.part) {
		return nil
	}
	if int64(t.org)+int64(len(payload)) > ocp.MaxUni {
		return errors.New("message larger than OCP Core can carry (2 GiB)")
	}
	if err := t.poll(ctx); err != nil {
		return err
	}
	e.off, e.size = t.org, uint32(len(payload))
	m := ocp.NewMessage(ocp.MsgDUM, ocp.UniAtom(t.ot.Xid), ocp.UniAtom(t.org)).With(ocp.ParamAMPart, ocp.Atom(e.part))
	m.Named = append(m.Named, params...)
	answered := prof.Answers(e.part) && !t.serverAME
	if answered {
		m.With(ocp.ParamKept, ocp.Atom("0"), ocp.UniAtom(t.org+e.size))
	}
	m.WithPayload(payload)
	if err := t.ot.Send(m); err != nil {
		return err
	}
	t.org += e.size
	if answered {
		if t.replayed {
			ps := partStage(e.part)
			e.replayed = ps < t.replayStage || (ps == opes.StageRcpt && t.replayStage == opes.StageRcpt && e.rcpt != t.replayRcpt)
		}
		t.expect = append(t.expect, e)
	}
	return nil
}

// poll handles flow-control messages that arrived while sending: a DWP
// pauses the original flow until DWM (RFC 4037 §11.15–17).
func (t *txState) poll(ctx context.Context) error {
	for {
		m, ok := t.ot.TryRecv()
		if !ok {
			break
		}
		if err := t.control(m); err != nil {
			return err
		}
	}
	for t.paused {
		m, err := t.ot.Recv(ctx)
		if err != nil {
			return fmt.Errorf("paused by the server: %w", err)
		}
		if err := t.control(m); err != nil {
			return err
		}
	}
	return nil
}

// control handles a message that is not an answer; answers are queued.
func (t *txState) control(m *ocp.Message) error {
	xid := t.ot.Xid
	switch m.Name {
	case ocp.MsgDWP:
		if len(m.Anon) < 2 {
			return invalid("DWP without offset")
		}
		if _, err := ocp.Uni(m.Anon[1]); err != nil {
			return invalid("DWP offset: %v", err)
		}
		// Every original octet sent so far is at or past any offset the
		// server could name before it saw them: pause at once.
		t.paused = true
		return t.ot.Send(ocp.NewMessage(ocp.MsgDPM, ocp.UniAtom(xid)))
	case ocp.MsgDWM:
		t.paused = false
	case ocp.MsgDWSR:
		if len(m.Anon) < 2 {
			return invalid("DWSR without org-size")
		}
		n, err := ocp.Uni(m.Anon[1])
		if err != nil {
			return invalid("DWSR size: %v", err)
		}
		t.stopAt = int64(n)
	case ocp.MsgDWSS:
		// We keep every original octet, so the adapted message can be
		// rebuilt at once (§8.2).
		return t.ot.Send(ocp.NewMessage(ocp.MsgDSS, ocp.UniAtom(xid)))
	case ocp.MsgDPI:
		if len(m.Anon) < 3 {
			return invalid("DPI needs org-offset and org-size")
		}
		off, err1 := ocp.Uni(m.Anon[1])
		size, err2 := ocp.Uni(m.Anon[2])
		if err1 != nil || err2 != nil {
			return invalid("DPI values")
		}
		end := uint64(off) + uint64(size)
		if off < t.dpiOff || end > uint64(t.dpiEnd) {
			return invalid("DPI widens the preservation interest")
		}
		t.dpiOff, t.dpiEnd = off, uint32(min(end, ocp.MaxUni))
	case ocp.MsgPA, ocp.MsgPR:
		org, _ := ocp.Uni(m.Param("Org-Data"))
		t.s.log.Debug("callout: progress", "service", t.s.cfg.Service, "server", t.srv.addr, "xid", xid,
			"working", len(m.Anon) > 0, "org_data", org)
	case ocp.MsgDPM:
		// The server paused its own data; the deadline bounds the wait.
	default:
		t.pending = append(t.pending, m)
	}
	return nil
}

// recv waits for the server's next message. Half-way to the deadline it
// probes once with PQ (RFC 4037 §2.7: ping before terminating a
// transaction that makes no progress); the answer is logged.
func (t *txState) recv(ctx context.Context) (*ocp.Message, error) {
	if t.probed {
		return t.ot.Recv(ctx)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		return t.ot.Recv(ctx)
	}
	half, cancel := context.WithTimeout(ctx, time.Until(deadline)/2)
	m, err := t.ot.Recv(half)
	cancel()
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return m, err
	}
	t.probed = true
	if err := t.ot.Send(ocp.NewMessage(ocp.MsgPQ, ocp.UniAtom(t.ot.Xid))); err != nil {
		return nil, err
	}
	return t.ot.Recv(ctx)
}

type answer struct {
	e         expectation
	d         *ocp.Decision
	unchanged bool
	value     []byte
}

// collect reads the answers to every adaptive part sent (and, at the end
// of the message, the adapted message up to the server's AME) and returns
// the verdict for stage st.
func (t *txState) collect(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (opes.Verdict, error) {
	v := opes.ContinueVerdict
	eom := st == opes.StageEOM
	for len(t.expect) > 0 || (eom && !t.serverAME) {
		var m *ocp.Message
		if len(t.pending) > 0 {
			m, t.pending = t.pending[0], t.pending[1:]
		} else {
			var err error
			if m, err = t.recv(ctx); err != nil {
				return v, err
			}
		}
		switch m.Name {
		case ocp.MsgAMS:
			if t.serverAMS {
				return v, invalid("second AMS")
			}
			t.serverAMS = true
		case ocp.MsgDUM, ocp.MsgDUY:
			a, err := t.data(m)
			if err != nil {
				return v, err
			}
			if a == nil {
				continue // adapted data after AME: MAIL, RCPT or BODY
			}
			av, err := t.answer(a)
			if err != nil {
				return v, err
			}
			if a.e.replayed {
				if av.Kind != opes.Continue {
					t.s.log.Warn("callout: the server a transaction was replayed to decides an earlier part otherwise; the decision made stays",
						"service", t.s.cfg.Service, "server", t.srv.addr, "part", a.e.part, "verdict", av.Kind.String())
				}
				continue
			}
			if a.e.part == ocp.PartRcpt && a.e.rcpt != rcpt {
				continue // an earlier recipient's answer cannot refuse this one
			}
			v = combine(v, av)
		case ocp.MsgAME:
			if err := t.serverEnd(m); err != nil {
				return v, err
			}
			if !eom {
				// The callout finished early: its verdict is for this
				// stage, its changes for the end of the message.
				fv, err := verdictOf(t.final)
				if err != nil {
					return v, err
				}
				v = combine(v, fv)
				t.finishEarly()
				return v, nil
			}
		case ocp.MsgTE:
			r, _ := ocp.ParseResult(secondAnon(m))
			if r.Failed() {
				return v, &ocp.TxError{Xid: t.ot.Xid, Result: r}
			}
			if !t.serverAME || len(t.expect) > 0 {
				return v, invalid("transaction ended before the callout answered")
			}
		default:
			if err := t.control(m); err != nil {
				return v, err
			}
			// control queues unknown messages as pending; drop them here
			// so that they are not read again.
			if n := len(t.pending); n > 0 && t.pending[n-1] == m {
				t.pending = t.pending[:n-1]
			}
		}
	}
	return v, nil
}

func secondAnon(m *ocp.Message) ocp.Value {
	if len(m.Anon) > 1 {
		return m.Anon[1]
	}
	return nil
}

// data checks a DUM or DUY from the server. Before the server's AME and
// while answers are due it is the answer to the oldest adaptive part; at
// the end of the message it may carry changed values (nil answer).
func (t *txState) data(m *ocp.Message) (*answer, error) {
	if !t.serverAMS {
		return nil, invalid("%s before AMS", m.Name)
	}
	if t.serverAME {
		return nil, invalid("%s after AME", m.Name)
	}
	part, err := ocp.PartOf(m)
	if err != nil {
		return nil, invalid("%v", err)
	}
	d, err := ocp.ParseDecision(m)
	if err != nil {
		return nil, invalid("%v", err)
	}
	a := &answer{d: d}
	if m.Name == ocp.MsgDUY {
		if len(m.Anon) < 3 {
			return nil, invalid("DUY needs org-offset and org-size")
		}
		off, err1 := ocp.Uni(m.Anon[1])
		size, err2 := ocp.Uni(m.Anon[2])
		if err1 != nil || err2 != nil {
			return nil, invalid("DUY values")
		}
		end := uint64(off) + uint64(size)
		if end > uint64(t.org) || off < t.dpiOff || end > uint64(t.dpiEnd) {
			return nil, invalid("DUY refers to data that is not preserved")
		}
		if d.SMTPError != "" {
			return nil, invalid("SMTP-Error on DUY")
		}
		a.unchanged = true
		t.adp += size
	} else {
		if len(m.Anon) < 2 || !m.HasPayload {
			return nil, invalid("DUM needs xid, offset and payload")
		}
		off, err := ocp.Uni(m.Anon[1])
		if err != nil || off != t.adp {
			return nil, invalid("DUM offset %v, want %d (no gaps, RFC 4037 §11.9)", m.Anon[1], t.adp)
		}
		if int64(t.adp)+int64(len(m.Payload)) > ocp.MaxUni {
			return nil, invalid("adapted data beyond 2 GiB")
		}
		t.adp += uint32(len(m.Payload))
		a.value = m.Payload
	}
	if len(t.expect) > 0 {
		e := t.expect[0]
		if part != e.part {
			return nil, invalid("answer for %s while %s is due", part, e.part)
		}
		t.expect = t.expect[1:]
		a.e = e
		if d.SMTPError != "" && len(a.value) > 0 {
			return nil, invalid("SMTP-Error with a payload")
		}
		if d.SMTPError != "" {
			a.unchanged = true
		}
		return a, nil
	}
	if !t.sent.eom {
		return nil, invalid("unsolicited %s for %s", m.Name, part)
	}
	return nil, t.adapted(part, m, a)
}

// adapted records changed values the server sends after the original
// message ended.
func (t *txState) adapted(part string, m *ocp.Message, a *answer) error {
	if a.unchanged {
		return nil
	}
	switch part {
	case ocp.PartMail:
		if err := checkAddr(string(a.value)); err != nil {
			return invalid("MAIL: %v", err)
		}
		addr := opes.Address{Addr: string(a.value)}
		if t.tx.Sender != nil {
			addr.Args = t.tx.Sender.Args
		}
		t.sender = &addr
	case ocp.PartRcpt:
		if err := checkAddr(string(a.value)); err != nil || len(a.value) == 0 {
			return invalid("RCPT: %v", err)
		}
		op, _ := ocp.AtomOf(m.Param(ocp.ParamRcptOp))
		switch op {
		case "add":
			t.rcptOps = append(t.rcptOps, rcptOp{add: &opes.Address{Addr: string(a.value)}})
		case "delete":
			t.rcptOps = append(t.rcptOps, rcptOp{del: string(a.value)})
		default:
			return invalid("adapted RCPT needs Rcpt-Op add or delete")
		}
	case ocp.PartBody:
		if t.body == nil {
			t.body = opes.NewBody(opes.BodyOptions{})
		}
		if t.body.Size()+int64(len(a.value)) > t.s.cfg.MaxBody {
			return invalid("replacement body larger than max_body (%d octets)", t.s.cfg.MaxBody)
		}
		if _, err := t.body.Write(a.value); err != nil {
			return err
		}
	default:
		return invalid("part %s cannot be changed after the end of the message", part)
	}
	return nil
}

// answer turns the answer to one adaptive part into a verdict and records
// a rewritten MAIL or RCPT value.
func (t *txState) answer(a *answer) (opes.Verdict, error) {
	if len(a.d.AddHeader)+len(a.d.Change)+len(a.d.Delete) > 0 {
		return opes.Verdict{}, invalid("header changes are only allowed on AME")
	}
	v, err := verdictOf(a.d)
	if err != nil {
		return v, err
	}
	if a.unchanged {
		return v, nil
	}
	val := string(a.value)
	switch a.e.part {
	case ocp.PartMail:
		if val != a.e.orig {
			if err := checkAddr(val); err != nil {
				return v, invalid("rewritten MAIL: %v", err)
			}
			addr := opes.Address{Addr: val, Args: t.tx.Sender.Args}
			t.sender = &addr
		}
	case ocp.PartRcpt:
		if val != a.e.orig && !a.e.rcpt.Refused {
			if err := checkAddr(val); err != nil || val == "" {
				return v, invalid("rewritten RCPT %q: %v", trunc(val), err)
			}
			t.rcptOps = append(t.rcptOps, rcptOp{del: a.e.orig, add: &opes.Address{Addr: val, Args: a.e.rcpt.Args}})
		}
	default:
		if !bytesEqualOriginal(a) {
			return v, invalid("part %s cannot be changed in its answer", a.e.part)
		}
	}
	return v, nil
}

// bytesEqualOriginal accepts an echo of CONNECT, HELO or HEADERS (a DUM
// of the part's size, which the processor ignores): those parts are
// answered, not rewritten, in this profile; header changes travel on AME.
func bytesEqualOriginal(a *answer) bool { return uint32(len(a.value)) == a.e.size }

func (t *txState) serverEnd(m *ocp.Message) error {
	if !t.serverAMS {
		return invalid("AME before AMS")
	}
	if len(t.expect) > 0 && t.sent.eom {
		return invalid("AME before every part was answered")
	}
	r, err := ocp.ParseResult(secondAnon(m))
	if err != nil {
		return invalid("AME result: %v", err)
	}
	if r.Failed() {
		return &ocp.TxError{Xid: t.ot.Xid, Result: r}
	}
	d, err := ocp.ParseDecision(m)
	if err != nil {
		return invalid("%v", err)
	}
	t.serverAME, t.final, t.expect = true, d, nil
	return nil
}

// finishEarly ends the OCP transaction after the server's AME came
// before the end of the message.
func (t *txState) finishEarly() {
	if !t.sent.eom {
		t.sent.eom = true
		_ = t.ot.Send(ocp.NewMessage(ocp.MsgAME, ocp.UniAtom(t.ot.Xid), ocp.Result{Code: ocp.CodePartial, Reason: "callout finished"}.Value()))
	}
	t.ot.End(ocp.OK)
	t.finished = true
}

// applyEOM applies everything the callout changed and returns the verdict
// of its AME.
func (t *txState) applyEOM() (opes.Verdict, error) {
	tx := t.tx
	v := opes.ContinueVerdict
	if t.final != nil {
		var err error
		if v, err = verdictOf(t.final); err != nil {
			return v, err
		}
		changes, dropped, err := headerChanges(t.final)
		if err != nil {
			return v, err
		}
		if len(dropped) > 0 {
			t.s.log.Warn("callout: trace fields from the callout server ignored", "service", t.s.cfg.Service, "fields", dropped)
		}
		if err := tx.Header.ApplyChanges(changes); err != nil {
			return v, invalid("header: %v", err)
		}
		via, bad := checkTrace(t.final.Via)
		if bad > 0 {
			t.s.log.Warn("callout: malformed trace entries from the callout server dropped", "service", t.s.cfg.Service,
				"trace_id", tx.TraceID(), "invalid", bad)
		}
		t.via = append(t.via, via...) // the processor checks them again and lists them after ours
		t.final = nil
	}
	if t.sender != nil {
		if err := tx.ChangeSender(*t.sender); err != nil {
			return v, invalid("MAIL: %v", err)
		}
		t.sender = nil
	}
	for _, op := range t.rcptOps {
		if op.del != "" {
			if err := tx.DeleteRecipient(op.del); err != nil {
				return v, invalid("RCPT: %v", err)
			}
		}
		if op.add != nil {
			if err := tx.AddRecipient(*op.add); err != nil {
				return v, invalid("RCPT: %v", err)
			}
		}
	}
	t.rcptOps = nil
	if t.body != nil {
		nb := t.body
		t.body = nil
		err := tx.ReplaceBody(func(w *opes.Body) error {
			_, err := io.Copy(w, nb.Reader())
			return err
		})
		_ = nb.Close()
		if err != nil {
			return v, err
		}
	}
	return v, nil
}

// connectParams describes the SMTP client as CONNECT's named parameters.
// Values are quoted on the wire, so nothing the MTA reported can break
// the message.
func connectParams(c *opes.Connection) []ocp.Param {
	if c == nil {
		return nil
	}
	var out []ocp.Param
	add := func(name, v string) {
		if v != "" {
			out = append(out, ocp.Param{Name: name, Values: []ocp.Value{ocp.Atom(v)}})
		}
	}
	if c.Addr.IsValid() {
		add("Client-Address", c.Addr.String())
	}
	if c.Port != 0 {
		add("Client-Port", strconv.Itoa(int(c.Port)))
	}
	add("Client-Family", c.Family)
	add("Client-Name", c.Hostname)
	add("TLS-Version", c.TLSVersion)
	add("TLS-Cipher", c.Cipher)
	add("TLS-Subject", c.CertSubject)
	add("Auth-Type", c.AuthType)
	add("Auth-User", c.AuthUser)
	add("MTA-Name", c.MTAName)
	add("Daemon-Name", c.DaemonName)
	return out
}

func esmtp(args []string) []ocp.Param {
	if len(args) == 0 {
		return nil
	}
	l := ocp.List{}
	for _, a := range args {
		l = append(l, ocp.Atom(a))
	}
	return []ocp.Param{{Name: ocp.ParamESMTP, Values: []ocp.Value{l}}}
}

// TraceEntries hands the callout server's own trace entries to the
// processor (opes.Tracer), once.
func (t *txState) TraceEntries() []opes.TraceEntry {
	v := t.via
	t.via = nil
	return v
}
