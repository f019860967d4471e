package opes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/opesmilter/opes-milter/opes/bypass"
)

// Processor runs one policy. It is safe for concurrent use; each SMTP
// connection gets its own Session.
type Processor struct {
	policy  *Policy
	log     *slog.Logger
	newID   func() string
	metrics Metrics

	reporter    Reporter
	measureSize bool
	storeBody   bool // some service or condition reads the body

	matcher   *bypass.Matcher
	normURI   map[*ServiceSpec]string // RFC 3986-normalised service URIs, for preferences
	prefs     Preferences
	audit     Auditor
	lookupTXT LookupTXT

	ndr        NDRSubmitter
	ndrCfg     NDRConfig
	quarantine QuarantineStore
	quarCfg    QuarantineConfig
}

// Metrics receives counts and timings from the processor; the daemon
// exports them (Prometheus). Implementations must be safe for concurrent
// use and cheap: they run on the mail path.
type Metrics interface {
	// Outcome counts a decision: a refusal at its stage, or the end of a
	// delivered message (StageEOM with Accept or Quarantine).
	Outcome(st Stage, v VerdictKind)
	// ServiceCall records one service hook; status is "" when it worked,
	// else "failed" or "timeout" (the trace status).
	ServiceCall(service string, st Stage, took time.Duration, status string)
	// Bypass counts a bypass decision: "honored", or "refused" with the
	// trace reason.
	Bypass(decision, reason string)
}

type noMetrics struct{}

func (noMetrics) Outcome(Stage, VerdictKind)                       {}
func (noMetrics) ServiceCall(string, Stage, time.Duration, string) {}
func (noMetrics) Bypass(string, string)                            {}

// Option configures a Processor.
type Option func(*Processor)

// WithMetrics sends the processor's counts and timings to m.
func WithMetrics(m Metrics) Option { return func(p *Processor) { p.metrics = m } }

// NewProcessor validates the policy and returns a processor for it.
func NewProcessor(policy *Policy, log *slog.Logger, opts ...Option) (*Processor, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	// Defaults go into a copy: the caller's policy may be shared.
	cp := *policy
	p := &cp
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if p.System.PrivacyURL == "" {
		p.System.PrivacyURL = p.System.URI
	}
	if p.Limits.MaxHeaderFields <= 0 {
		p.Limits.MaxHeaderFields = 1000
	}
	if p.Limits.MaxHeaderBytes <= 0 {
		p.Limits.MaxHeaderBytes = 1 << 20
	}
	proc := &Processor{policy: p, log: log, newID: func() string { return ulid.Make().String() }, metrics: noMetrics{},
		lookupTXT: net.DefaultResolver.LookupTXT}
	for _, o := range opts {
		o(proc)
	}
	uris := make([]string, 0, len(p.Services))
	for _, s := range p.Services {
		uris = append(uris, s.URI)
	}
	proc.matcher = bypass.NewMatcher(p.System.URI, uris, p.Bypass.UnknownAsAll)
	proc.normURI = make(map[*ServiceSpec]string, len(p.Services))
	for _, s := range p.Services {
		if n, err := bypass.NormalizeURI(s.URI); err == nil {
			proc.normURI[s] = n
		} else {
			proc.normURI[s] = s.URI
		}
	}
	// The body is kept when something reads it: a service, a condition,
	// a DKIM check of OPES-Bypass, or the quarantine store.
	proc.storeBody = p.Needs().Body || (proc.quarantine != nil && (len(p.Services) > 0 || len(p.Rules) > 0))
	return proc, nil
}

// Idle reports whether the policy has no services and no rules: the
// processor only traces, and never waits for anything.
func (p *Processor) Idle() bool { return len(p.policy.Services) == 0 && len(p.policy.Rules) == 0 }

// Policy returns the policy the processor runs.
func (p *Processor) Policy() *Policy { return p.policy }

// Needs is what the MTA must send: the policy's needs, plus the envelope
// stages when transaction records are kept, and the body when they count
// message sizes.
func (p *Processor) Needs() Needs {
	n := p.policy.Needs()
	if p.prefs != nil && len(p.policy.Services) > 0 {
		// Preferences are looked up per recipient and sender.
		n.Stages |= StagesOf(StageMail, StageRcpt)
	}
	if len(p.policy.Services) > 0 || len(p.policy.Rules) > 0 {
		// The quarantine store keeps the whole original; a report
		// carries the processed header.
		if p.quarantine != nil {
			n.Headers, n.Body = true, true
		}
		if p.ndr != nil {
			n.Headers = true
		}
	}
	if p.reporter != nil {
		// A record names the client and the envelope.
		n.Stages |= StagesOf(StageConnect, StageHelo, StageMail, StageRcpt)
		n.Body = n.Body || p.measureSize
	}
	return n
}

