// Package quarantine manages the messages opes-milter keeps in its own
// quarantine store (PROFILE §4–§5, RFC 4902 §3.2): an administrator
// releases one (it is re-injected over SMTP to its original recipients,
// with a trace entry recording the release) or deletes it, and a message
// nobody released expires, which sends its sender a non-delivery report
// carrying the trace.
package quarantine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ndr"
)

// Store is the part of the store the manager uses.
type Store interface {
	GetQuarantine(ctx context.Context, id string) (store.QuarantineItem, error)
	OpenQuarantine(ctx context.Context, id string) (io.ReadCloser, error)
	SetQuarantineStatus(ctx context.Context, id string, status store.QuarantineStatus, by string) error
	ExpiredQuarantine(ctx context.Context, now time.Time, limit int) ([]store.QuarantineItem, error)
}

// Sender submits a message over SMTP (*ndr.Relay).
type Sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) error
}

// Reports queues a non-delivery report durably (*ndr.Worker).
type Reports interface {
	Submit(ctx context.Context, traceID string, data []byte, to string) error
}

// Auditor records releases, deletions and expiries.
type Auditor interface {
	Record(ev audit.Event) error
}

// Manager releases, deletes and expires quarantined messages.
type Manager struct {
	Store Store
	// Relay is where released messages are re-injected: an MTA listener
	// that does not run this milter again (docs/operations.md). nil:
	// release is refused.
	Relay Sender
	// Reports sends the report for an expired message; nil: expired
	// messages are kept held (never dropped without a report).
	Reports   Reports
	System    opes.System
	Hostname  string // Reporting-MTA of reports
	From      string // header From of reports
	Audit     Auditor
	Log       *slog.Logger
	MaxSize   int64 // refuse to load a stored message larger than this; 0 = 64 MiB
	nowForTst func() time.Time
}

// ErrNotHeld is returned when releasing or deleting a message that is no
// longer held.
var ErrNotHeld = errors.New("quarantine: message is not held")

// ErrNoRelay is returned by Release when no release relay is configured.
var ErrNoRelay = errors.New("quarantine: no release relay configured ([quarantine] release_relay)")

