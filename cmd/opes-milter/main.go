// Command opes-milter is the OPES processor daemon: a milter that Postfix
// (smtpd_milters) or Sendmail (INPUT_MAIL_FILTER) calls for every message.
//
//	opes-milter [-config FILE] [-listen SPEC] [-log-level LEVEL] [-log-format text|json]
//
// Without -config it runs the embedded default policy: every message gets
// the OPES trace fields, nothing is refused. SIGHUP reloads the config
// (validated first; on any error the running one stays), SIGTERM or
// SIGINT stops accepting and drains the sessions in flight.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/internal/admin"
	"github.com/opesmilter/opes-milter/internal/metrics"
	"github.com/opesmilter/opes-milter/internal/report"
	"github.com/opesmilter/opes-milter/internal/sockspec"
	"github.com/opesmilter/opes-milter/internal/sysmon"
	"github.com/opesmilter/opes-milter/milter"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
	"github.com/opesmilter/opes-milter/opes/links"
	"github.com/opesmilter/opes-milter/policy"
)

func main() {
	// First of all, while nothing is open yet: a daemon woken per packet
	// spends a third of its CPU on the runtime's monitor thread otherwise.
	if err := sysmon.Exec(); err != nil {
		fmt.Fprintf(os.Stderr, "opes-milter: %v; going on without it\n", err)
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

type flags struct {
	config, listen, logLevel, logFormat, socketMode, cpuProfile string
	memProfile                                                  string
	adminListen                                                 optionalString
}

// optionalString is a flag that knows whether it was given, so that
// -admin-listen "" can switch the listener off.
type optionalString struct {
	value string
	set   bool
}

func (o *optionalString) String() string     { return o.value }
func (o *optionalString) Set(v string) error { o.value, o.set = v, true; return nil }

func run(args []string, stderr io.Writer) int {
	var f flags
	fs := flag.NewFlagSet("opes-milter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "policy file (TOML); empty = embedded default policy")
	fs.StringVar(&f.listen, "listen", "", "socket, overriding the config: inet:PORT@HOST, inet6:PORT@[ADDR], unix:/path or local:/path")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.socketMode, "socket-mode", "", "permissions of a unix socket, overriding [milter] socket_mode (default 0660)")
	fs.Var(&f.adminListen, "admin-listen", "admin HTTP listener host:port, overriding [admin] listen; \"\" = off")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile to this file until exit (for performance reports)")
	fs.StringVar(&f.memProfile, "memprofile", "", "write an allocation profile to this file at exit (for performance reports)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if f.memProfile != "" {
		defer writeMemProfile(f.memProfile, stderr)
	}
	if f.cpuProfile != "" {
		stop, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "opes-milter:", err)
			return 2
		}
		defer stop()
	}
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "opes-milter:", err)
		return 2
	}
	// go-milter reports protocol trouble through a package hook.
	gomilter.LogWarning = func(format string, v ...any) { log.Warn("go-milter: " + fmt.Sprintf(format, v...)) }

	cfg, err := loadConfig(f.config, builtin.Deps{})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if f.adminListen.set {
		cfg.Admin.Listen = f.adminListen.value
	}
	mx := metrics.New()
	// Record files are opened once; SIGHUP reopens them (log rotation).
	// Changed paths take effect on restart.
	reportErr := func(err error) { log.Error("opes-milter: transaction record", "err", err) }
	var reporters report.Multi
	var files []*report.Writer
	for _, f := range []struct {
		path      string
		incidents bool
	}{{cfg.Report.Transactions, false}, {cfg.Report.Incidents, true}} {
		if f.path == "" {
			continue
		}
		w, err := report.Open(f.path, reportErr)
		if err != nil {
			fmt.Fprintln(stderr, "opes-milter:", err)
			return 1
		}
		defer w.Close()
		files = append(files, w)
		if f.incidents {
			reporters = append(reporters, report.Incidents{Next: w})
		} else {
			reporters = append(reporters, w)
		}
	}
	if cfg.Report.Webhook != "" {
		wh := report.NewWebhook(cfg.Report.Webhook, cfg.Report.WebhookTimeout, reportErr)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Report.WebhookTimeout)
			defer cancel()
			if err := wh.Close(ctx); err != nil {
				log.Warn("opes-milter: incident webhook", "err", err)
			}
		}()
		reporters = append(reporters, report.Incidents{Next: wh})
	}
	if cfg.Report.Syslog != "" {
		sl, err := report.NewSyslog(report.SyslogConfig{Address: cfg.Report.Syslog, Facility: cfg.Report.SyslogFacility,
			Tag: cfg.Report.SyslogTag, Hostname: cfg.Report.SyslogHostname, MaxSize: cfg.Report.SyslogMaxSize}, reportErr)
		if err != nil {
			fmt.Fprintln(stderr, "opes-milter:", err)
			return 1
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := sl.Close(ctx); err != nil {
				log.Warn("opes-milter: syslog incidents", "err", err)
			}
		}()
		reporters = append(reporters, report.Incidents{Next: sl})
	}
	g, err := openGuarantees(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "opes-milter:", err)
		return 1
	}
	defer g.close()
	deps := g.deps(log)
	if f.config != "" && deps.Submitter != nil {
		// Services that send mail (notify) get the report outbox, which
		// exists only now that the store is open: build them again.
		if cfg, err = loadConfig(f.config, deps); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if f.adminListen.set {
			cfg.Admin.Listen = f.adminListen.value
		}
	}
	if g.store != nil {
		mx.WatchQueues(func(ctx context.Context) (metrics.QueueCounts, error) {
			c, err := g.store.Counts(ctx)
			return metrics.QueueCounts{QuarantineHeld: c.QuarantineHeld, QuarantineBytes: c.QuarantineBytes,
				OutboxQueued: c.OutboxQueued, OutboxFailed: c.OutboxFailed}, err
		})
	}
	procOpts := func(c *policy.Config) []opes.Option {
		opts := append([]opes.Option{opes.WithMetrics(mx)}, g.options()...)
		if len(reporters) > 0 {
			// The address level of the running file applies: like the
			// record files, it changes on restart.
			rep := report.Redact{Level: report.Addresses(cfg.Report.Addresses), Next: reporters}
			opts = append(opts, opes.WithReporter(rep, c.Report.MeasureSize))
		}
		return opts
	}
	proc, err := opes.NewProcessor(cfg.Policy, log, procOpts(cfg)...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.Source, err)
		return 1
	}
	listen := cfg.Milter.Listen
	if f.listen != "" {
		listen = f.listen
	}
	mode := cfg.Milter.SocketMode
	if f.socketMode != "" {
		m, err := strconv.ParseUint(f.socketMode, 8, 32)
		if err != nil || m&^0o777 != 0 {
			fmt.Fprintf(stderr, "opes-milter: -socket-mode %q is not an octal mode\n", f.socketMode)
			return 2
		}
		mode = os.FileMode(m)
	}
	ln, err := listenSpec(listen, mode, cfg.Milter.SocketGroup)
	if err != nil {
		fmt.Fprintln(stderr, "opes-milter:", err)
		return 1
	}
	srv := milter.NewServer(proc, milter.Options{ReadTimeout: cfg.Milter.ReadTimeout, WriteTimeout: cfg.Milter.WriteTimeout, Logger: log, Metrics: mx})
	var stopping atomic.Bool
	if cfg.Admin.Listen != "" {
		ready := func() error {
			if stopping.Load() {
				return errors.New("shutting down")
			}
			return nil
		}
		ao := admin.Options{Ready: ready, Metrics: mx.Handler(), Log: log,
			Policy: func() *opes.Policy { return srv.Processor().Policy() }}
		g.adminOptions(&ao)
		if cfg.Report.Transactions != "" {
			ao.Trace = admin.TraceFile{Path: cfg.Report.Transactions}
		}
		stopAdmin, err := serveAdmin(cfg.Admin.Listen, withAttachments(admin.New(ao), srv), log)
		if err != nil {
			_ = ln.Close()
			fmt.Fprintln(stderr, "opes-milter:", err)
			return 1
		}
		defer stopAdmin()
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	for _, w := range cfg.Warnings() {
		log.Warn("opes-milter: " + w)
	}
	log.Info("opes-milter: listening", "listen", listen, "config", cfg.Source, "system_uri", cfg.Policy.System.URI,
		"needs", cfg.Policy.Needs().Stages.String())

	for {
		select {
		case err := <-served:
			if err != nil {
				log.Error("opes-milter: serve", "err", err)
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				for _, w := range files {
					if err := w.Reopen(); err != nil {
						log.Error("opes-milter: reopen transaction records", "err", err)
					}
				}
				g.reopen(log)
				mx.Reloaded(reload(srv, f.config, listen, cfg, deps, log, procOpts))
				continue
			}
			stopping.Store(true)
			log.Info("opes-milter: shutting down, draining sessions", "signal", sig.String(), "timeout", cfg.Milter.ShutdownTimeout.String())
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Milter.ShutdownTimeout)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				log.Warn("opes-milter: drain timed out; closing remaining sessions", "err", err)
				_ = srv.Close()
			}
			if path, ok := unixPath(listen); ok {
				_ = os.Remove(path)
			}
			log.Info("opes-milter: stopped")
			return 0
		}
	}
}

