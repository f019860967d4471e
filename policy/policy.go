// Package policy loads opes-milter's configuration: one TOML file that
// names the OPES system, the milter socket, the resource limits, the
// configured services and the rules that enable them, and turns it into
// the *opes.Policy the processor runs.
//
// The file is checked completely before anything runs. Every problem —
// syntax, types, unknown keys, unknown names, values services refuse — is
// reported at once, each as "file:line:column: message", and a file with
// any problem yields no Config: a mail filter that starts with half a
// policy would let through what the administrator meant to stop.
//
// docs/configuration.md and the comment block of default.toml describe
// every key.
package policy

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/smallfile"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
)

// Config is a loaded, validated configuration file.
type Config struct {
	Policy *opes.Policy
	Milter Milter
	Admin  Admin
	Report Report
	// The OPES guarantees' machinery (issue 3).
	Store      Store
	Quarantine Quarantine
	NDR        NDR
	Audit      Audit
	// Source names where the configuration came from: the file name, or
	// "embedded default".
	Source string
}

// Milter holds the settings of the milter listener.
type Milter struct {
	// Listen is a socket spec (see internal/sockspec), already checked.
	Listen string
	// ReadTimeout bounds the wait for the MTA's next packet; 0 = none.
	ReadTimeout time.Duration
	// WriteTimeout bounds sending one reply to the MTA; 0 = none.
	WriteTimeout time.Duration
	// ShutdownTimeout is how long a stopping daemon lets open
	// connections finish; always positive.
	ShutdownTimeout time.Duration
	// SocketMode and SocketGroup apply to a unix socket: the MTA's user
	// must be able to write it, nobody else should.
	SocketMode  os.FileMode
	SocketGroup string
}

// Report holds the settings of the per-transaction records (RFC 4496
// §4.3).
type Report struct {
	// Transactions is the JSON-lines file; empty disables the records.
	Transactions string
	// Addresses is how much of envelope addresses records keep: "full",
	// "domain" or "none".
	Addresses string
	// MeasureSize asks the MTA for the body to count message sizes even
	// when no service reads it (costs a little throughput).
	MeasureSize bool
	// Incidents is a JSON-lines file of the records of refused and held
	// transactions only; empty disables it.
	Incidents string
	// Webhook receives the same incident records as HTTP POSTs; empty
	// disables it.
	Webhook        string
	WebhookTimeout time.Duration
	// Syslog sends the incident records to a syslog daemon (RFC 5424):
	// "unixgram:/dev/log", "udp:host:port" or "tcp:host:port"; empty
	// disables it.
	Syslog         string
	SyslogFacility string
	SyslogTag      string
	SyslogHostname string
	SyslogMaxSize  int
}

// Admin holds the settings of the HTTP admin listener (/healthz,
// /readyz, /metrics).
type Admin struct {
	// Listen is "host:port"; empty disables the listener.
	Listen string
	// TokenFile holds the API tokens ("name:token" lines); empty
	// disables the API (the disclosure page stays public).
	TokenFile string
}

// Defaults of the [milter] and [limits] tables.
const (
	DefaultListen          = "inet:10028@127.0.0.1"
	DefaultWriteTimeout    = 10 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultMaxHeaderFields = 1000
	DefaultMaxHeaderBytes  = 1 << 20
	DefaultBodyMemory      = 256 << 10
	DefaultSocketMode      = 0o660
)

// DefaultSource is the Source of the embedded default configuration.
const DefaultSource = "embedded default"

// maxFileSize bounds what Load reads: a policy is a few kilobytes, and a
// wrong path pointing at a log file should fail fast.
const maxFileSize = 4 << 20

//go:embed default.toml
var defaultTOML []byte

// Default returns the embedded default configuration: the system URI
// https://localhost/opes/, full trace detail, no services and no rules.
// It traces every message and refuses nothing.
func Default() *Config {
	cfg, err := Parse(DefaultSource, defaultTOML)
	if err != nil {
		// Caught by the tests; an unusable binary must not start.
		panic("policy: embedded default.toml: " + err.Error())
	}
	return cfg
}

// Load reads and parses the configuration file at path. Problems in the
// file are returned as Errors.
func Load(path string) (*Config, error) { return LoadWith(path, builtin.Deps{}) }

// LoadWith is Load with the running daemon's dependencies (builtin.Deps).
func LoadWith(path string, deps builtin.Deps) (*Config, error) {
	data, err := smallfile.Read(path, maxFileSize)
	if errors.Is(err, smallfile.ErrTooLarge) {
		return nil, Errors{{File: path, Line: 1, Col: 1, Msg: fmt.Sprintf("file is larger than %d bytes", maxFileSize)}}
	}
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return ParseWith(path, data, deps)
}

// Parse parses a configuration held in memory; name is used in error
// positions and as the Config's Source. The error, if any, is Errors.
func Parse(name string, data []byte) (*Config, error) {
	return ParseWith(name, data, builtin.Deps{})
}

// ParseWith is Parse with the running daemon's dependencies for the
// services that need them (builtin.Deps).
func ParseWith(name string, data []byte, deps builtin.Deps) (*Config, error) {
	l := &loader{file: name, src: string(data), deps: deps}
	cfg := l.load()
	if len(l.errs) > 0 {
		return nil, l.errs.sorted()
	}
	return cfg, nil
}

// Error is one problem in a configuration file, at a 1-based line and
// byte column.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

func (e Error) Error() string { return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg) }

// Errors are all the problems found in one file, in file order.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sorted orders by position and drops exact repeats, which arise when
// several checks meet the same value.
func (es Errors) sorted() Errors {
	out := make(Errors, 0, len(es))
	seen := map[Error]bool{}
	for _, e := range es {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	// Stable: messages at one position keep the order they were found in.
	slices.SortStableFunc(out, func(a, b Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
	return out
}

// Warnings lists what is valid but rarely meant: a policy whose services
// can never act because nobody consented (PROFILE §6).
func (c *Config) Warnings() []string {
	p := c.Policy
	if k := p.Consent; k != nil && !k.All && len(k.Recipients) == 0 && len(k.Senders) == 0 && (len(p.Services) > 0 || len(p.Rules) > 0) {
		return []string{"no [consent]: services and rules from RCPT on act for nobody; every message is only traced"}
	}
	return nil
}