func (m *Manager) now() time.Time {
	if m.nowForTst != nil {
		return m.nowForTst()
	}
	return time.Now().UTC()
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

func (m *Manager) audit(ev audit.Event) {
	if m.Audit == nil {
		return
	}
	ev.Time = m.now()
	if err := m.Audit.Record(ev); err != nil {
		m.log().Error("quarantine: audit log write failed", "err", err)
	}
}

// held loads a message that must still be held.
func (m *Manager) held(ctx context.Context, id string) (store.QuarantineItem, error) {
	it, err := m.Store.GetQuarantine(ctx, id)
	if err != nil {
		return it, err
	}
	if it.Status != store.Held {
		return it, fmt.Errorf("%w (%s)", ErrNotHeld, it.Status)
	}
	return it, nil
}

// Release re-injects a held message to its original recipients with a
// trace entry recording the release, then marks it released. The message
// is marked only after the relay accepted it: a failed release leaves it
// held.
func (m *Manager) Release(ctx context.Context, id, actor string) error {
	if m.Relay == nil {
		return ErrNoRelay
	}
	it, err := m.held(ctx, id)
	if err != nil {
		return err
	}
	orig, err := m.load(ctx, id)
	if err != nil {
		return err
	}
	via := []opes.TraceEntry{m.systemEntry(it), {URI: it.Service, Params: []opes.TraceParam{
		{Name: "action", Value: "quarantined"},
		{Name: "released", Value: m.now().Format("20060102T150405Z")}, // ISO 8601 basic: a token
	}}}
	var msg bytes.Buffer
	writeField(&msg, opes.FieldSystem, opes.FoldTraceList(opes.FieldSystem, []opes.TraceEntry{m.systemEntry(it)}))
	writeField(&msg, opes.FieldVia, opes.FoldTraceList(opes.FieldVia, via))
	msg.Write(orig)
	if err := m.Relay.Send(ctx, it.Sender, it.Recipients, msg.Bytes()); err != nil {
		return fmt.Errorf("quarantine: release of %s: %w", id, err)
	}
	if err := m.Store.SetQuarantineStatus(ctx, id, store.Released, actor); err != nil {
		// Delivered but still marked held: a second release would send it
		// twice, which is better than losing it; say so loudly.
		m.log().Error("quarantine: released but not marked", "id", id, "trace_id", it.TraceID, "err", err)
		return fmt.Errorf("quarantine: released %s but could not mark it: %w", id, err)
	}
	m.audit(audit.Event{Kind: "quarantine-release", TraceID: it.TraceID, Actor: actor, Subject: it.Sender,
		Service: it.Service, Decision: "released", Detail: map[string]string{"quarantine_id": id}})
	m.log().Info("quarantine: released", "id", id, "trace_id", it.TraceID, "by", actor, "recipients", len(it.Recipients))
	return nil
}

// Delete removes a held message for good.
func (m *Manager) Delete(ctx context.Context, id, actor string) error {
	it, err := m.held(ctx, id)
	if err != nil {
		return err
	}
	if err := m.Store.SetQuarantineStatus(ctx, id, store.Deleted, actor); err != nil {
		return err
	}
	m.audit(audit.Event{Kind: "quarantine-delete", TraceID: it.TraceID, Actor: actor, Subject: it.Sender,
		Service: it.Service, Decision: "deleted", Detail: map[string]string{"quarantine_id": id}})
	return nil
}

// ExpireOnce sends the report for every held message past its expiry and
// marks it expired. It returns how many expired.
func (m *Manager) ExpireOnce(ctx context.Context) (int, error) {
	if m.Reports == nil {
		return 0, nil
	}
	items, err := m.Store.ExpiredQuarantine(ctx, m.now(), 100)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, it := range items {
		if err := m.expire(ctx, it); err != nil {
			m.log().Error("quarantine: expiry failed; kept held", "id", it.ID, "trace_id", it.TraceID, "err", err)
			continue
		}
		n++
	}
	return n, nil
}

// Run expires messages every interval until ctx ends.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := m.ExpireOnce(ctx); err != nil && ctx.Err() == nil {
			m.log().Error("quarantine: expiry run failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) expire(ctx context.Context, it store.QuarantineItem) error {
	orig, err := m.load(ctx, it.ID)
	if err != nil {
		return err
	}
	rec := opes.TraceEntry{URI: it.Service, Params: []opes.TraceParam{{Name: "action", Value: "quarantined"},
		{Name: "bypassable", Value: yesNo(it.Bypassable)}}}
	reply := opes.NewReply(550, "5.7.1", "Message held by OPES policy was not released ("+opes.SanitizeText(it.Reason, 120)+")",
		m.systemEntry(it), []opes.TraceEntry{rec}, m.System.PrivacyURL)
	via := opes.FoldTraceList(opes.FieldVia, []opes.TraceEntry{m.systemEntry(it), rec})
	var rcpts []ndr.Recipient
	for i, addr := range it.Recipients {
		r := ndr.Recipient{Address: addr, Status: "5.7.1", Diagnostic: reply.String(), Via: via}
		if i < len(it.RecipientArgs) {
			r.ORCPT, r.Notify = it.RecipientArgs[i]["ORCPT"], it.RecipientArgs[i]["NOTIFY"]
		}
		rcpts = append(rcpts, r)
	}
	if due := ndr.Needed(it.Sender, rcpts); len(due) > 0 {
		var hdr bytes.Buffer
		writeField(&hdr, opes.FieldSystem, opes.FoldTraceList(opes.FieldSystem, []opes.TraceEntry{m.systemEntry(it)}))
		writeField(&hdr, opes.FieldVia, via)
		hdr.Write(orig)
		data, err := ndr.Build(ndr.Report{
			ReportingMTA: m.Hostname, From: m.From, SystemURI: m.System.URI, PolicyURL: m.System.PrivacyURL,
			TraceID: it.TraceID, Arrival: it.Created, ReversePath: it.Sender, EnvID: it.EnvID,
			Service: it.Service, Bypassable: it.Bypassable,
			Reason:     "the message was held in quarantine (" + it.Reason + ") and not released before " + it.Expires.Format(time.RFC1123Z),
			Recipients: due, Headers: hdr.Bytes(),
		})
		if err != nil {
			return err
		}
		if err := m.Reports.Submit(ctx, it.TraceID, data, it.Sender); err != nil {
			return err
		}
	}
	if err := m.Store.SetQuarantineStatus(ctx, it.ID, store.Expired, "expiry"); err != nil {
		return err
	}
	m.audit(audit.Event{Kind: "quarantine-expire", TraceID: it.TraceID, Actor: "expiry", Subject: it.Sender,
		Service: it.Service, Decision: "expired", Detail: map[string]string{"quarantine_id": it.ID}})
	m.log().Info("quarantine: expired, sender notified", "id", it.ID, "trace_id", it.TraceID)
	return nil
}

func (m *Manager) systemEntry(it store.QuarantineItem) opes.TraceEntry {
	return opes.TraceEntry{URI: m.System.URI, Params: []opes.TraceParam{{Name: "id", Value: it.TraceID}}}
}

// load reads a stored original, bounded.
func (m *Manager) load(ctx context.Context, id string) ([]byte, error) {
	rc, err := m.Store.OpenQuarantine(ctx, id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	limit := m.MaxSize
	if limit <= 0 {
		limit = 64 << 20
	}
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("quarantine: reading %s: %w", id, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("quarantine: %s is larger than %d bytes", id, limit)
	}
	return b, nil
}

func writeField(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteString(": ")
	b.WriteString(value)
	b.WriteString("\r\n")
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}
