// Package callout is the service kind that vectors work out to callout
// servers over OCP Core (RFC 4037) with the OSMTP profile (PROFILE §7):
// the OPES processor is the OCP client, one OCP transaction carries one
// SMTP transaction, and the callout's answers come back as the same
// verdicts and message changes local services produce.
//
// Options, under [service.options]:
//
//	servers = ["127.0.0.1:1344", "10.0.0.2:1344"]  # required; tried in order (failover)
//	service = "spam-check"       # required; the service's name at the callout server
//	stages = ["eom"]             # where the callout decides: connect, helo, mail, rcpt, headers, eom
//	parts = ["connect", "helo", "envelope", "headers", "body"]  # what may travel; also mail, rcpt, size
//	timeout = "20s"              # per stage, below the MTA's milter timeouts (at most 5m)
//	connect_timeout = "5s"       # TCP connect, TLS handshake and OCP start
//	keepalive = "30s"            # PQ/PA on idle connections; "0s" disables
//	max_connections = 4          # per server; transactions are multiplexed on them
//	max_body = 67108864          # largest replacement body accepted, octets
//	insecure_off_loopback = false  # allow plain TCP to a non-loopback server
//	[service.options.tls]        # TLS; required off loopback unless waived above
//	ca = "/etc/opes/callout-ca.pem"      # verify the server against this CA (else system roots)
//	cert = "/etc/opes/client.pem"        # client certificate for mutual TLS
//	key = "/etc/opes/client.key"
//	server_name = "callout.example.net"  # default: the host of the address
//	enabled = true               # TLS with system roots and no other key
//	[service.options.breaker]
//	failures = 5                 # consecutive failures that open the breaker
//	cool_down = "30s"            # how long an open breaker skips the server
//
// Only negotiated parts travel (RFC 4496 §4.3): the processor offers the
// parts the options allow, parts of the configured stages as adaptive
// (the callout answers them) and the others as informative; the callout
// server narrows the offer to what its service reads, so a service that
// reads the envelope and SIZE never receives the body. "size" makes the
// MTA send the body to the milter so the size is known, but the body
// still does not travel.
//
// Answers become verdicts: an SMTP-Error (validated: 4xx/5xx, enhanced
// code of the same class, printable ASCII, at most 512 octets) refuses
// the stage with that reply; Advice reject, tempfail, discard, quarantine
// and accept map to those verdict kinds (the processor then supplies the
// stage's default codes, with Reply-Text as the human text); rewritten
// MAIL and RCPT values, header changes and a replaced body are applied
// through the Transaction at the end of the message, all or nothing. An
// answer that breaks the profile ends the OCP transaction with TE 400 and
// is a failure, never a partial result. Header changes naming
// OPES-System, OPES-Via or OPES-Bypass are dropped: only the processor
// writes trace fields. Trace entries a callout returns (OPES-Via on AME)
// are syntax-checked and logged.
//
// Connections: one pool per server and service, opened on demand and
// multiplexing transactions (at most max_connections, 16 transactions
// each before another is opened); every connection is TLS from the first
// byte when configured (not negotiated inside OCP), starts with CS and an
// empty NO, creates one service group for the service and negotiates the
// OSMTP profile scoped to it. Idle connections are probed with PQ every
// keepalive and dropped when PA does not come. A hook that waits half its
// timeout probes its transaction with PQ once, then gives up at the
// timeout with TE 400.
//
// Servers are tried in order for each new transaction; an SMTP
// transaction stays on the server it started on. A server's breaker
// opens after breaker.failures consecutive failures (connection or
// transaction) and skips it for breaker.cool_down; the first call after
// that is a trial whose failure opens it again at once. With every
// breaker open the hook fails at once with ErrBreakerOpen.
//
// Failures — no server reachable, breaker open, connection lost, an
// invalid answer, or no answer within timeout — are returned as errors,
// and the service's on_error policy applies (by default 451 4.3.0 with
// the trace for a service that is not bypassable). A timeout wraps
// context.DeadlineExceeded.
package callout

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

type options struct {
	Servers             []string       `toml:"servers"`
	Service             string         `toml:"service"`
	Stages              []string       `toml:"stages"`
	Parts               []string       `toml:"parts"`
	Timeout             string         `toml:"timeout"`
	ConnectTimeout      string         `toml:"connect_timeout"`
	KeepAlive           string         `toml:"keepalive"`
	MaxConnections      int            `toml:"max_connections"`
	MaxBody             int64          `toml:"max_body"`
	InsecureOffLoopback bool           `toml:"insecure_off_loopback"`
	TLS                 tlsOptions     `toml:"tls"`
	Breaker             breakerOptions `toml:"breaker"`
}