// NewSession starts the processing of one SMTP connection.
func (p *Processor) NewSession() *Session {
	// One allocation for the session and its connection state: with one
	// milter connection per message, these are per-message costs.
	a := &struct {
		s Session
		c Connection
	}{}
	a.s = Session{p: p, conn: &a.c}
	return &a.s
}

// Outcome is what the processor answers at a stage.
type Outcome struct {
	// Kind is Continue, Reject or TempFail before the end of message; at
	// the end of message Continue means "deliver with the changes below".
	Kind  VerdictKind
	Reply *SMTPReply // for Reject and TempFail

	// End of message only.
	TraceID       string
	HeaderChanges []HeaderChange
	Body          io.Reader // replacement body, nil if unchanged
	Sender        *Address  // replacement sender
	AddRcpts      []Address
	DelRcpts      []string
	Quarantine    string // reason; empty for none
	// QuarantineID is the id of the original in our quarantine store.
	QuarantineID string
}

// continueOutcome is a fresh "no objection" answer; callers may keep it.
func continueOutcome() *Outcome { return &Outcome{Kind: Continue} }

// Session is the processor's state for one SMTP connection: connection
// facts and the current transaction.
type Session struct {
	p    *Processor
	conn *Connection
	tx   *Transaction
	run  *txRun
}

// txAlloc holds what Transaction allocates per transaction.
type txAlloc struct {
	tx     Transaction
	header Header
	body   Body
	run    txRun
}

// txRun is the per-transaction pipeline state.
type txRun struct {
	active   []*activeService
	records  []*traceRecord // invocation order
	accepted bool           // a service answered Accept: run no more services
	quarant  string
	// who quarantined, for the store and the report on expiry
	quarantBy         string
	quarantBypassable bool
	discardBy         *traceRecord
	discardReason     string
	evaluated         StageSet // stages whose rules ran for this transaction
	hdrBytes          int
	hdrOver           bool
	start             time.Time
	bodySize          int64
	bodySeen          bool
	outcome           *OutcomeInfo // how it ended, for the report
	outcomeVal        OutcomeInfo  // storage for outcome at the end of message
	bypass            bypassRun
}

type activeService struct {
	spec          *ServiceSpec
	tx            ServiceTx
	rec           *traceRecord
	honored       bool // a bypass was honoured: no more hooks run
	ranBeforeData bool // a hook ran before DATA: in-message bypass cannot apply
}

type traceRecord struct {
	uri        string
	action     string // "" for a bypassed service, which did nothing
	status     string
	bypass     string // honored, refused
	reason     string // why a bypass was refused
	skipReason string // why the service's work was skipped (status=skipped), e.g. "signed"
	bypassable bool
	took       time.Duration // all hooks of the transaction
	extra      []TraceEntry  // agents the service invoked (Verdict.Via)
}

// actionRank orders trace actions so that a service reported at several
// stages shows its most significant one.
func actionRank(a string) int {
	switch a {
	case "analyzed", "":
		return 0
	case "rejected":
		return 3
	case "quarantined":
		return 2
	}
	return 1
}

func (r *traceRecord) note(action string) {
	if actionRank(action) >= actionRank(r.action) {
		r.action = action
	}
}

// Conn gives access to the connection facts so the bridge can fill them
// (macros arrive at several stages).
func (s *Session) Conn() *Connection { return s.conn }

// Transaction returns the current transaction, starting one if needed.
func (s *Session) Transaction() *Transaction {
	if s.tx == nil {
		// One allocation for the transaction, its header, body and run
		// state (they live and die together); the per-message allocations
		// are the processor's main cost on a trace-only policy.
		a := &txAlloc{}
		a.body.init(s.p.policy.Limits.Body)
		a.tx = Transaction{Conn: s.conn, Header: &a.header, Body: &a.body}
		a.run = txRun{start: time.Now()}
		s.tx, s.run = &a.tx, &a.run
	}
	return s.tx
}

