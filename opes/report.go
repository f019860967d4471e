package opes

import "time"

// Reporter receives one metadata record per transaction (RFC 4496 §4.3:
// logging and reporting), when the transaction ends: delivered, refused,
// or abandoned by the client. Records carry no message content; the size
// is counted by the processor, so no service reads the body to measure
// it. Implementations must be safe for concurrent use.
type Reporter interface {
	Report(rec *TransactionRecord)
}

// TransactionRecord describes one transaction. Addresses and the HELO
// name are as the client gave them (sanitized to printable ASCII);
// reporters decide how much of them to keep.
type TransactionRecord struct {
	TraceID    string          `json:"trace_id"`
	QueueID    string          `json:"queue_id,omitempty"`
	Start      time.Time       `json:"start"`
	DurationMS float64         `json:"duration_ms"`
	Client     string          `json:"client,omitempty"`
	Helo       string          `json:"helo,omitempty"`
	Auth       bool            `json:"authenticated"`
	TLS        bool            `json:"tls"`
	Sender     string          `json:"sender"`
	Recipients []RecipientInfo `json:"recipients"`
	Size       int64           `json:"size"` // body octets; -1 when the MTA did not send the body
	Outcome    OutcomeInfo     `json:"outcome"`
	Services   []ServiceInfo   `json:"services"`
}

// RecipientInfo is one RCPT and whether the processor refused it.
type RecipientInfo struct {
	Addr    string `json:"addr"`
	Refused bool   `json:"refused,omitempty"`
}

// OutcomeInfo is how the transaction ended.
type OutcomeInfo struct {
	Stage      string `json:"stage"`
	Verdict    string `json:"verdict"` // accept, quarantine, reject, tempfail, aborted
	Code       int    `json:"code,omitempty"`
	Quarantine string `json:"quarantine,omitempty"`
}

// ServiceInfo is one agent of the trace: what it did and how long its
// hooks took in total.
type ServiceInfo struct {
	URI        string  `json:"uri"`
	Action     string  `json:"action"`
	Status     string  `json:"status,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// WithReporter sends a TransactionRecord for every transaction to r.
// measureSize makes the processor ask the MTA for the body even when no
// service reads it, to count its size (it is counted, not stored).
func WithReporter(r Reporter, measureSize bool) Option {
	return func(p *Processor) { p.reporter, p.measureSize = r, measureSize }
}

// report emits the record of the transaction that is ending.
func (s *Session) report() {
	tx, run := s.tx, s.run
	if s.p.reporter == nil || (tx.Sender == nil && run.outcome == nil) {
		return // nothing happened worth a record (e.g. RSET before MAIL)
	}
	rec := &TransactionRecord{
		TraceID: s.traceID(),
		QueueID: SanitizeText(tx.QueueID, 64),
		Start:   run.start,
		Helo:    SanitizeText(tx.Conn.Helo, 255),
		Auth:    tx.Conn.Authenticated(),
		TLS:     tx.Conn.TLS(),
		Size:    -1,
	}
	rec.DurationMS = float64(time.Since(run.start).Microseconds()) / 1000
	if tx.Conn.Addr.IsValid() {
		rec.Client = tx.Conn.Addr.String()
	}
	if tx.Sender != nil {
		rec.Sender = SanitizeText(tx.Sender.Addr, 512)
	}
	for _, r := range tx.Recipients {
		rec.Recipients = append(rec.Recipients, RecipientInfo{Addr: SanitizeText(r.Addr, 512), Refused: r.Refused})
	}
	if run.bodySeen {
		rec.Size = run.bodySize
	}
	if run.outcome != nil {
		rec.Outcome = *run.outcome
	} else {
		rec.Outcome = OutcomeInfo{Stage: tx.stage.String(), Verdict: "aborted"}
	}
	for _, r := range run.records {
		rec.Services = append(rec.Services, ServiceInfo{URI: r.uri, Action: r.action, Status: r.status, DurationMS: float64(r.took.Microseconds()) / 1000})
	}
	s.p.reporter.Report(rec)
}
