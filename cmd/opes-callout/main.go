// Command opes-callout is an OPES callout server: it hosts the services
// of an opes-milter policy file and serves them over OCP Core (RFC 4037)
// with the OSMTP profile to OPES processors, whose policies name them
// with kind = "callout".
//
//	opes-callout -config FILE [-listen ADDR] [-tls-cert FILE -tls-key FILE [-client-ca FILE]]
//
// Every [[service]] of the file is served under its name; [system],
// [[rule]] and the other tables are checked but not used. A listener off
// loopback requires TLS (RFC 3836 §3.4) unless -insecure-off-loopback is
// given; -client-ca requires and verifies client certificates (mutual
// TLS). SIGINT and SIGTERM stop it: open connections are ended with CE
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
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/policy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// run serves until ctx ends. ready, when not nil, receives the listening
// address (for tests).
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- net.Addr) int {
	fs := flag.NewFlagSet("opes-callout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy file whose [[service]] blocks are served (required)")
	listen := fs.String("listen", "127.0.0.1:1344", "TCP address to listen on")
	cert := fs.String("tls-cert", "", "server certificate (PEM)")
	key := fs.String("tls-key", "", "server key (PEM)")
	clientCA := fs.String("client-ca", "", "CA that client certificates must chain to (mutual TLS)")
	insecure := fs.Bool("insecure-off-loopback", false, "allow plain TCP on a non-loopback address")
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
	mux := sdk.Mux{}
	var names []string
	for _, s := range cfg.Policy.Services {
		mux[s.Name] = sdk.Host(s.Impl, cfg.Policy.Limits.Body, log.With("service", s.Name))
		names = append(names, s.Name)
	}
	sort.Strings(names)
	if len(mux) == 0 {
		fmt.Fprintf(stderr, "opes-callout: %s defines no [[service]] to serve\n", *config)
		return 1
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
	srv := &sdk.Server{Handler: mux, Log: log, Body: cfg.Policy.Limits.Body}
	if err := srv.Serve(ctx, ln); err != nil {
		fmt.Fprintf(stderr, "opes-callout: %v\n", err)
		return 1
	}
	log.Info("opes-callout: stopped")
	return 0
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