// Connect runs the connect stage.
func (s *Session) Connect(ctx context.Context) *Outcome {
	return s.stage(ctx, StageConnect, nil)
}

// Helo records the HELO/EHLO name and runs the helo stage.
func (s *Session) Helo(ctx context.Context, name string) *Outcome {
	s.conn.Helo = name
	return s.stage(ctx, StageHelo, nil)
}

// StartTransaction ends a transaction that already has a sender (the MTA
// may not send ABORT between messages) and returns the one the next MAIL
// belongs to, so the bridge can record MAIL-stage macros such as the
// queue id before the MAIL stage runs.
func (s *Session) StartTransaction() *Transaction {
	if s.tx != nil && (s.tx.Sender != nil || s.tx.stage > StageMail) {
		s.Abort()
	}
	return s.Transaction()
}

// Mail starts a new transaction with the envelope sender.
func (s *Session) Mail(ctx context.Context, from Address) *Outcome {
	tx := s.StartTransaction()
	tx.Sender = &from
	if o := s.mailBypass(from); o != nil {
		return o
	}
	return s.stage(ctx, StageMail, nil)
}

// Rcpt adds a recipient and runs the rcpt stage for it. A refusal affects
// only this recipient.
func (s *Session) Rcpt(ctx context.Context, to Address) *Outcome {
	tx := s.Transaction()
	r := &Recipient{Address: to}
	tx.Recipients = append(tx.Recipients, r)
	if o := s.classify(ctx, r); o != nil {
		r.Refused = true
		return o
	}
	o := s.stage(ctx, StageRcpt, r)
	if o.Kind != Continue {
		r.Refused = true
		s.run.bypass.pending = nil
		return o
	}
	s.acceptRecipient()
	return o
}

// Data runs the data stage.
func (s *Session) Data(ctx context.Context) *Outcome { return s.stage(ctx, StageData, nil) }

// Header records one header field as the MTA sent it. Fields beyond the
// limits are counted, not stored; the header stage then refuses.
func (s *Session) Header(name, value string) {
	tx := s.Transaction()
	run := s.run
	run.hdrBytes += len(name) + len(value) + 3
	if tx.Header.Len() >= s.p.policy.Limits.MaxHeaderFields || run.hdrBytes > s.p.policy.Limits.MaxHeaderBytes {
		run.hdrOver = true
		return
	}
	tx.Header.received(name, value)
}

// EndOfHeaders runs the header stage.
func (s *Session) EndOfHeaders(ctx context.Context) *Outcome {
	s.Transaction()
	if s.run.hdrOver {
		return s.limitOutcome(StageHeaders, "message header too large")
	}
	return s.stage(ctx, StageHeaders, nil)
}

// BodyChunk appends body data. A non-nil outcome refuses the message
// (size limit, spool failure).
func (s *Session) BodyChunk(p []byte) *Outcome {
	tx := s.Transaction()
	run := s.run
	run.bodySeen = true
	run.bodySize += int64(len(p))
	if max := s.p.policy.Limits.MaxMessageSize; max > 0 && run.bodySize > max {
		return s.limitOutcome(StageEOM, "message too big")
	}
	if !s.p.storeBody {
		return nil // counted for the report; no service reads it
	}
	if _, err := tx.Body.Write(p); err != nil {
		s.p.log.Error("spool body", "trace_id", s.traceID(), "err", err)
		return s.failure(StageEOM, nil, "body spool failed")
	}
	return nil
}