type tlsOptions struct {
	Enabled    bool   `toml:"enabled"`
	CA         string `toml:"ca"`
	Cert       string `toml:"cert"`
	Key        string `toml:"key"`
	ServerName string `toml:"server_name"`
}

type breakerOptions struct {
	Failures int    `toml:"failures"`
	CoolDown string `toml:"cool_down"`
}

// Defaults of the options.
const (
	// DefaultTimeout stays below Postfix's milter_command_timeout (30s),
	// so the processor, not the MTA, decides what a slow callout means.
	DefaultTimeout        = 20 * time.Second
	DefaultConnectTimeout = 5 * time.Second
	DefaultKeepAlive      = 30 * time.Second
	DefaultMaxConnections = 4
	DefaultMaxBody        = 64 << 20
	DefaultBreakFailures  = 5
	DefaultCoolDown       = 30 * time.Second
	// maxTimeout keeps a typo from holding the SMTP client beyond the
	// MTA's own timeouts.
	maxTimeout = 5 * time.Minute
)

// Config is a callout service's configuration as code builds it; New
// builds one from the TOML options.
type Config struct {
	Servers             []string
	Service             string
	Stages              opes.StageSet
	Parts               []string // OSMTP part names
	Timeout             time.Duration
	ConnectTimeout      time.Duration
	KeepAlive           time.Duration
	MaxConnections      int
	MaxBody             int64
	TLS                 *tls.Config // nil: plain TCP
	InsecureOffLoopback bool
	BreakFailures       int
	CoolDown            time.Duration
	Log                 *slog.Logger
}

// stageParts maps the stages a callout can decide at to their part.
var stageParts = map[opes.Stage]string{
	opes.StageConnect: ocp.PartConnect, opes.StageHelo: ocp.PartHelo, opes.StageMail: ocp.PartMail,
	opes.StageRcpt: ocp.PartRcpt, opes.StageHeaders: ocp.PartHeaders,
}

// partNames maps the option's part names to OSMTP parts.
var partNames = map[string][]string{
	"connect": {ocp.PartConnect}, "helo": {ocp.PartHelo}, "mail": {ocp.PartMail}, "rcpt": {ocp.PartRcpt},
	"envelope": {ocp.PartMail, ocp.PartRcpt}, "headers": {ocp.PartHeaders}, "body": {ocp.PartBody}, "size": {ocp.PartSize},
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("callout: decode options: %w", err)
		}
	}
	cfg := Config{
		Servers: o.Servers, Service: o.Service, MaxConnections: o.MaxConnections, MaxBody: o.MaxBody,
		InsecureOffLoopback: o.InsecureOffLoopback, BreakFailures: o.Breaker.Failures,
	}
	var err error
	for _, d := range []struct {
		field string
		src   string
		dst   *time.Duration
		def   time.Duration
		zero  bool // "0s" allowed
	}{
		{"timeout", o.Timeout, &cfg.Timeout, DefaultTimeout, false},
		{"connect_timeout", o.ConnectTimeout, &cfg.ConnectTimeout, DefaultConnectTimeout, false},
		{"keepalive", o.KeepAlive, &cfg.KeepAlive, DefaultKeepAlive, true},
		{"breaker.cool_down", o.Breaker.CoolDown, &cfg.CoolDown, DefaultCoolDown, false},
	} {
		*d.dst = d.def
		if d.src == "" {
			continue
		}
		v, err := time.ParseDuration(d.src)
		if err != nil || v < 0 || (v == 0 && !d.zero) || v > maxTimeout && d.field != "breaker.cool_down" {
			return nil, opes.FieldErrorf(d.field, "%q is not a duration in (0s, %s]", d.src, maxTimeout)
		}
		*d.dst = v
	}
	stages := o.Stages
	if stages == nil {
		stages = []string{"eom"}
	}
	for i, s := range stages {
		st, err := opes.ParseStage(s)
		if err != nil {
			return nil, opes.FieldErrorf(fmt.Sprintf("stages[%d]", i+1), "%v", err)
		}
		if st == opes.StageData {
			return nil, opes.FieldErrorf(fmt.Sprintf("stages[%d]", i+1), "a callout cannot decide at data: OSMTP has no DATA part (use headers or eom)")
		}
		cfg.Stages = cfg.Stages.Add(st)
	}
	parts := o.Parts
	if parts == nil {
		parts = []string{"connect", "helo", "envelope", "headers", "body"}
	}
	for i, p := range parts {
		ps, ok := partNames[strings.ToLower(p)]
		if !ok {
			return nil, opes.FieldErrorf(fmt.Sprintf("parts[%d]", i+1), "unknown part %q (want connect, helo, envelope, mail, rcpt, headers, body or size)", p)
		}
		for _, q := range ps {
			if !slices.Contains(cfg.Parts, q) {
				cfg.Parts = append(cfg.Parts, q)
			}
		}
	}
	if o.TLS.Enabled || o.TLS.CA != "" || o.TLS.Cert != "" || o.TLS.Key != "" || o.TLS.ServerName != "" {
		if cfg.TLS, err = loadTLS(o.TLS); err != nil {
			return nil, err
		}
	}
	return NewService(cfg)
}

