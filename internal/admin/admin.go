// Package admin is the daemon's HTTP admin listener: liveness, readiness,
// the Prometheus metrics, the OPES system's disclosure page (PROFILE §6,
// RFC 3914, RFC 4902 §5) and the token-authenticated admin API for
// out-of-band bypass preferences, the quarantine, the report outbox and
// trace lookups. It binds loopback unless the configuration explicitly
// allows otherwise (policy [admin]).
package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
)

// Preferences is the store of recipients' out-of-band bypass entries.
type Preferences interface {
	AddPreference(ctx context.Context, p store.Preference) (store.Preference, error)
	ListPreferences(ctx context.Context, recipientFilter string) ([]store.Preference, error)
	RemovePreference(ctx context.Context, id string) error
}

// Quarantine is the read side of the quarantine store.
type Quarantine interface {
	ListQuarantine(ctx context.Context, f store.QuarantineFilter) ([]store.QuarantineItem, error)
	GetQuarantine(ctx context.Context, id string) (store.QuarantineItem, error)
	OpenQuarantine(ctx context.Context, id string) (io.ReadCloser, error)
}

// Releaser releases (re-injects) or deletes a quarantined message. It
// records the audit event itself: it knows what it actually did.
type Releaser interface {
	Release(ctx context.Context, id, actor string) error
	Delete(ctx context.Context, id, actor string) error
}

// Outbox lists the reports waiting for the relay.
type Outbox interface {
	ListOutbox(ctx context.Context, status store.OutboxStatus, limit int) ([]store.OutboxItem, error)
}

// TraceLookup finds the transaction records of a trace id.
type TraceLookup interface {
	Lookup(ctx context.Context, traceID string) ([]json.RawMessage, error)
}

// Auditor is the append-only audit log.
type Auditor interface {
	Record(audit.Event) error
}

// Options configures the handler. Zero fields switch their part off:
// without Policy there is no disclosure page, without Tokens the API and
// the trace lookup answer 403, and an API whose backend is nil answers
// 501.
type Options struct {
	// Ready reports nil when a configuration is loaded and the milter
	// socket accepts; nil means always ready.
	Ready func() error
	// Metrics serves /metrics; nil: no /metrics.
	Metrics http.Handler
	// Policy returns the running policy; the page follows reloads.
	Policy func() *opes.Policy
	// Tokens authenticates the API. nil disables the API: it is never
	// open without a token.
	Tokens *Tokens

	Preferences Preferences
	Quarantine  Quarantine
	Releaser    Releaser
	Outbox      Outbox
	Trace       TraceLookup
	// Audit receives preference changes, trace lookups and reads of
	// quarantined messages. Required when Preferences is set: changes
	// nobody can account for are refused.
	Audit Auditor
	// Log receives what the API cannot tell its caller (audit failures
	// after a change); nil: slog.Default().
	Log *slog.Logger
}

// Handler serves /healthz (the process answers), /readyz (ready reports
// nil: a configuration is loaded and the milter socket accepts) and
// /metrics. It is New without the disclosure page and the API.
func Handler(ready func() error, metrics http.Handler) http.Handler {
	return New(Options{Ready: ready, Metrics: metrics})
}

// New builds the admin handler.
func New(o Options) http.Handler {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &server{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready:", err)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	s.routeAPI(mux)
	if o.Policy != nil {
		// The page's path follows the running system URI, which a reload
		// may change, so it is resolved per request, not registered.
		mux.HandleFunc("/", s.disclosure)
	}
	return mux
}

type server struct {
	o Options
}
