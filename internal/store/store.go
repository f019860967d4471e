package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/opesmilter/opes-milter/opes/bypass"
)

// Errors callers test with errors.Is; the returned errors wrap them with
// what was wrong.
var (
	ErrNotFound = errors.New("not found")
	ErrFull     = errors.New("quarantine full")
	ErrInvalid  = errors.New("invalid")
)

// backend is what each database implements. The *Store methods validate
// and normalise their input (lower-cased addresses, UTC times truncated to
// microseconds, which PostgreSQL keeps) before calling it, so the two
// implementations see identical values and behave identically.
type backend interface {
	addPreference(ctx context.Context, p Preference) error
	listPreferences(ctx context.Context, recipient string) ([]Preference, error)
	removePreference(ctx context.Context, id string) error
	// matchPreferences returns the unexpired entries whose Recipient is one
	// of recipients and whose Sender is one of senders.
	matchPreferences(ctx context.Context, recipients, senders []string, now time.Time) ([]Preference, error)

	// putQuarantine stores item and data unless the stored total would
	// exceed limit (0: no limit).
	putQuarantine(ctx context.Context, item QuarantineItem, data []byte, limit int64) error
	getQuarantine(ctx context.Context, id string) (QuarantineItem, error)
	// quarantineData returns the message bytes; ErrNotFound when they
	// were freed.
	quarantineData(ctx context.Context, id string) ([]byte, error)
	listQuarantine(ctx context.Context, f QuarantineFilter) ([]QuarantineItem, error)
	// setQuarantineStatus moves a held item to status and frees its bytes.
	setQuarantineStatus(ctx context.Context, id string, status QuarantineStatus, by string, at time.Time) error
	expiredQuarantine(ctx context.Context, now time.Time, limit int) ([]QuarantineItem, error)

	enqueue(ctx context.Context, item OutboxItem) error
	claim(ctx context.Context, now, until time.Time, limit int) ([]OutboxItem, error)
	done(ctx context.Context, id string) error
	retry(ctx context.Context, id string, next time.Time, lastErr string) error
	fail(ctx context.Context, id string, lastErr string) error
	listOutbox(ctx context.Context, status OutboxStatus, limit int) ([]OutboxItem, error)
	counts(ctx context.Context) (Counts, error)

	close() error
}

// defaultListLimit is ListQuarantine's bound when the filter sets none:
// an admin listing must not pull an unbounded quarantine into memory.
const defaultListLimit = 100

// Store is the persistent state. It is safe for concurrent use; with the
// postgres backend several processes on several hosts may share one
// database.
type Store struct {
	b         backend
	maxQBytes int64
}

// Open opens (creating if needed) the store cfg describes.
//
// The embedded backend keeps everything in one file, Config.Path, whose
// directory must exist; only one process can have it open, and a second
// one gets an error saying it is locked. The postgres backend connects to
// Config.DSN and creates its tables if they are missing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.MaxQuarantineBytes < 0 {
		return nil, fmt.Errorf("store: %w: MaxQuarantineBytes %d is negative", ErrInvalid, cfg.MaxQuarantineBytes)
	}
	var (
		b   backend
		err error
	)
	switch cfg.Backend {
	case "", "embedded":
		if cfg.Path == "" {
			return nil, fmt.Errorf("store: %w: the embedded backend needs a path", ErrInvalid)
		}
		b, err = openBolt(ctx, cfg.Path)
	case "postgres":
		if cfg.DSN == "" {
			return nil, fmt.Errorf("store: %w: the postgres backend needs a DSN", ErrInvalid)
		}
		b, err = openPostgres(ctx, cfg.DSN)
	default:
		return nil, fmt.Errorf("store: %w: unknown backend %q (want embedded or postgres)", ErrInvalid, cfg.Backend)
	}
	if err != nil {
		return nil, err
	}
	return &Store{b: b, maxQBytes: cfg.MaxQuarantineBytes}, nil
}

// Close releases the database.
func (s *Store) Close() error { return s.b.close() }

func newID() string { return ulid.Make().String() }

