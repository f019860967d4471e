package ndr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/internal/store"
)

// Outbox is the durable queue the Worker drains; *store.Store implements
// it. Claim must hand each due item to one caller only, hiding it from
// other claimers until the lease runs out, so several workers (or hosts
// sharing a PostgreSQL store) can drain the same outbox.
type Outbox interface {
	Enqueue(ctx context.Context, it store.OutboxItem) (string, error)
	Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]store.OutboxItem, error)
	Done(ctx context.Context, id string) error
	Retry(ctx context.Context, id string, next time.Time, lastErr string) error
	Fail(ctx context.Context, id string, lastErr string) error
}

// Sender submits one message; *Relay implements it.
type Sender interface {
	Send(ctx context.Context, from string, to []string, data []byte) error
}

// Backoff is the delay before each retry: Initial after the first failed
// attempt, doubling up to Max. The zero value means 1 minute to 1 hour.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay is the wait after the given number of failed attempts (1 = the
// first failure).
func (b Backoff) Delay(failures int) time.Duration {
	initial, max := b.Initial, b.Max
	if initial <= 0 {
		initial = time.Minute
	}
	if max <= 0 {
		max = time.Hour
	}
	if max < initial {
		max = initial
	}
	d := initial
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Defaults of the Worker's zero-valued fields.
const (
	DefaultMaxAge   = 5 * 24 * time.Hour // RFC 5321 §4.5.4.1: give up after 4-5 days
	DefaultLease    = 10 * time.Minute
	DefaultBatch    = 16
	DefaultInterval = 30 * time.Second
)

// Audit kinds the Worker reports.
const (
	AuditQueued = "ndr-queued"
	AuditSent   = "ndr-sent"
	AuditFailed = "ndr-failed"
)

// Worker queues reports durably and delivers them. Fields are read-only
// once Run or Submit has been called; the zero values of the optional ones
// work.
type Worker struct {
	Outbox Outbox // required
	Sender Sender // required
	Log    *slog.Logger
	// Backoff spaces the retries after temporary failures.
	Backoff Backoff
	// MaxAge is how long a report is retried; after it the report is
	// failed (kept for the admin). Default DefaultMaxAge.
	MaxAge time.Duration
	// Audit, when set, is told of every queued, sent and failed report.
	Audit func(kind, traceID, detail string)
	// Lease is how long a claimed item is hidden from other workers. A
	// send is cut off (as a temporary failure) after three quarters of it,
	// so a slow relay cannot make two workers send the same report.
	// Default DefaultLease.
	Lease time.Duration
	// Batch is the most items one RunOnce claims. Default DefaultBatch.
	Batch int
	// Interval is how often Run looks for due items when nothing wakes it.
	// Default DefaultInterval.
	Interval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time

	once sync.Once
	wake chan struct{}
}

func (w *Worker) init() {
	w.once.Do(func() { w.wake = make(chan struct{}, 1) })
}

func (w *Worker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *Worker) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (w *Worker) audit(kind, traceID, detail string) {
	if w.Audit != nil {
		w.Audit(kind, traceID, detail)
	}
}

// Submit queues a report (data from Build) for the original sender to, as
// returned by ReturnPath, with MAIL FROM:<>. It returns only once the
// outbox has stored it durably: the caller must not let the mail's fate
// become final (answer the MTA, delete recipients) before Submit
// succeeded, and should tempfail the message when it fails.
func (w *Worker) Submit(ctx context.Context, traceID string, data []byte, to string) error {
	w.init()
	to = ReturnPath(to)
	if to == "" {
		return errors.New("ndr: submit: null reverse-path gets no report")
	}
	if len(data) == 0 {
		return errors.New("ndr: submit: empty report")
	}
	now := w.now()
	id, err := w.Outbox.Enqueue(ctx, store.OutboxItem{
		TraceID:     traceID,
		Sender:      "",
		Recipients:  []string{to},
		Data:        data,
		NextAttempt: now,
		Created:     now,
		Status:      store.Queued,
	})
	if err != nil {
		return fmt.Errorf("ndr: submit report for trace %s: %w", traceID, err)
	}
	w.log().Info("ndr queued", "trace_id", traceID, "outbox_id", id)
	w.audit(AuditQueued, traceID, "outbox id "+id)
	select { // wake Run; a pending wake-up is as good as a new one
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// Queue queues the report r for the recipients that need one (Needed):
// it builds the report and submits it, and returns how many recipients it
// covers — 0, and no report, when none needs one (null reverse-path,
// NOTIFY without FAILURE); the caller should log those. Like Submit, it
// returns only once the report is stored.
func (w *Worker) Queue(ctx context.Context, r Report) (int, error) {
	r.Recipients = Needed(r.ReversePath, r.Recipients)
	if len(r.Recipients) == 0 {
		return 0, nil
	}
	data, err := Build(r)
	if err != nil {
		return 0, err
	}
	if err := w.Submit(ctx, r.TraceID, data, r.ReversePath); err != nil {
		return 0, err
	}
	return len(r.Recipients), nil
}

// RunOnce claims the items that are due and tries each once: Done when
// the relay took it, Retry after a temporary failure (with back-off), Fail
// when the relay refused it permanently or it is older than MaxAge. A
// failed report is the double-bounce case: nothing more is sent, the item
// stays in the outbox as failed for the admin. err reports outbox
// failures and cancellation; an item whose outcome could not be recorded
// comes back when its lease runs out.
func (w *Worker) RunOnce(ctx context.Context) (sent, retried, failed int, err error) {
	w.init()
	lease := w.Lease
	if lease <= 0 {
		lease = DefaultLease
	}
	batch := w.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	items, err := w.Outbox.Claim(ctx, w.now(), lease, batch)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("ndr: claim outbox items: %w", err)
	}
	var errs []error
	for _, it := range items {
		if ctx.Err() != nil {
			// Unsent items come back when their lease runs out.
			errs = append(errs, ctx.Err())
			break
		}
		outcome, oerr := w.deliver(ctx, it, lease)
		switch outcome {
		case outcomeSent:
			sent++
		case outcomeRetried:
			retried++
		case outcomeFailed:
			failed++
		}
		if oerr != nil {
			errs = append(errs, oerr)
		}
	}
	return sent, retried, failed, errors.Join(errs...)
}

type outcome int

const (
	outcomeNone outcome = iota
	outcomeSent
	outcomeRetried
	outcomeFailed
)

func (w *Worker) deliver(ctx context.Context, it store.OutboxItem, lease time.Duration) (outcome, error) {
	log := w.log().With("trace_id", it.TraceID, "outbox_id", it.ID)
	// The send must end well inside the lease, or another worker could
	// claim the item while it is still being sent and send it twice.
	sendCtx, cancel := context.WithTimeout(ctx, lease*3/4)
	sendErr := w.send(sendCtx, it)
	cancel()
	if sendErr == nil {
		if err := w.Outbox.Done(ctx, it.ID); err != nil {
			// The relay has it; the lease brings it back and it may be
			// sent twice — better than lost.
			log.Error("ndr sent but not marked done", "err", err)
			return outcomeSent, fmt.Errorf("ndr: mark %s done: %w", it.ID, err)
		}
		log.Info("ndr sent", "attempts", it.Attempts+1)
		w.audit(AuditSent, it.TraceID, "outbox id "+it.ID)
		return outcomeSent, nil
	}
	if ctx.Err() != nil {
		// Shutting down: not the relay's fault, leave it to the lease.
		return outcomeNone, ctx.Err()
	}
	msg := sendErr.Error()
	age := w.now().Sub(it.Created)
	maxAge := w.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	var reason string
	switch {
	case IsPermanent(sendErr):
		reason = "refused by the relay: " + msg
	case !it.Created.IsZero() && age >= maxAge:
		reason = fmt.Sprintf("not delivered after %s: %s", age.Round(time.Minute), msg)
	default:
		next := w.now().Add(w.Backoff.Delay(it.Attempts + 1))
		if err := w.Outbox.Retry(ctx, it.ID, next, msg); err != nil {
			log.Error("ndr retry not recorded", "err", err, "send_err", msg)
			return outcomeRetried, fmt.Errorf("ndr: record retry of %s: %w", it.ID, err)
		}
		log.Warn("ndr delayed", "err", msg, "attempts", it.Attempts+1, "next", next)
		return outcomeRetried, nil
	}
	if err := w.Outbox.Fail(ctx, it.ID, reason); err != nil {
		log.Error("ndr failure not recorded", "err", err, "reason", reason)
		return outcomeFailed, fmt.Errorf("ndr: record failure of %s: %w", it.ID, err)
	}
	log.Error("ndr failed, kept in the outbox", "reason", reason, "attempts", it.Attempts+1)
	w.audit(AuditFailed, it.TraceID, reason)
	return outcomeFailed, nil
}

func (w *Worker) send(ctx context.Context, it store.OutboxItem) error {
	if len(it.Recipients) == 0 || len(it.Data) == 0 {
		return &SendError{Step: "rcpt", Err: errors.New("outbox item without recipients or data"), Permanent: true}
	}
	return w.Sender.Send(ctx, it.Sender, it.Recipients, it.Data)
}

// Run drains the outbox until ctx is done: at once, whenever Submit
// queued something, every Interval, and again without waiting while a
// claim came back full. Outbox errors are logged and retried at the next
// round. It returns nil when ctx is cancelled.
func (w *Worker) Run(ctx context.Context) error {
	w.init()
	interval := w.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	batch := w.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-w.wake:
		}
		sent, retried, failed, err := w.RunOnce(ctx)
		if err != nil && ctx.Err() == nil {
			w.log().Error("ndr outbox round", "err", err)
		}
		next := interval
		if err == nil && sent+retried+failed >= batch {
			next = 0 // more may be due
		}
		timer.Reset(next)
	}
}