// EndOfMessage runs the end-of-data stage and returns the verdict with
// the trace fields and every change to apply. queueID is the MTA's queue
// id (macro i), empty if unknown.
func (s *Session) EndOfMessage(ctx context.Context, queueID string) *Outcome {
	tx := s.Transaction()
	if tx.QueueID == "" {
		tx.QueueID = queueID
	}
	if s.run.hdrOver {
		return s.limitOutcome(StageHeaders, "message header too large")
	}
	id := s.traceID()
	var received []HeaderField
	if s.p.quarantine != nil {
		received = tx.Header.Fields()
	}
	if len(s.run.active) > 0 {
		tx.signedContent() // judged on the header as received, before any service
	}
	// The system entry exists before the first service runs (PROFILE §2).
	sys := s.systemEntry()
	sysValue := sys.String()
	tx.Header.fields = append([]HeaderField{{Name: FieldSystem, Value: sysValue, orig: origOwn}}, tx.Header.fields...)

	o := s.stage(ctx, StageEOM, nil)
	if o.Kind == Discard {
		return s.discard(ctx, o, s.run.discardBy, s.run.discardReason)
	}
	if o.Kind != Continue {
		return o
	}
	o = &Outcome{Kind: Continue, TraceID: id, Quarantine: s.run.quarant}
	if o.Quarantine != "" && s.p.quarantine != nil {
		if alt := s.storeQuarantine(ctx, received, o); alt != nil {
			if alt.Kind == Discard {
				s.p.metrics.Outcome(StageEOM, Quarantine)
				s.run.outcome = &OutcomeInfo{Stage: StageEOM.String(), Verdict: Quarantine.String(), Quarantine: o.Quarantine}
			}
			return alt
		}
	}
	viaSys := sys
	if pol := s.p.policy; (len(pol.Services) > 0 || len(pol.Rules) > 0) && !s.consented(StageEOM) {
		// Nothing ran because no party consented: say so (PROFILE §6).
		viaSys.Params = append(viaSys.Params[:len(viaSys.Params):len(viaSys.Params)], TraceParam{Name: "consent", Value: "none"})
	}
	via := append([]TraceEntry{viaSys}, s.viaEntries(nil)...)
	if len(FieldSystem)+2+len(sysValue) > maxLine {
		sysValue = FoldTraceList(FieldSystem, []TraceEntry{sys})
	}
	first, appends := tx.Header.diff()
	o.HeaderChanges = make([]HeaderChange, 0, len(first)+2+len(appends))
	o.HeaderChanges = append(o.HeaderChanges, first...)
	o.HeaderChanges = append(o.HeaderChanges,
		HeaderChange{Kind: InsertField, Name: FieldVia, Value: FoldTraceList(FieldVia, via), Index: 0},
		HeaderChange{Kind: InsertField, Name: FieldSystem, Value: sysValue, Index: 0},
	)
	o.HeaderChanges = append(o.HeaderChanges, appends...)
	if tx.newBody != nil {
		o.Body = tx.newBody.Reader()
	}
	o.Sender = tx.envelope.sender
	o.AddRcpts = tx.envelope.added
	o.DelRcpts = tx.envelope.deleted
	if o.Quarantine != "" {
		s.p.metrics.Outcome(StageEOM, Quarantine)
		s.run.outcomeVal = OutcomeInfo{Stage: StageEOM.String(), Verdict: Quarantine.String(), Quarantine: o.Quarantine}
	} else {
		s.p.metrics.Outcome(StageEOM, Accept)
		s.run.outcomeVal = OutcomeInfo{Stage: StageEOM.String(), Verdict: Accept.String()}
	}
	s.run.outcome = &s.run.outcomeVal
	s.logDelivered(ctx, o)
	return o
}

// logServiceFailed is out of line for the same reason as logDelivered.
//
//go:noinline
func (s *Session) logServiceFailed(a *activeService, st Stage, err error) {
	s.p.log.Warn("opes: service failed", "trace_id", s.traceID(), "service", a.spec.Name, "stage", st.String(), "err", err)
}

// logDelivered logs a delivered message. A message no service touched
// gets a debug line only: the MTA logs the delivery, and a line per
// message costs measurable throughput (docs/performance.md); anything
// that acted is logged at info. Kept out of EndOfMessage so that its
// argument list does not enlarge that frame on every message (a deeper
// stack costs a stack copy per milter connection).
//
//go:noinline
func (s *Session) logDelivered(ctx context.Context, o *Outcome) {
	level := slog.LevelInfo
	if len(s.run.records) == 0 && o.Quarantine == "" {
		level = slog.LevelDebug
	}
	if s.p.log.Enabled(ctx, level) {
		s.p.log.Log(ctx, level, "opes: delivered", "trace_id", o.TraceID, "queue_id", SanitizeText(s.tx.QueueID, 64),
			"services", len(s.run.records), "quarantine", o.Quarantine != "", "header_changes", len(o.HeaderChanges))
	}
}

// Finish ends the transaction after the end of message was answered.
func (s *Session) Finish() { s.Abort() }

// Abort ends the current transaction (RSET, reject, or end of message).
func (s *Session) Abort() {
	if s.tx == nil {
		return
	}
	s.report()
	for _, a := range s.run.active {
		a.tx.Close()
	}
	s.tx.close()
	s.tx, s.run = nil, nil
}

