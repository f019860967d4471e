// Command opes-callout is an OPES callout server: it hosts the services
// of an opes-milter policy file and serves them over OCP Core (RFC 4037)
// with the OSMTP profile to OPES processors, whose policies name them
// with kind = "callout".
//
//	opes-callout -config FILE [-listen ADDR] [-tls-cert FILE -tls-key FILE [-client-ca FILE]] [-metrics-listen ADDR]
//
// Every [[service]] of the file is served under its name; [system],
// [[rule]] and the other tables are checked but not used. A listener off
// loopback requires TLS (RFC 3836 §3.4) unless -insecure-off-loopback is
// given; -client-ca requires and verifies client certificates (mutual
// TLS). SIGHUP reloads the file: new transactions run the new services
// (on connections opened before too, when a service still reads the same
// parts); a file with an error is refused and the running services stay.
// -metrics-listen serves Prometheus metrics at /metrics on a loopback
// address. SIGINT and SIGTERM stop it: open connections are ended with CE
// and transactions in flight fail, so processors apply their failure
// policy (by default 451 4.3.0: the mail is retried, never lost).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opesmilter/opes-milter/internal/metrics"
	"github.com/opesmilter/opes-milter/internal/sysmon"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/policy"
)

func main() {
	// First of all, while nothing is open yet: a server woken per request
	// spends much of its CPU on the runtime's monitor thread otherwise.
	if err := sysmon.Exec(); err != nil {
		fmt.Fprintf(os.Stderr, "opes-callout: %v; going on without it\n", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil, hup))
}

// run serves until ctx ends, reloading the configuration on every value
// from reload. ready, when not nil, receives the listening address (for
// tests).
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- net.Addr, reload <-chan os.Signal) int {
	fs := flag.NewFlagSet("opes-callout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy file whose [[service]] blocks are served (required)")
	listen := fs.String("listen", "127.0.0.1:1344", "TCP address to listen on")
	cert := fs.String("tls-cert", "", "server certificate (PEM)")
	key := fs.String("tls-key", "", "server key (PEM)")
	clientCA := fs.String("client-ca", "", "CA that client certificates must chain to (mutual TLS)")
	insecure := fs.Bool("insecure-off-loopback", false, "allow plain TCP on a non-loopback address")
	metricsListen := fs.String("metrics-listen", "", "loopback host:port to serve Prometheus metrics on at /metrics; empty = off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if *config == "" {
		fmt.Fprintln(stderr, "opes-callout: -config is required")
		return 2
	}
	cfg, err := policy.Load(*config)
	if err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 1
	}
	mux, names, err := hostAll(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 1
	}
	m := metrics.NewCallout()
	live := &liveMux{metrics: m}
	live.cur.Store(&hostedConfig{mux: mux, cfg: cfg})
	if *metricsListen != "" {
		stopMetrics, err := serveMetrics(*metricsListen, m, log)
		if err != nil {
			fmt.Fprintf(stderr, "opes-callout: -metrics-listen: %v\n", err)
			return 2
		}
		defer stopMetrics()
	}
	tc, err := tlsConfig(*cert, *key, *clientCA)
	if err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 2
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "opes-callout: -listen %q: %v\n", *listen, err)
		return 2
	}
	if ip := net.ParseIP(host); tc == nil && !*insecure && (ip == nil || !ip.IsLoopback()) && host != "localhost" {
		fmt.Fprintf(stderr, "opes-callout: -listen %s is not loopback: give -tls-cert and -tls-key, or -insecure-off-loopback\n", *listen)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 1
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	log.Info("opes-callout: serving", "listen", ln.Addr().String(), "tls", tc != nil, "mutual_tls", *clientCA != "", "services", names)
	if ready != nil {
		ready <- ln.Addr()
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-reload:
				live.reload(*config, log)
			}
		}
	}()
	srv := &sdk.Server{Handler: live, Log: log, Body: cfg.Policy.Limits.Body, Metrics: m}
	if err := srv.Serve(ctx, ln); err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 1
	}
	log.Info("opes-callout: stopped")
	return 0
}

// hostAll hosts every [[service]] of cfg under its name.
func hostAll(cfg *policy.Config, log *slog.Logger) (sdk.Mux, []string, error) {
	mux := sdk.Mux{}
	var names []string
	for _, s := range cfg.Policy.Services {
		mux[s.Name] = sdk.Host(s.Impl, cfg.Policy.Limits.Body, log.With("service", s.Name))
		names = append(names, s.Name)
	}
	sort.Strings(names)
	if len(mux) == 0 {
		return nil, nil, fmt.Errorf("%s defines no [[service]] to serve", cfg.Source)
	}
	return mux, names, nil
}

// hostedConfig is a loaded configuration and the services it hosts.
type hostedConfig struct {
	mux sdk.Mux
	cfg *policy.Config
}

// liveMux is the Handler of the running configuration, swapped on reload.
type liveMux struct {
	cur     atomic.Pointer[hostedConfig]
	metrics *metrics.Callout
}

// Lookup implements sdk.Handler.
func (l *liveMux) Lookup(name string) sdk.Service { return l.cur.Load().mux[name] }

// reload loads path and serves its services from now on; on any error
// the running services stay.
func (l *liveMux) reload(path string, log *slog.Logger) {
	cfg, err := policy.Load(path)
	var mux sdk.Mux
	var names []string
	if err == nil {
		mux, names, err = hostAll(cfg, log)
	}
	l.metrics.Reloaded(err)
	if err != nil {
		log.Error("opes-callout: reload refused, keeping the running services", "err", err.Error())
		return
	}
	old := l.cur.Swap(&hostedConfig{mux: mux, cfg: cfg})
	log.Info("opes-callout: reloaded", "config", path, "services", names)
	retire(old.cfg, log)
}

// serveMetrics serves /metrics on addr, which must be loopback: the
// metrics name services and are not for the network. The returned
// function stops the listener.
func serveMetrics(addr string, m *metrics.Callout, log *slog.Logger) (func(), error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" {
		return nil, fmt.Errorf("%s is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("opes-callout: metrics listener failed", "err", err)
		}
	}()
	log.Info("opes-callout: metrics", "listen", ln.Addr().String())
	return func() { _ = hs.Close() }, nil
}

// retire releases the resources of replaced services (connection pools)
// once the transactions that may use them are over.
func retire(old *policy.Config, log *slog.Logger) {
	if n := opes.Retire(old.Policy.Services, opes.RetireAfter); n > 0 {
		log.Debug("opes-callout: retiring the replaced services", "services", n, "after", opes.RetireAfter.String())
	}
}

func tlsConfig(cert, key, clientCA string) (*tls.Config, error) {
	if cert == "" && key == "" {
		if clientCA != "" {
			return nil, errors.New("-client-ca needs -tls-cert and -tls-key")
		}
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{kp}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s holds no PEM certificate", clientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
