package sdk

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// Host makes an opes.Service a callout service. The service runs on an
// opes.Transaction rebuilt from the parts the processor sent, with its
// hooks called in stage order exactly as the processor calls them, and
// its changes go back as OSMTP answers: the processor applies them
// through the same Transaction API, so the result is the same as running
// the service locally.
//
// It decides at the stages the service needs (connect, helo, mail, rcpt,
// headers; the end of the message always) and reads the envelope and the
// connection facts always, the header and the body only when the service
// needs them. A hook that the processor's stages did not make a decision
// point runs when the next decision point (at the latest the end of the
// message) arrives, so a refusal is never lost, only later.
func Host(svc opes.Service, body opes.BodyOptions, log *slog.Logger) Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &hosted{svc: svc, body: body, log: log}
}

type hosted struct {
	svc  opes.Service
	body opes.BodyOptions
	log  *slog.Logger
}

var hostedStageParts = []struct {
	st   opes.Stage
	part string
}{
	{opes.StageConnect, ocp.PartConnect}, {opes.StageHelo, ocp.PartHelo}, {opes.StageMail, ocp.PartMail},
	{opes.StageRcpt, ocp.PartRcpt}, {opes.StageHeaders, ocp.PartHeaders},
}

func (h *hosted) Parts() Parts {
	n := h.svc.Needs()
	p := Parts{Read: []string{ocp.PartConnect, ocp.PartHelo, ocp.PartMail, ocp.PartRcpt}}
	for _, sp := range hostedStageParts {
		if n.Stages.Has(sp.st) || (sp.st == opes.StageHeaders && n.Stages.Has(opes.StageData)) {
			p.Decide = append(p.Decide, sp.part)
		}
	}
	if n.Headers || n.Stages.Has(opes.StageHeaders) {
		p.Read = append(p.Read, ocp.PartHeaders)
	}
	if n.Body {
		p.Read = append(p.Read, ocp.PartBody)
	}
	return p
}

func (h *hosted) Begin(m *Message) Tx {
	rt := opes.NewRemoteTransaction(&m.Conn, h.body)
	return &hostedTx{h: h, m: m, rt: rt, stx: h.svc.Begin(rt.Tx)}
}

type hostedTx struct {
	h   *hosted
	m   *Message
	rt  *opes.RemoteTransaction
	stx opes.ServiceTx

	ran      opes.StageSet
	rcptsRun int
	headers  bool
	refused  bool // a hook refused: the SMTP transaction is over
}

// sync copies what arrived into the transaction.
func (t *hostedTx) sync() {
	tx := t.rt.Tx
	tx.Sender = t.m.Sender
	tx.Recipients = t.m.Recipients
	if !t.headers && t.m.Header != nil {
		t.headers = true
		for _, f := range t.m.Header {
			t.rt.ReceivedField(f.Name, f.Value)
		}
	}
	if t.m.Body != nil {
		tx.Body = t.m.Body
	}
}

func (t *hostedTx) Decide(ctx context.Context, part string, rcpt *opes.Recipient) (Answer, error) {
	var upTo opes.Stage
	for _, sp := range hostedStageParts {
		if sp.part == part {
			upTo = sp.st
		}
	}
	if part == ocp.PartRcpt && rcpt != nil && rcpt.Refused {
		return Answer{}, nil // the processor refused it already
	}
	v, err := t.runUpTo(ctx, upTo)
	return Answer{Verdict: v}, err
}

// runUpTo runs every needed hook up to and including stage last that has
// not run yet, in stage order; the first refusal ends the run.
func (t *hostedTx) runUpTo(ctx context.Context, last opes.Stage) (opes.Verdict, error) {
	t.sync()
	needs := t.h.svc.Needs().Stages
	v := opes.ContinueVerdict
	for st := opes.StageConnect; st <= last; st++ {
		if !needs.Has(st) || t.refused {
			continue
		}
		if st == opes.StageRcpt {
			for t.rcptsRun < len(t.m.Recipients) {
				r := t.m.Recipients[t.rcptsRun]
				t.rcptsRun++
				if r.Refused {
					continue
				}
				rv, err := t.call(ctx, st, r)
				if err != nil {
					return rv, err
				}
				if rv.Kind == opes.Reject || rv.Kind == opes.TempFail || rv.Kind == opes.Discard {
					r.Refused = true
					if last == opes.StageRcpt && t.rcptsRun == len(t.m.Recipients) {
						return rv, nil // the recipient being decided
					}
					// The processor accepted this RCPT already: refusing
					// the message for now is the only answer that loses
					// no mail. The processor's stages should include rcpt.
					t.h.log.Warn("sdk: recipient refused after its RCPT was answered; tempfailing the message (add \"rcpt\" to the callout's stages)")
					t.refused = true
					return opes.Verdict{Kind: opes.TempFail, Action: "rejected", Reason: "recipient refused after RCPT"}, nil
				}
				v = keep(v, rv)
			}
			continue
		}
		if t.ran.Has(st) {
			continue
		}
		t.ran = t.ran.Add(st)
		rv, err := t.call(ctx, st, nil)
		if err != nil {
			return rv, err
		}
		v = keep(v, rv)
		if v.Kind == opes.Reject || v.Kind == opes.TempFail || v.Kind == opes.Discard {
			t.refused = true
			return v, nil
		}
	}
	return v, nil
}

// keep combines verdicts of several hooks: a later non-continue verdict
// replaces an earlier one; trace actions are kept.
func keep(a, b opes.Verdict) opes.Verdict {
	if b.Kind != opes.Continue {
		return b
	}
	if b.Action != "" && b.Action != "analyzed" {
		a.Action = b.Action
	}
	if b.Status != "" {
		a.Status = b.Status
	}
	return a
}

// call runs one hook; a panic becomes an error, as in the processor.
func (t *hostedTx) call(ctx context.Context, st opes.Stage, rcpt *opes.Recipient) (v opes.Verdict, err error) {
	defer func() {
		if p := recover(); p != nil {
			t.h.log.Error("sdk: hosted service panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("service panicked: %v", p)
		}
	}()
	t.rt.SetStage(st)
	switch st {
	case opes.StageConnect:
		return t.stx.Connect(ctx)
	case opes.StageHelo:
		return t.stx.Helo(ctx)
	case opes.StageMail:
		return t.stx.Mail(ctx)
	case opes.StageRcpt:
		return t.stx.Rcpt(ctx, rcpt)
	case opes.StageData:
		return t.stx.Data(ctx)
	case opes.StageHeaders:
		return t.stx.Headers(ctx)
	case opes.StageEOM:
		return t.stx.EndOfMessage(ctx)
	}
	return opes.ContinueVerdict, nil
}

func (t *hostedTx) End(ctx context.Context) (Answer, error) {
	v, err := t.runUpTo(ctx, opes.StageEOM)
	if err != nil || t.refused {
		return Answer{Verdict: v}, err
	}
	c := t.rt.Changes()
	return Answer{Verdict: v, Header: c.Header, Body: c.Body, Sender: c.Sender, AddRcpts: c.AddRcpts, DelRcpts: c.DelRcpts}, nil
}

func (t *hostedTx) Close() {
	t.stx.Close()
	t.rt.Close()
}