// Close ends the session.
func (s *Session) Close() { s.Abort() }

// origOwn marks the processor's own trace field in the working header.
const origOwn = -2

// traceID returns the transaction's trace id, fixing it on first use:
// the MTA queue id when it is known and well-formed, else a ULID. Once
// fixed it never changes, so a RCPT refusal and the delivered copy of
// the same transaction carry the same id.
func (s *Session) traceID() string {
	tx := s.Transaction()
	if tx.traceID == "" {
		if isQueueID(tx.QueueID) {
			tx.traceID = tx.QueueID
		} else {
			tx.traceID = s.p.newID()
		}
	}
	return tx.traceID
}

// SetQueueID records the MTA's queue id as soon as a macro reveals it.
func (s *Session) SetQueueID(id string) {
	tx := s.Transaction()
	if tx.QueueID == "" {
		tx.QueueID = id
	}
}

func isQueueID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func (s *Session) systemEntry() TraceEntry {
	return TraceEntry{URI: s.p.policy.System.URI, Params: []TraceParam{{Name: "id", Value: s.traceID()}}}
}

// viaEntries lists the services invoked so far, filtered by the trace
// detail level; decider is always listed, with bypassable=.
func (s *Session) viaEntries(decider *traceRecord) []TraceEntry {
	var out []TraceEntry
	detail := s.p.policy.System.TraceDetail
	for _, r := range s.run.records {
		if r != decider {
			if detail == TraceMinimal || (detail == TraceActions && r.action == "analyzed" && r.status == "" && r.bypass == "") {
				continue
			}
		}
		e := TraceEntry{URI: r.uri}
		if r.action != "" {
			e.Params = append(e.Params, TraceParam{Name: "action", Value: r.action})
		}
		if r.bypass != "" {
			e.Params = append(e.Params, TraceParam{Name: "bypass", Value: r.bypass})
			if r.reason != "" {
				e.Params = append(e.Params, TraceParam{Name: "reason", Value: r.reason})
			}
		}
		if r.status != "" {
			e.Params = append(e.Params, TraceParam{Name: "status", Value: r.status})
			if r.skipReason != "" && r.bypass == "" {
				e.Params = append(e.Params, TraceParam{Name: "reason", Value: r.skipReason})
			}
		}
		if r == decider {
			e.Params = append(e.Params, TraceParam{Name: "bypassable", Value: yesNo(r.bypassable)})
		}
		out = append(out, e)
		if r.action != "" || r == decider {
			out = append(out, r.extra...)
		}
	}
	return out
}

// errStatus is the trace status of a hook error: "" for none.
func errStatus(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "failed"
}

// maxExtraEntries bounds the trace entries one service may add.
const maxExtraEntries = 8

