package opes

import (
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes/ndr"
)

// This file handles mail that gets 250 and is then not delivered as sent
// (RFC 4902 §4, PROFILE §4): a discard verdict becomes a non-delivery
// report carrying the trace, and a quarantine verdict can keep the
// original in our own store (RFC 4902 §3.2: the non-OPES version can be
// retrieved). Both are made durable before the MTA is answered; when
// that fails the MTA is told to try again later, so no mail is lost.

// NDRSubmitter queues a report durably; Submit returns only once the
// report will survive a crash.
type NDRSubmitter interface {
	Submit(ctx context.Context, traceID string, data []byte, to string) error
}

// QuarantineStore keeps quarantined originals.
type QuarantineStore interface {
	PutQuarantine(ctx context.Context, it store.QuarantineItem, msg io.Reader) (store.QuarantineItem, error)
}

// NDRConfig is who reports are from.
type NDRConfig struct {
	Hostname string // Reporting-MTA
	From     string // header From; default MAILER-DAEMON@Hostname
}

// QuarantineConfig says how quarantined mail is kept.
type QuarantineConfig struct {
	// KeepInMTA also uses the MTA's hold queue; otherwise the MTA drops
	// its copy once ours is stored.
	KeepInMTA bool
	Expire    time.Duration
}

// WithNDR makes discard verdicts at the end of message send a report
// instead of refusing the message.
func WithNDR(sub NDRSubmitter, cfg NDRConfig) Option {
	return func(p *Processor) {
		p.ndr, p.ndrCfg = sub, cfg
		if p.ndrCfg.From == "" {
			p.ndrCfg.From = "MAILER-DAEMON@" + cfg.Hostname
		}
	}
}

// WithQuarantineStore keeps quarantined originals in q.
func WithQuarantineStore(q QuarantineStore, cfg QuarantineConfig) Option {
	return func(p *Processor) { p.quarantine, p.quarCfg = q, cfg }
}

// originalMessage is the message as the MTA sent it: the received header
// fields (not ours, not a service's) and the original body.
func (s *Session) originalMessage(received []HeaderField) io.Reader {
	var hdr strings.Builder
	for _, f := range received {
		if f.orig >= 0 {
			writeField(&hdr, f)
		}
	}
	hdr.WriteString("\r\n")
	var body io.Reader = strings.NewReader("")
	if s.tx.Body != nil {
		r := s.tx.Body.Reader()
		if _, err := r.Seek(0, io.SeekStart); err == nil {
			body = r
		}
	}
	return io.MultiReader(strings.NewReader(hdr.String()), body)
}

// writeField writes one field as it travels in a message: "Name: value"
// (the milter passes values without the space after the colon) with CRLF
// line ends.
func writeField(b *strings.Builder, f HeaderField) {
	b.WriteString(f.Name)
	b.WriteString(":")
	if !strings.HasPrefix(f.Value, " ") && !strings.HasPrefix(f.Value, "\t") {
		b.WriteString(" ")
	}
	b.WriteString(crlf(f.Value))
	b.WriteString("\r\n")
}

// crlf turns any line ending into CRLF.
func crlf(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	return strings.ReplaceAll(strings.ReplaceAll(v, "\r\n", "\n"), "\n", "\r\n")
}

// storeQuarantine keeps the original of a quarantined message. It
// returns the outcome to send instead when the store fails.
func (s *Session) storeQuarantine(ctx context.Context, received []HeaderField, o *Outcome) *Outcome {
	tx := s.tx
	it := store.QuarantineItem{
		TraceID: s.traceID(), QueueID: SanitizeText(tx.QueueID, 64),
		Reason: o.Quarantine, Service: s.run.quarantBy, Bypassable: s.run.quarantBypassable,
		Created: time.Now().UTC(),
	}
	it.Expires = it.Created.Add(s.p.quarCfg.Expire)
	if tx.Sender != nil {
		it.Sender = tx.Sender.Addr
		it.EnvID, _ = tx.Sender.Arg("ENVID") // xtext, as received
	}
	for _, r := range tx.AcceptedRecipients() {
		it.Recipients = append(it.Recipients, r.Addr)
		args := map[string]string{}
		for _, k := range []string{"ORCPT", "NOTIFY"} {
			if v, ok := r.Arg(k); ok {
				args[k] = v
			}
		}
		it.RecipientArgs = append(it.RecipientArgs, args)
	}
	put, err := s.p.quarantine.PutQuarantine(ctx, it, s.originalMessage(received))
	if err != nil {
		s.p.log.Error("opes: quarantine store failed", "trace_id", s.traceID(), "err", err)
		return s.failure(StageEOM, nil, "quarantine unavailable")
	}
	s.auditEvent("quarantine-put", it.Service, "held", o.Quarantine, map[string]string{"quarantine_id": put.ID})
	s.p.log.Info("opes: quarantined in store", "trace_id", s.traceID(), "quarantine_id", put.ID)
	if !s.p.quarCfg.KeepInMTA {
		// Ours is the copy: the MTA drops its own (accepted, not lost).
		return &Outcome{Kind: Discard, TraceID: s.traceID(), QuarantineID: put.ID}
	}
	o.QuarantineID = put.ID
	return nil
}

