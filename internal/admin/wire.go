package admin

import (
	"time"

	"github.com/opesmilter/opes-milter/internal/store"
)

// The API's JSON shapes. They are separate from the store's types so the
// wire format stays stable when the store changes; opesctl decodes them.

// PreferenceRequest is the body of POST /api/v1/bypass.
type PreferenceRequest struct {
	Recipient string   `json:"recipient"`
	Sender    string   `json:"sender,omitempty"`
	Kind      string   `json:"kind,omitempty"` // default non-opes-version
	Services  []string `json:"services,omitempty"`
	// Expires is an RFC 3339 time; ExpiresIn a Go duration ("720h")
	// from now. At most one; neither: never expires.
	Expires   *time.Time `json:"expires,omitempty"`
	ExpiresIn string     `json:"expires_in,omitempty"`
	Note      string     `json:"note,omitempty"`
}

// PreferenceView is a stored preference.
type PreferenceView struct {
	ID        string     `json:"id"`
	Recipient string     `json:"recipient"`
	Sender    string     `json:"sender"`
	Kind      string     `json:"kind"`
	Services  []string   `json:"services"`
	CreatedBy string     `json:"created_by"`
	Note      string     `json:"note"`
	Created   time.Time  `json:"created"`
	Expires   *time.Time `json:"expires,omitempty"`
}

func preferenceView(p store.Preference) PreferenceView {
	return PreferenceView{ID: p.ID, Recipient: p.Recipient, Sender: p.Sender, Kind: string(p.Kind),
		Services: nonNil(p.Services), CreatedBy: p.CreatedBy, Note: p.Note, Created: p.Created, Expires: timePtr(p.Expires)}
}

// QuarantineView is a quarantined message's index entry.
type QuarantineView struct {
	ID            string              `json:"id"`
	TraceID       string              `json:"trace_id"`
	QueueID       string              `json:"queue_id"`
	Sender        string              `json:"sender"`
	Recipients    []string            `json:"recipients"`
	RecipientArgs []map[string]string `json:"recipient_args,omitempty"`
	EnvID         string              `json:"envid,omitempty"`
	Reason        string              `json:"reason"`
	Service       string              `json:"service"`
	Bypassable    bool                `json:"bypassable"`
	Size          int64               `json:"size"`
	Created       time.Time           `json:"created"`
	Expires       *time.Time          `json:"expires,omitempty"`
	Status        string              `json:"status"`
	StatusBy      string              `json:"status_by,omitempty"`
	StatusAt      *time.Time          `json:"status_at,omitempty"`
}

func quarantineView(q store.QuarantineItem) QuarantineView {
	return QuarantineView{ID: q.ID, TraceID: q.TraceID, QueueID: q.QueueID, Sender: q.Sender,
		Recipients: nonNil(q.Recipients), RecipientArgs: q.RecipientArgs, EnvID: q.EnvID, Reason: q.Reason,
		Service: q.Service, Bypassable: q.Bypassable, Size: q.Size, Created: q.Created, Expires: timePtr(q.Expires),
		Status: string(q.Status), StatusBy: q.StatusBy, StatusAt: timePtr(q.StatusAt)}
}

// OutboxView is a queued report, without its bytes.
type OutboxView struct {
	ID          string     `json:"id"`
	TraceID     string     `json:"trace_id"`
	Sender      string     `json:"sender"`
	Recipients  []string   `json:"recipients"`
	Size        int        `json:"size"`
	Attempts    int        `json:"attempts"`
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Created     time.Time  `json:"created"`
	Status      string     `json:"status"`
}

func outboxView(o store.OutboxItem) OutboxView {
	return OutboxView{ID: o.ID, TraceID: o.TraceID, Sender: o.Sender, Recipients: nonNil(o.Recipients),
		Size: len(o.Data), Attempts: o.Attempts, NextAttempt: timePtr(o.NextAttempt), LastError: o.LastError,
		Created: o.Created, Status: string(o.Status)}
}

// ErrorView is every error answer: {"error": "..."}.
type ErrorView struct {
	Error string `json:"error"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// nonNil makes empty lists "[]" in JSON, which scripts iterate without a
// null check.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