// addExtra checks the trace entries a service returned: a valid agent
// URI that is not this system's, parameters that are tokens, at most
// maxExtraEntries per service. Others are dropped and logged.
func (s *Session) addExtra(rec *traceRecord, via []TraceEntry, who string) {
	for _, e := range via {
		ok := len(rec.extra) < maxExtraEntries && CheckAgentURI(e.URI) == nil && e.URI != s.p.policy.System.URI &&
			len(e.Params) <= 8 && len(e.String()) <= maxURILen+100 // fits one reply line
		for _, p := range e.Params {
			ok = ok && IsToken(p.Name) && len(p.Value) <= 200 && CheckPrintable(p.Value, 200) == nil
		}
		if !ok {
			s.p.log.Warn("opes: trace entry from a service dropped", "trace_id", s.traceID(), "by", who, "uri", SanitizeText(e.URI, 200))
			continue
		}
		rec.extra = append(rec.extra, e)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// stage evaluates the rules of stage st, then runs the enabled services'
// hooks for st in the order they were enabled. The first refusal wins;
// an Accept stops every later service for the transaction.
func (s *Session) stage(ctx context.Context, st Stage, rcpt *Recipient) *Outcome {
	tx := s.Transaction()
	tx.stage = st
	run := s.run
	// Rules of earlier stages that this transaction has not seen yet are
	// evaluated first: the MTA skips stages the policy does not need, and
	// a second message on one connection starts after connect and HELO.
	consent := s.consented(st)
	for rs := StageConnect; rs < st; rs++ {
		if rs >= StageRcpt && !consent {
			break
		}
		if !run.evaluated.Has(rs) {
			run.evaluated = run.evaluated.Add(rs)
			if o := s.rules(st, rs, nil); o != nil {
				return o
			}
		}
	}
	if !consent {
		// Nobody consented: trace only (PROFILE §6).
		return continueOutcome()
	}
	run.evaluated = run.evaluated.Add(st)
	if o := s.rules(st, st, rcpt); o != nil {
		return o
	}
	if run.accepted {
		return continueOutcome()
	}
	s.prefetch(ctx, st, rcpt)
	for _, a := range run.active {
		if !a.spec.Impl.Needs().Stages.Has(st) {
			continue
		}
		if s.bypassed(ctx, a, st) {
			continue
		}
		if st < StageData {
			a.ranBeforeData = true
		}
		if a.rec == nil {
			a.rec = s.record(a.spec.URI, a.spec.Bypassable)
		}
		var before []HeaderField
		if st == StageEOM {
			before = tx.Header.Fields()
		}
		began := time.Now()
		v, err := s.call(ctx, a, st, rcpt)
		took := time.Since(began)
		a.rec.took += took
		s.p.metrics.ServiceCall(a.spec.Name, st, took, errStatus(err))
		if st == StageEOM {
			s.protectTrace(a, before)
		}
		if tr, ok := a.tx.(Tracer); ok {
			s.addExtra(a.rec, tr.TraceEntries(), "service "+a.spec.Name)
		}
		if err != nil {
			s.logServiceFailed(a, st, err)
			a.rec.status = errStatus(err)
			switch a.spec.onError() {
			case OnErrorContinue:
				continue
			case OnErrorReject:
				v = Verdict{Kind: Reject, Reason: "service failed"}
			default:
				return s.failure(st, a.rec, "service "+a.spec.Name+" unavailable")
			}
		}
		if o := s.apply(st, rcpt, a.rec, v, "service "+a.spec.Name); o != nil {
			return o
		}
		if run.accepted {
			break
		}
	}
	return continueOutcome()
}

// prefetch lets the independent remote services of stage st wait for
// their servers at the same time (Prefetcher); with fewer than two there
// is nothing to overlap.
func (s *Session) prefetch(ctx context.Context, st Stage, rcpt *Recipient) {
	var pf []Prefetcher
	for _, a := range s.run.active {
		p, ok := a.tx.(Prefetcher)
		if !ok || !a.spec.Impl.Needs().Stages.Has(st) || a.honored || s.bypassed(ctx, a, st) {
			continue
		}
		pf = append(pf, p)
	}
	if len(pf) < 2 {
		return
	}
	var wg sync.WaitGroup
	for _, p := range pf {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					// The hook runs next and reports the failure.
					s.p.log.Error("opes: prefetch panicked", "panic", fmt.Sprint(r))
				}
			}()
			p.Prefetch(ctx, st, rcpt)
		}()
	}
	wg.Wait()
}

// rules evaluates the rules of stage rs while the dialog is at st: the
// services they name are enabled, and the first matching verdict rule
// decides (later rules of that stage are not evaluated).
func (s *Session) rules(st, rs Stage, rcpt *Recipient) *Outcome {
	for _, r := range s.p.policy.Rules {
		if r.Stage != rs || (r.When != nil && !r.When.Match(s.tx, rcpt)) {
			continue
		}
		for _, spec := range r.Run {
			s.enable(spec)
		}
		if r.Verdict != nil {
			return s.apply(st, rcpt, s.record(r.URI, false), *r.Verdict, "rule "+r.Name)
		}
	}
	return nil
}