// discard turns a discard verdict at the end of message into a report to
// the sender (PROFILE §4). refusal is the reply the processor would have
// given; header is the processed header with our trace.
func (s *Session) discard(ctx context.Context, refusal *Outcome, decider *traceRecord, reason string) *Outcome {
	tx := s.tx
	sender := ""
	if tx.Sender != nil {
		sender = tx.Sender.Addr
	}
	var rcpts []ndr.Recipient
	for _, r := range tx.AcceptedRecipients() {
		nr := ndr.Recipient{Address: r.Addr, Status: refusal.Reply.Enhanced, Diagnostic: refusal.Reply.String()}
		nr.ORCPT, _ = r.Arg("ORCPT")
		nr.Notify, _ = r.Arg("NOTIFY")
		rcpts = append(rcpts, nr)
	}
	due := ndr.Needed(sender, rcpts)
	s.p.metrics.Outcome(StageEOM, Discard)
	s.run.outcome = &OutcomeInfo{Stage: StageEOM.String(), Verdict: Discard.String(), Code: refusal.Reply.Code}
	if len(due) == 0 {
		// A null sender or NOTIFY=NEVER: nobody to tell (RFC 3461); the
		// decision is in the log and the audit trail.
		s.p.log.Info("opes: discarded, no report due", "trace_id", s.traceID())
		s.auditEvent("ndr-skipped", decider.uri, "discarded", reason, nil)
		return &Outcome{Kind: Discard, TraceID: s.traceID()}
	}
	via := append([]TraceEntry{s.systemEntry()}, s.viaEntries(decider)...)
	viaValue := FoldTraceList(FieldVia, via)
	for i := range due {
		due[i].Via = viaValue
	}
	fields := append([]HeaderField{
		{Name: FieldSystem, Value: FoldTraceList(FieldSystem, []TraceEntry{s.systemEntry()})},
		{Name: FieldVia, Value: viaValue},
	}, ownFree(tx.Header.Fields())...)
	rep := ndr.Report{
		ReportingMTA: s.p.ndrCfg.Hostname,
		From:         s.p.ndrCfg.From,
		SystemURI:    s.p.policy.System.URI,
		PolicyURL:    s.p.policy.System.PrivacyURL,
		TraceID:      s.traceID(),
		Arrival:      s.run.start,
		ReversePath:  sender,
		Service:      decider.uri,
		Bypassable:   decider.bypassable,
		Reason:       reason,
		Recipients:   due,
		Headers:      []byte(headerText(fields)),
	}
	if tx.Sender != nil {
		rep.EnvID, _ = tx.Sender.Arg("ENVID") // xtext, as received
	}
	data, err := ndr.Build(rep)
	if err == nil {
		err = s.p.ndr.Submit(ctx, s.traceID(), data, sender)
	}
	if err != nil {
		s.p.log.Error("opes: report not queued, tempfailing", "trace_id", s.traceID(), "err", err)
		return s.failure(StageEOM, decider, "report queue unavailable")
	}
	s.auditEvent("ndr-queued", decider.uri, "discarded", reason, map[string]string{"recipients": strconv.Itoa(len(due))})
	s.p.log.Info("opes: discarded with report", "trace_id", s.traceID(), "by", decider.uri, "recipients", len(due))
	return &Outcome{Kind: Discard, TraceID: s.traceID()}
}

func headerText(fields []HeaderField) string {
	var b strings.Builder
	for _, f := range fields {
		writeField(&b, f)
	}
	return b.String()
}

// ownFree drops the trace fields the processor added to the working copy
// (they are replaced by the final ones).
func ownFree(fields []HeaderField) []HeaderField {
	out := fields[:0:0]
	for _, f := range fields {
		if f.orig != origOwn {
			out = append(out, f)
		}
	}
	return out
}