// reload validates the file and swaps the processor; on any error the
// running policy stays.
func reload(srv *milter.Server, path, listen string, old *policy.Config, deps builtin.Deps, log *slog.Logger, procOpts func(*policy.Config) []opes.Option) error {
	cfg, err := loadConfig(path, deps)
	if err == nil {
		var proc *opes.Processor
		if proc, err = opes.NewProcessor(cfg.Policy, log, procOpts(cfg)...); err == nil {
			retired := srv.Processor()
			srv.SetProcessor(proc)
			retire(retired, log)
			if (cfg.Milter.Listen != old.Milter.Listen && listen == old.Milter.Listen) || cfg.Admin != old.Admin ||
				cfg.Store != old.Store || cfg.NDR != old.NDR || cfg.Quarantine != old.Quarantine || cfg.Audit != old.Audit ||
				cfg.Report.Transactions != old.Report.Transactions || cfg.Report.Addresses != old.Report.Addresses {
				log.Warn("opes-milter: reload: listen sockets, record and audit files, the store, quarantine and report settings change only on restart",
					"milter", cfg.Milter.Listen, "admin", cfg.Admin.Listen, "transactions", cfg.Report.Transactions)
			}
			log.Info("opes-milter: reloaded", "config", cfg.Source, "needs", cfg.Policy.Needs().Stages.String())
			return nil
		}
	}
	log.Error("opes-milter: reload refused, keeping the running policy", "err", err.Error())
	return err
}