// apply records a verdict and returns the outcome if it ends the stage.
func (s *Session) apply(st Stage, rcpt *Recipient, rec *traceRecord, v Verdict, who string) *Outcome {
	rec.note(v.action())
	if v.Status != "" {
		rec.status = SanitizeText(v.Status, 32)
		if rec.status == "skipped" && IsToken(v.Reason) && len(v.Reason) <= 32 {
			rec.skipReason = v.Reason // e.g. status=skipped; reason=signed
		}
	}
	switch v.Kind {
	case Accept:
		s.run.accepted = true
	case Quarantine:
		s.run.quarant = SanitizeText(firstNonEmpty(v.Reason, "held by OPES policy"), 200)
		s.run.quarantBy, s.run.quarantBypassable = rec.uri, rec.bypassable
	}
	if !v.Kind.terminal() {
		return nil
	}
	kind := v.Kind
	ndrDiscard := kind == Discard && st == StageEOM && s.p.ndr != nil
	if kind == Discard {
		// Refusing in the dialog keeps the sender informed without an
		// NDR; after the data a discard is followed by a report, and
		// without a report relay it is a refusal too: a silent discard
		// would lose mail (docs/decisions.md).
		kind = Reject
	}
	code, enh, text := defaultReply(st, kind)
	if v.Reply.Code != 0 || v.Reply.Enhanced != "" {
		c, e := v.Reply.Code, v.Reply.Enhanced
		if c == 0 {
			c = code
		}
		if e == "" {
			e = enh
		}
		if err := validReplyCodes(c, e, kind); err != nil {
			s.p.log.Warn("opes: invalid reply codes, using defaults", "trace_id", s.traceID(), "by", who, "err", err)
		} else {
			code, enh = c, e
		}
	}
	if v.Reply.Text != "" {
		text = v.Reply.Text
	} else if v.Reason != "" {
		text += " (" + v.Reason + ")"
	}
	if rec.bypass == "refused" {
		// The sender asked to bypass the service that refuses: say why
		// the request did not help (RFC 4902 §3.2).
		text += "; bypass refused: " + rec.reason
	}
	reply := buildReply(code, enh, text, s.systemEntry(), s.viaEntries(rec), s.p.policy.System.PrivacyURL)
	if ndrDiscard {
		s.run.discardBy, s.run.discardReason = rec, firstNonEmpty(v.Reason, text)
		return &Outcome{Kind: Discard, Reply: reply, TraceID: s.traceID()}
	}
	s.p.metrics.Outcome(st, kind)
	if rcpt == nil { // a recipient refusal does not end the transaction
		s.run.outcome = &OutcomeInfo{Stage: st.String(), Verdict: kind.String(), Code: code}
	}
	s.p.log.Info("opes: refused", "trace_id", s.traceID(), "stage", st.String(), "by", who,
		"verdict", kind.String(), "code", code, "rcpt_refused", rcpt != nil)
	return &Outcome{Kind: kind, Reply: reply, TraceID: s.traceID()}
}

// failure is the reply for a service or processor failure: 451 4.3.0
// with the trace (PROFILE §3).
func (s *Session) failure(st Stage, rec *traceRecord, why string) *Outcome {
	if rec == nil {
		rec = s.record(s.p.policy.System.URI, false)
	}
	rec.note("analyzed")
	if rec.status == "" {
		rec.status = "failed"
	}
	s.p.metrics.Outcome(st, TempFail)
	if st != StageRcpt {
		s.run.outcome = &OutcomeInfo{Stage: st.String(), Verdict: TempFail.String(), Code: 451}
	}
	reply := buildReply(451, "4.3.0", "OPES processing failed, try again later ("+why+")", s.systemEntry(), s.viaEntries(rec), s.p.policy.System.PrivacyURL)
	return &Outcome{Kind: TempFail, Reply: reply, TraceID: s.traceID()}
}

// limitOutcome refuses a message that exceeds a configured bound.
func (s *Session) limitOutcome(st Stage, why string) *Outcome {
	rec := s.record(s.p.policy.System.URI, false)
	rec.note("rejected")
	s.p.metrics.Outcome(st, Reject)
	s.run.outcome = &OutcomeInfo{Stage: st.String(), Verdict: Reject.String(), Code: 552}
	reply := buildReply(552, "5.3.4", "Message refused by OPES processor ("+why+")", s.systemEntry(), s.viaEntries(rec), s.p.policy.System.PrivacyURL)
	s.p.log.Info("opes: refused", "trace_id", s.traceID(), "stage", st.String(), "by", "limits", "why", why)
	return &Outcome{Kind: Reject, Reply: reply, TraceID: s.traceID()}
}

func defaultReply(st Stage, kind VerdictKind) (int, string, string) {
	what := map[Stage]string{
		StageConnect: "Connection", StageHelo: "HELO name", StageMail: "Sender", StageRcpt: "Recipient",
	}[st]
	if what == "" {
		what = "Message"
	}
	if kind == TempFail {
		return 451, "4.7.1", what + " temporarily refused by OPES policy"
	}
	code := 550
	if st == StageConnect || st >= StageData {
		code = 554
	}
	return code, "5.7.1", what + " refused by OPES policy"
}