// stamp is how times are stored: UTC, microseconds (PostgreSQL's
// precision), no monotonic reading.
func stamp(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

// AddPreference validates and records p, assigning ID and Created, and
// returns the stored entry.
func (s *Store) AddPreference(ctx context.Context, p Preference) (Preference, error) {
	var err error
	if p.Recipient, err = normalizeTarget(p.Recipient, false); err != nil {
		return Preference{}, fmt.Errorf("store: add preference: recipient: %w", err)
	}
	if p.Sender, err = normalizeTarget(p.Sender, true); err != nil {
		return Preference{}, fmt.Errorf("store: add preference: sender: %w", err)
	}
	if p.Kind != NonOPESVersion && p.Kind != NoOptional {
		return Preference{}, fmt.Errorf("store: add preference: %w: kind %q (want %q or %q)", ErrInvalid, p.Kind, NonOPESVersion, NoOptional)
	}
	services := make([]string, 0, len(p.Services))
	for _, svc := range p.Services {
		if svc == "" || len(svc) > maxText || hasSpaceOrControl(svc) {
			return Preference{}, fmt.Errorf("store: add preference: %w: service URI %q", ErrInvalid, svc)
		}
		// Stored normalised (RFC 3986), as the processor compares them.
		n, err := bypass.NormalizeURI(svc)
		if err != nil {
			return Preference{}, fmt.Errorf("store: add preference: %w: service URI %q: %v", ErrInvalid, svc, err)
		}
		services = append(services, n)
	}
	p.Services = services
	if err := checkText("created-by", p.CreatedBy); err != nil {
		return Preference{}, fmt.Errorf("store: add preference: %w", err)
	}
	if err := checkText("note", p.Note); err != nil {
		return Preference{}, fmt.Errorf("store: add preference: %w", err)
	}
	p.Services = nilIfEmpty(p.Services)
	p.ID = newID()
	p.Created = stamp(time.Now())
	p.Expires = stamp(p.Expires)
	if err := s.b.addPreference(ctx, p); err != nil {
		return Preference{}, fmt.Errorf("store: add preference: %w", err)
	}
	return p, nil
}

// ListPreferences returns the entries recorded for recipientFilter (an
// address or "@domain", exactly as recorded: an address does not list its
// domain's entries), or every entry when it is "", oldest first. Expired
// entries are listed too.
func (s *Store) ListPreferences(ctx context.Context, recipientFilter string) ([]Preference, error) {
	if recipientFilter != "" {
		var err error
		if recipientFilter, err = normalizeTarget(recipientFilter, false); err != nil {
			return nil, fmt.Errorf("store: list preferences: %w", err)
		}
	}
	ps, err := s.b.listPreferences(ctx, recipientFilter)
	if err != nil {
		return nil, fmt.Errorf("store: list preferences: %w", err)
	}
	return ps, nil
}

// RemovePreference deletes the entry id; ErrNotFound if there is none.
func (s *Store) RemovePreference(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("store: remove preference: %w", err)
	}
	if err := s.b.removePreference(ctx, id); err != nil {
		return fmt.Errorf("store: remove preference %s: %w", id, err)
	}
	return nil
}

// MatchPreferences returns the entries that apply to mail from sender to
// rcpt at now: recorded for rcpt or its "@domain", for any sender or for
// sender or its "@domain", and not expired; oldest first. sender "" is
// the null reverse-path and matches only entries for any sender. A
// recipient without a local part or domain (RCPT TO:<postmaster>)
// matches nothing.
//
// It runs at every RCPT, so both backends answer it from an index on the
// recipient.
func (s *Store) MatchPreferences(ctx context.Context, rcpt, sender string, now time.Time) ([]Preference, error) {
	rcpt = normalizeAddr(rcpt)
	if rcpt == "" {
		return nil, fmt.Errorf("store: match preferences: %w: empty recipient", ErrInvalid)
	}
	d := domainOf(rcpt)
	if d == "" || strings.HasPrefix(rcpt, "@") {
		return nil, nil
	}
	rcpts := []string{rcpt, "@" + d}
	senders := []string{""}
	if sender = normalizeAddr(sender); sender != "" {
		senders = append(senders, sender)
		if d := domainOf(sender); d != "" && !strings.HasPrefix(sender, "@") {
			senders = append(senders, "@"+d)
		}
	}
	ps, err := s.b.matchPreferences(ctx, rcpts, senders, stamp(now))
	if err != nil {
		return nil, fmt.Errorf("store: match preferences: %w", err)
	}
	return ps, nil
}