func loadTLS(o tlsOptions) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CA != "" {
		pem, err := os.ReadFile(o.CA)
		if err != nil {
			return nil, opes.FieldErrorf("tls.ca", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, opes.FieldErrorf("tls.ca", "%s holds no PEM certificate", o.CA)
		}
		c.RootCAs = pool
	}
	if (o.Cert == "") != (o.Key == "") {
		return nil, opes.FieldErrorf("tls.cert", "cert and key go together (mutual TLS)")
	}
	if o.Cert != "" {
		kp, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, opes.FieldErrorf("tls.cert", "%v", err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c, nil
}

// Service is a configured callout service.
type Service struct {
	cfg     Config
	offer   ocp.Profile
	needs   opes.Needs
	servers []*server
	log     *slog.Logger
}

// NewService checks cfg and returns the service. No connection is made
// until the first transaction needs one.
func NewService(cfg Config) (*Service, error) {
	if len(cfg.Servers) == 0 {
		return nil, opes.FieldErrorf("servers", `at least one "host:port" is required`)
	}
	if cfg.Service == "" || len(cfg.Service) > 256 {
		return nil, opes.FieldErrorf("service", "the service's name at the callout server is required (at most 256 octets)")
	}
	if err := opes.CheckPrintable(cfg.Service, 256); err != nil {
		return nil, opes.FieldErrorf("service", "%v", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.BreakFailures <= 0 {
		cfg.BreakFailures = DefaultBreakFailures
	}
	if cfg.CoolDown <= 0 {
		cfg.CoolDown = DefaultCoolDown
	}
	if cfg.Stages == 0 {
		cfg.Stages = opes.StagesOf(opes.StageEOM)
	}
	if cfg.Parts == nil {
		cfg.Parts = []string{ocp.PartConnect, ocp.PartHelo, ocp.PartMail, ocp.PartRcpt, ocp.PartHeaders, ocp.PartBody}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, log: log}
	for i, addr := range cfg.Servers {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, opes.FieldErrorf(fmt.Sprintf("servers[%d]", i+1), "%q is not host:port: %v", addr, err)
		}
		if cfg.TLS == nil && !cfg.InsecureOffLoopback && !isLoopback(host) {
			return nil, opes.FieldErrorf(fmt.Sprintf("servers[%d]", i+1),
				"%s is not on loopback: configure [tls] (RFC 3836 §3.4) or set insecure_off_loopback = true", addr)
		}
		s.servers = append(s.servers, newServer(s, addr, host))
	}
	for st := opes.StageConnect; st <= opes.StageEOM; st++ {
		if !cfg.Stages.Has(st) {
			continue
		}
		if part, ok := stageParts[st]; ok {
			if !slices.Contains(cfg.Parts, part) {
				return nil, opes.FieldErrorf("stages", "stage %s needs part %s in parts", st, strings.ToLower(part))
			}
			s.offer.Adaptive = append(s.offer.Adaptive, part)
		}
	}
	for _, p := range cfg.Parts {
		if !slices.Contains(s.offer.Adaptive, p) {
			s.offer.Informative = append(s.offer.Informative, p)
		}
	}
	s.needs = opes.Needs{
		// The end of the message is always a decision point: changes are
		// applied there and the OCP transaction ends there.
		Stages:  cfg.Stages.Add(opes.StageEOM),
		Headers: slices.Contains(cfg.Parts, ocp.PartHeaders),
		Body:    slices.Contains(cfg.Parts, ocp.PartBody) || slices.Contains(cfg.Parts, ocp.PartSize),
	}
	return s, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Needs reports the configured stages (plus the end of message) and the
// data the configured parts read.
func (s *Service) Needs() opes.Needs { return s.needs }

// Begin starts the service's work on one transaction; the OCP
// transaction starts at the first hook that sends something.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

// Close ends every pooled connection with CE.
func (s *Service) Close() {
	for _, srv := range s.servers {
		srv.closeAll()
	}
}
