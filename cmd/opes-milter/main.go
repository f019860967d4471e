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
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/internal/sockspec"
	"github.com/opesmilter/opes-milter/milter"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/policy"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

type flags struct {
	config, listen, logLevel, logFormat, socketMode, cpuProfile string
}

func run(args []string, stderr io.Writer) int {
	var f flags
	fs := flag.NewFlagSet("opes-milter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "policy file (TOML); empty = embedded default policy")
	fs.StringVar(&f.listen, "listen", "", "socket, overriding the config: inet:PORT@HOST, inet6:PORT@[ADDR], unix:/path or local:/path")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.socketMode, "socket-mode", "0660", "permissions of a unix socket (the MTA's user must be able to write it)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile to this file until exit (for performance reports)")
	if err := fs.Parse(args); err != nil {
		return 2
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

	cfg, err := loadConfig(f.config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	proc, err := opes.NewProcessor(cfg.Policy, log)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cfg.Source, err)
		return 1
	}
	listen := cfg.Milter.Listen
	if f.listen != "" {
		listen = f.listen
	}
	ln, err := listenSpec(listen, f.socketMode)
	if err != nil {
		fmt.Fprintln(stderr, "opes-milter:", err)
		return 1
	}
	srv := milter.NewServer(proc, milter.Options{ReadTimeout: cfg.Milter.ReadTimeout, WriteTimeout: cfg.Milter.WriteTimeout, Logger: log})

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
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
				reload(srv, f.config, listen, cfg, log)
				continue
			}
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
func reload(srv *milter.Server, path, listen string, old *policy.Config, log *slog.Logger) {
	cfg, err := loadConfig(path)
	if err == nil {
		var proc *opes.Processor
		if proc, err = opes.NewProcessor(cfg.Policy, log); err == nil {
			srv.SetProcessor(proc)
			if cfg.Milter.Listen != old.Milter.Listen && listen == old.Milter.Listen {
				log.Warn("opes-milter: reload: the listen socket changes only on restart", "configured", cfg.Milter.Listen)
			}
			log.Info("opes-milter: reloaded", "config", cfg.Source, "needs", cfg.Policy.Needs().Stages.String())
			return
		}
	}
	log.Error("opes-milter: reload refused, keeping the running policy", "err", err.Error())
}

func loadConfig(path string) (*policy.Config, error) {
	if path == "" {
		return policy.Default(), nil
	}
	return policy.Load(path)
}

func listenSpec(spec, mode string) (net.Listener, error) {
	network, addr, err := sockspec.Parse(spec)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		// A socket left by a previous run that died would block us.
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(addr)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", spec, err)
	}
	if network == "unix" {
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("socket mode %q: %w", mode, err)
		}
		if err := os.Chmod(addr, os.FileMode(m)); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("chmod %s: %w", addr, err)
		}
	}
	return ln, nil
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
