// Package store keeps the state opes-milter must not lose and that several
// MX hosts may share: recipients' out-of-band bypass preferences (RFC 4902
// §3.2, PROFILE §5), the quarantine (index and original messages) and the
// outbox of non-delivery reports waiting for the relay (PROFILE §4).
//
// Two backends implement the same behaviour: an embedded database file
// (no server to run, the default) and PostgreSQL (shared by several hosts).
package store

import "time"

// Config selects and configures a backend.
type Config struct {
	// Backend is "embedded" (default) or "postgres".
	Backend string
	// Path is the embedded database file.
	Path string
	// DSN is the PostgreSQL connection string (postgres://... or key=value).
	DSN string
	// MaxQuarantineBytes bounds the stored quarantine; 0 means no bound.
	// Put fails with ErrFull beyond it.
	MaxQuarantineBytes int64
}

// PreferenceKind is what a recipient asked for.
type PreferenceKind string

const (
	// NonOPESVersion: deliver the non-OPES version of mail from Sender
	// (every bypassable service is bypassed for that sender).
	NonOPESVersion PreferenceKind = "non-opes-version"
	// NoOptional: no optional OPES services for this recipient (for mail
	// from Sender when it is set).
	NoOptional PreferenceKind = "no-optional"
)

// Preference is one recipient's out-of-band bypass entry.
type Preference struct {
	ID string // assigned by Add (ULID)
	// Recipient is a lower-cased address ("joe@example.org") or a whole
	// domain ("@example.org").
	Recipient string
	// Sender limits the entry to mail from an address or "@domain"; ""
	// means any sender.
	Sender string
	// Services limits the entry to these service URIs (normalised); empty
	// means every bypassable service.
	Services  []string
	Kind      PreferenceKind
	CreatedBy string // who recorded it (CLI user, API token name)
	Note      string
	Created   time.Time
	Expires   time.Time // zero: never
}

// QuarantineStatus is the life cycle of a quarantined message.
type QuarantineStatus string

const (
	Held     QuarantineStatus = "held"
	Released QuarantineStatus = "released"
	Deleted  QuarantineStatus = "deleted"
	Expired  QuarantineStatus = "expired"
)

// QuarantineItem describes one quarantined original message and its
// envelope; the message bytes are stored beside it.
type QuarantineItem struct {
	ID         string // assigned by Put (ULID)
	TraceID    string
	QueueID    string
	Sender     string   // envelope reverse-path, "" for the null sender
	Recipients []string // envelope recipients
	// RecipientArgs holds each recipient's ESMTP parameters (ORCPT,
	// NOTIFY) by index, for the NDR on expiry; may be nil.
	RecipientArgs []map[string]string
	EnvID         string // ENVID of MAIL FROM, if any
	Reason        string
	Service       string // URI of the service that quarantined it
	Bypassable    bool
	Size          int64
	Created       time.Time
	Expires       time.Time
	Status        QuarantineStatus
	StatusBy      string // who released or deleted it
	StatusAt      time.Time
}

// OutboxStatus is the state of a queued report.
type OutboxStatus string

const (
	Queued OutboxStatus = "queued"
	Failed OutboxStatus = "failed" // permanent failure; kept for the admin
)

// OutboxItem is a message (an NDR) waiting for the relay.
type OutboxItem struct {
	ID          string // assigned by Enqueue (ULID)
	TraceID     string
	Sender      string   // envelope MAIL FROM; "" for an NDR
	Recipients  []string // envelope RCPT TO
	Data        []byte   // the whole message, CRLF line ends
	Attempts    int
	NextAttempt time.Time
	LastError   string
	Created     time.Time
	Status      OutboxStatus
}

// QuarantineFilter selects quarantined messages for ListQuarantine; zero
// fields select everything (Limit 0: a backend default of 100).
type QuarantineFilter struct {
	Status    QuarantineStatus
	Recipient string // exact envelope recipient, lower-cased
	Limit     int
}