// PutQuarantine stores item and the message read from msg, assigning ID,
// Size, Created (unless set), Status Held. It fails with ErrFull if the
// quarantine would grow beyond Config.MaxQuarantineBytes, and with the
// database's error if the write fails (a full disk): the caller must then
// not accept the message.
func (s *Store) PutQuarantine(ctx context.Context, item QuarantineItem, msg io.Reader) (QuarantineItem, error) {
	if err := checkQuarantineItem(&item); err != nil {
		return QuarantineItem{}, fmt.Errorf("store: put quarantine: %w", err)
	}
	var buf bytes.Buffer
	r := msg
	if s.maxQBytes > 0 {
		// Read no more than can fit: a huge message must not be
		// buffered just to be refused.
		r = io.LimitReader(msg, s.maxQBytes+1)
	}
	n, err := buf.ReadFrom(r)
	if err != nil {
		return QuarantineItem{}, fmt.Errorf("store: put quarantine: read message: %w", err)
	}
	if s.maxQBytes > 0 && n > s.maxQBytes {
		return QuarantineItem{}, fmt.Errorf("store: put quarantine: %w: message larger than the whole quarantine (%d bytes)", ErrFull, s.maxQBytes)
	}
	item.ID = newID()
	item.Size = n
	item.Status = Held
	item.StatusBy = ""
	item.StatusAt = time.Time{}
	if item.Created.IsZero() {
		item.Created = time.Now()
	}
	item.Created = stamp(item.Created)
	item.Expires = stamp(item.Expires)
	if err := s.b.putQuarantine(ctx, item, buf.Bytes(), s.maxQBytes); err != nil {
		return QuarantineItem{}, fmt.Errorf("store: put quarantine: %w", err)
	}
	return item, nil
}

// GetQuarantine returns the item id (without the message).
func (s *Store) GetQuarantine(ctx context.Context, id string) (QuarantineItem, error) {
	if err := checkID(id); err != nil {
		return QuarantineItem{}, fmt.Errorf("store: get quarantine: %w", err)
	}
	it, err := s.b.getQuarantine(ctx, id)
	if err != nil {
		return QuarantineItem{}, fmt.Errorf("store: get quarantine %s: %w", id, err)
	}
	return it, nil
}

// OpenQuarantine returns the message bytes of item id. They exist only
// while the item is held (see SetQuarantineStatus); otherwise the error
// is ErrNotFound.
func (s *Store) OpenQuarantine(ctx context.Context, id string) (io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return nil, fmt.Errorf("store: open quarantine: %w", err)
	}
	data, err := s.b.quarantineData(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("store: open quarantine %s: %w", id, err)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// ListQuarantine returns the items f selects, oldest first, at most
// f.Limit (0: 100). f.Recipient is compared case-insensitively with each
// envelope recipient; "@domain" selects every recipient in the domain.
func (s *Store) ListQuarantine(ctx context.Context, f QuarantineFilter) ([]QuarantineItem, error) {
	switch f.Status {
	case "", Held, Released, Deleted, Expired:
	default:
		return nil, fmt.Errorf("store: list quarantine: %w: status %q", ErrInvalid, f.Status)
	}
	if f.Limit < 0 {
		return nil, fmt.Errorf("store: list quarantine: %w: negative limit", ErrInvalid)
	}
	if f.Limit == 0 {
		f.Limit = defaultListLimit
	}
	if f.Recipient != "" {
		var err error
		if f.Recipient, err = normalizeTarget(f.Recipient, false); err != nil {
			return nil, fmt.Errorf("store: list quarantine: recipient: %w", err)
		}
	}
	items, err := s.b.listQuarantine(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("store: list quarantine: %w", err)
	}
	return items, nil
}

// SetQuarantineStatus moves held item id to Released, Deleted or Expired,
// recording who did it and when. The message leaves the quarantine: its
// bytes are freed whatever the new status (the quarantine is bounded and
// nothing else would ever free them), so read them with OpenQuarantine
// and hand them on (release, NDR) before calling this. An item that is
// no longer held cannot change again (ErrInvalid), so two admins cannot
// both release it.
func (s *Store) SetQuarantineStatus(ctx context.Context, id string, status QuarantineStatus, by string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("store: set quarantine status: %w", err)
	}
	switch status {
	case Released, Deleted, Expired:
	default:
		return fmt.Errorf("store: set quarantine status of %s: %w: status %q (want released, deleted or expired)", id, ErrInvalid, status)
	}
	if err := checkText("by", by); err != nil {
		return fmt.Errorf("store: set quarantine status of %s: %w", id, err)
	}
	if err := s.b.setQuarantineStatus(ctx, id, status, by, stamp(time.Now())); err != nil {
		return fmt.Errorf("store: set quarantine status of %s: %w", id, err)
	}
	return nil
}