// retire releases the resources of a replaced policy's services once the
// sessions that may still use them are over.
func retire(old *opes.Processor, log *slog.Logger) {
	if old == nil {
		return
	}
	if n := opes.Retire(old.Policy().Services, opes.RetireAfter); n > 0 {
		log.Debug("opes-milter: retiring the replaced policy's services", "services", n, "after", opes.RetireAfter.String())
	}
}

// withAttachments serves the links service's stored attachments
// (links.MountPath) from the running policy, in front of the admin handler.
func withAttachments(h http.Handler, srv *milter.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+links.MountPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, s := range srv.Processor().Policy().Services {
			if l, ok := s.Impl.(*links.Service); ok {
				l.Handler().ServeHTTP(w, r)
				return
			}
		}
		http.NotFound(w, r)
	}))
	mux.Handle("/", h)
	return mux
}

// serveAdmin starts the admin HTTP listener.
func serveAdmin(addr string, h http.Handler, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("opes-milter: admin listener", "err", err)
		}
	}()
	log.Info("opes-milter: admin listening", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

func loadConfig(path string, deps builtin.Deps) (*policy.Config, error) {
	if path == "" {
		return policy.Default(), nil
	}
	return policy.LoadWith(path, deps)
}

func listenSpec(spec string, mode os.FileMode, group string) (net.Listener, error) {
	network, addr, err := sockspec.Parse(spec)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := removeStaleSocket(addr); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", spec, err)
	}
	if network == "unix" {
		if err := socketPermissions(addr, mode, group); err != nil {
			_ = ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// removeStaleSocket removes a socket a dead daemon left behind. A socket
// someone still answers on belongs to a running daemon: taking it over
// would cut that daemon off from its MTA, so we refuse to start. Anything
// that is not a socket is never removed.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("socket %s: exists and is not a socket; not removing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return fmt.Errorf("socket %s: another process is listening on it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

func socketPermissions(path string, mode os.FileMode, group string) error {
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("socket group %q: %w", group, err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("socket group %q: gid %q", group, g.Gid)
		}
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

func unixPath(spec string) (string, bool) {
	network, addr, err := sockspec.Parse(spec)
	return addr, err == nil && network == "unix"
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}

// writeMemProfile writes the allocations since start (pprof "allocs").
func writeMemProfile(path string, stderr io.Writer) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "opes-milter: memory profile:", err)
	}
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errors.New("log format must be text or json")
}
