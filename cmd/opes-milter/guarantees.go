package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/internal/admin"
	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/quarantine"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
	"github.com/opesmilter/opes-milter/opes/ndr"
	"github.com/opesmilter/opes-milter/policy"
)

// guarantees holds what the OPES guarantees need beyond the processor:
// the store (preferences, quarantine, report outbox), the audit log, the
// report worker and the quarantine manager. They are opened once at start
// and keep running across reloads; changing them needs a restart.
type guarantees struct {
	store    *store.Store
	audit    *audit.Log
	reports  *ndr.Worker
	manager  *quarantine.Manager
	tokens   *admin.Tokens
	ndrCfg   opes.NDRConfig
	quarMode string
	expire   time.Duration

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// openGuarantees opens the store and the audit log and starts the report
// and expiry workers.
func openGuarantees(cfg *policy.Config, log *slog.Logger) (*guarantees, error) {
	g := &guarantees{quarMode: cfg.Quarantine.Mode, expire: cfg.Quarantine.Expire}
	ok := false
	defer func() {
		if !ok {
			g.close()
		}
	}()
	host := cfg.NDR.Hostname
	if host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("host name for reports: %w ([ndr] hostname)", err)
		}
		host = h
	}
	if cfg.Audit.Log != "" {
		al, err := audit.Open(cfg.Audit.Log)
		if err != nil {
			return nil, err
		}
		g.audit = al
	}
	if cfg.Admin.TokenFile != "" {
		t, err := admin.LoadTokens(cfg.Admin.TokenFile)
		if err != nil {
			return nil, err
		}
		g.tokens = t
	}
	if cfg.Store.Backend != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := store.Open(ctx, cfg.Store)
		cancel()
		if err != nil {
			return nil, err
		}
		g.store = st
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	if cfg.NDR.Relay != "" && g.store != nil {
		g.ndrCfg = opes.NDRConfig{Hostname: host, From: cfg.NDR.From}
		g.reports = &ndr.Worker{
			Outbox:  g.store,
			Sender:  &ndr.Relay{Addr: cfg.NDR.Relay, HeloName: host, Timeout: 2 * time.Minute},
			Log:     log,
			MaxAge:  cfg.NDR.MaxAge,
			Backoff: ndr.Backoff{},
			Audit:   g.auditFunc(log),
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := g.reports.Run(ctx); err != nil {
				log.Error("opes-milter: report worker stopped", "err", err)
			}
		}()
	}
	if g.store != nil {
		helo := cfg.Quarantine.ReleaseHelo
		if helo == "" {
			helo = host
		}
		g.manager = &quarantine.Manager{Store: g.store, System: cfg.Policy.System, Hostname: host, From: cfg.NDR.From, Log: log}
		if cfg.Quarantine.ReleaseRelay != "" {
			g.manager.Relay = &ndr.Relay{Addr: cfg.Quarantine.ReleaseRelay, HeloName: helo, Timeout: 2 * time.Minute}
		}
		if g.reports != nil {
			g.manager.Reports = g.reports
		}
		if g.audit != nil {
			g.manager.Audit = g.audit
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.manager.Run(ctx, 10*time.Minute)
		}()
	}
	ok = true
	return g, nil
}

func (g *guarantees) auditFunc(log *slog.Logger) func(kind, traceID, detail string) {
	return func(kind, traceID, detail string) {
		if g.audit == nil {
			return
		}
		if err := g.audit.Record(audit.Event{Kind: kind, TraceID: traceID, Actor: "ndr", Detail: map[string]string{"detail": detail}}); err != nil {
			log.Error("opes-milter: audit log write failed", "err", err)
		}
	}
}

// deps are what services that send mail need (builtin.Deps).
func (g *guarantees) deps(log *slog.Logger) builtin.Deps {
	d := builtin.Deps{Hostname: g.ndrCfg.Hostname, From: g.ndrCfg.From, Log: log}
	if g.reports != nil {
		d.Submitter = g.reports
	}
	return d
}

// options are the processor options for the running guarantees.
func (g *guarantees) options() []opes.Option {
	var opts []opes.Option
	if g.store != nil {
		opts = append(opts, opes.WithPreferences(g.store))
		if g.quarMode != "mta" {
			opts = append(opts, opes.WithQuarantineStore(g.store, opes.QuarantineConfig{KeepInMTA: g.quarMode == "both", Expire: g.expire}))
		}
	}
	if g.audit != nil {
		opts = append(opts, opes.WithAudit(g.audit))
	}
	if g.reports != nil {
		opts = append(opts, opes.WithNDR(g.reports, g.ndrCfg))
	}
	return opts
}

// adminOptions fills the admin handler's parts that exist; an unset part
// answers "not configured".
func (g *guarantees) adminOptions(o *admin.Options) {
	o.Tokens = g.tokens
	if g.store != nil {
		o.Preferences, o.Quarantine, o.Outbox = g.store, g.store, g.store
		o.Releaser = g.manager
	}
	if g.audit != nil {
		o.Audit = g.audit
	}
}

// reopen follows log rotation and token changes (SIGHUP).
func (g *guarantees) reopen(log *slog.Logger) {
	if g.audit != nil {
		if err := g.audit.Reopen(); err != nil {
			log.Error("opes-milter: reopen audit log", "err", err)
		}
	}
	if g.tokens != nil {
		if err := g.tokens.Reload(); err != nil {
			log.Error("opes-milter: reload admin tokens; keeping the old ones", "err", err)
		}
	}
}

// close stops the workers and closes the store and the audit log.
func (g *guarantees) close() {
	if g.cancel != nil {
		g.cancel()
	}
	g.wg.Wait()
	if g.store != nil {
		_ = g.store.Close()
	}
	if g.audit != nil {
		_ = g.audit.Close()
	}
}