func firstNonEmpty(a ...string) string {
	for _, s := range a {
		if s != "" {
			return s
		}
	}
	return ""
}

func (s *Session) record(uri string, bypassable bool) *traceRecord {
	for _, r := range s.run.records {
		if r.uri == uri {
			return r
		}
	}
	r := &traceRecord{uri: uri, action: "analyzed", bypassable: bypassable}
	s.run.records = append(s.run.records, r)
	return r
}

func (s *Session) enable(spec *ServiceSpec) {
	for _, a := range s.run.active {
		if a.spec == spec {
			return
		}
	}
	s.run.active = append(s.run.active, &activeService{spec: spec, tx: spec.Impl.Begin(s.tx)})
}

// call runs one hook; a panic in a service becomes an error so one bad
// service cannot take the daemon down.
func (s *Session) call(ctx context.Context, a *activeService, st Stage, rcpt *Recipient) (v Verdict, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.p.log.Error("opes: service panicked", "service", a.spec.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("service %s panicked: %v", a.spec.Name, p)
		}
	}()
	var changed bool
	var bodyBefore *Body
	if st == StageEOM {
		bodyBefore = s.tx.newBody
	}
	switch st {
	case StageConnect:
		v, err = a.tx.Connect(ctx)
	case StageHelo:
		v, err = a.tx.Helo(ctx)
	case StageMail:
		v, err = a.tx.Mail(ctx)
	case StageRcpt:
		v, err = a.tx.Rcpt(ctx, rcpt)
	case StageData:
		v, err = a.tx.Data(ctx)
	case StageHeaders:
		v, err = a.tx.Headers(ctx)
	case StageEOM:
		before := s.tx.Header.Fields()
		v, err = a.tx.EndOfMessage(ctx)
		if err == nil && s.tx.newBody != bodyBefore && !a.spec.ModifySigned && s.tx.signedContent() {
			// PROFILE §6: signed or encrypted content is not modified
			// by default. The whole change is undone (a new body comes
			// with new Content-* fields); the verdict still counts.
			s.tx.retired = append(s.tx.retired, s.tx.newBody)
			s.tx.newBody = bodyBefore
			s.tx.Header.fields = before
			if v.Kind == Continue {
				v.Action, v.Status, v.Reason = "analyzed", "skipped", "signed"
			}
			s.p.log.Info("opes: body change of a signed message undone", "trace_id", s.traceID(), "service", a.spec.Name)
		}
		changed = s.tx.newBody != bodyBefore || !slices.Equal(before, s.tx.Header.fields)
	}
	if err == nil && changed && v.Action == "" && v.Kind == Continue {
		v.Action = "modified"
	}
	return v, err
}

// protectTrace enforces PROFILE §2 after a service ran at the end of
// message: trace fields present before (upstream ones and ours) must
// still be there unchanged, and a service may not add OPES-System or
// OPES-Via. Violations are undone and logged.
func (s *Session) protectTrace(a *activeService, before []HeaderField) {
	h := s.tx.Header
	// Drop trace fields the service added.
	kept := h.fields[:0]
	for _, f := range h.fields {
		if f.orig == -1 && isTraceField(f.Name) && !strings.EqualFold(f.Name, FieldBypass) {
			s.p.log.Warn("opes: service tried to add a trace field; removed", "trace_id", s.traceID(), "service", a.spec.Name, "field", f.Name)
			continue
		}
		kept = append(kept, f)
	}
	h.fields = kept
	// Restore removed or altered ones at their former position.
	for i, old := range before {
		if !isTraceField(old.Name) {
			continue
		}
		j := indexOfOrig(h.fields, old.orig)
		switch {
		case j < 0:
			s.p.log.Warn("opes: service removed a trace field; restored", "trace_id", s.traceID(), "service", a.spec.Name, "field", old.Name)
			pos := min(i, len(h.fields))
			h.fields = append(h.fields[:pos], append([]HeaderField{old}, h.fields[pos:]...)...)
		case h.fields[j] != old:
			s.p.log.Warn("opes: service altered a trace field; restored", "trace_id", s.traceID(), "service", a.spec.Name, "field", old.Name)
			h.fields[j] = old
		}
	}
}

func indexOfOrig(fields []HeaderField, orig int) int {
	for i, f := range fields {
		if f.orig == orig {
			return i
		}
	}
	return -1
}