// ExpiredQuarantine returns up to limit (0: all) held items whose Expires
// is set and not after now, earliest expiry first.
func (s *Store) ExpiredQuarantine(ctx context.Context, now time.Time, limit int) ([]QuarantineItem, error) {
	if limit < 0 {
		return nil, fmt.Errorf("store: expired quarantine: %w: negative limit", ErrInvalid)
	}
	items, err := s.b.expiredQuarantine(ctx, stamp(now), limit)
	if err != nil {
		return nil, fmt.Errorf("store: expired quarantine: %w", err)
	}
	return items, nil
}

// Enqueue adds a message for the relay and returns its ID. Status is set
// to Queued, Created to now, and a zero NextAttempt to now.
func (s *Store) Enqueue(ctx context.Context, item OutboxItem) (string, error) {
	if err := checkOutboxItem(&item); err != nil {
		return "", fmt.Errorf("store: enqueue: %w", err)
	}
	now := stamp(time.Now())
	item.ID = newID()
	item.Created = now
	item.Status = Queued
	item.Data = slices.Clone(item.Data)
	if item.NextAttempt.IsZero() {
		item.NextAttempt = now
	}
	item.NextAttempt = stamp(item.NextAttempt)
	if err := s.b.enqueue(ctx, item); err != nil {
		return "", fmt.Errorf("store: enqueue: %w", err)
	}
	return item.ID, nil
}

// Claim returns up to limit queued items due at now, earliest due first,
// and moves their NextAttempt to now+lease, so that other claimers — other
// goroutines, processes or hosts — do not get them until the lease runs
// out. The claimer then calls Done, Retry or Fail for each; an item whose
// claimer died is claimed again after the lease.
func (s *Store) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]OutboxItem, error) {
	if lease <= 0 {
		return nil, fmt.Errorf("store: claim: %w: lease %v is not positive", ErrInvalid, lease)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("store: claim: %w: limit %d is not positive", ErrInvalid, limit)
	}
	now = stamp(now)
	items, err := s.b.claim(ctx, now, stamp(now.Add(lease)), limit)
	if err != nil {
		return nil, fmt.Errorf("store: claim: %w", err)
	}
	return items, nil
}

// Done removes item id: it was delivered.
func (s *Store) Done(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("store: outbox done: %w", err)
	}
	if err := s.b.done(ctx, id); err != nil {
		return fmt.Errorf("store: outbox done %s: %w", id, err)
	}
	return nil
}

// Retry records a failed attempt of item id (Attempts+1, LastError) and
// schedules the next one; a Failed item becomes Queued again.
func (s *Store) Retry(ctx context.Context, id string, next time.Time, lastErr string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("store: outbox retry: %w", err)
	}
	if next.IsZero() {
		return fmt.Errorf("store: outbox retry %s: %w: no next attempt time", id, ErrInvalid)
	}
	lastErr = cleanText(lastErr)
	if err := s.b.retry(ctx, id, stamp(next), lastErr); err != nil {
		return fmt.Errorf("store: outbox retry %s: %w", id, err)
	}
	return nil
}

// Fail marks item id as permanently failed; it is kept for the admin.
func (s *Store) Fail(ctx context.Context, id string, lastErr string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("store: outbox fail: %w", err)
	}
	lastErr = cleanText(lastErr)
	if err := s.b.fail(ctx, id, lastErr); err != nil {
		return fmt.Errorf("store: outbox fail %s: %w", id, err)
	}
	return nil
}

// ListOutbox returns up to limit (0: all) items with status ("" for any),
// oldest first.
func (s *Store) ListOutbox(ctx context.Context, status OutboxStatus, limit int) ([]OutboxItem, error) {
	switch status {
	case "", Queued, Failed:
	default:
		return nil, fmt.Errorf("store: list outbox: %w: status %q", ErrInvalid, status)
	}
	if limit < 0 {
		return nil, fmt.Errorf("store: list outbox: %w: negative limit", ErrInvalid)
	}
	items, err := s.b.listOutbox(ctx, status, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list outbox: %w", err)
	}
	return items, nil
}

// Counts are the sizes of the queues, for metrics.
type Counts struct {
	QuarantineHeld  int64 // held messages
	QuarantineBytes int64 // bytes of held messages
	OutboxQueued    int64 // reports waiting for the relay
	OutboxFailed    int64 // reports the relay refused for good
}

// Counts returns the sizes of the quarantine and the outbox.
func (s *Store) Counts(ctx context.Context) (Counts, error) {
	c, err := s.b.counts(ctx)
	if err != nil {
		return c, fmt.Errorf("store: counts: %w", err)
	}
	return c, nil
}
