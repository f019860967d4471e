package spamlevel

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// Options are the [service.options] both spam engine services (spamd,
// rspamd) take; each embeds them in its own options.
type Options struct {
	Address         string             `toml:"address"`
	Timeout         string             `toml:"timeout"`
	MaxSize         int64              `toml:"max_size"`
	AddHeader       bool               `toml:"add_header"`
	SubjectPrefix   string             `toml:"subject_prefix"`
	TagScore        float64            `toml:"tag_score"`
	QuarantineScore float64            `toml:"quarantine_score"`
	RejectScore     float64            `toml:"reject_score"`
	Recipient       []RecipientOptions `toml:"recipient"`
}

// Limits are one engine's defaults and bounds.
type Limits struct {
	DefaultMaxSize, MaxMaxSize int64
	// Example is shown when the address is missing, e.g.
	// `"127.0.0.1:783" or "/run/spamd.sock"`.
	Example string
}

// Engine is Options checked: where the engine listens and what the
// service does with its score.
type Engine struct {
	Network, Addr string // "tcp" or "unix"
	Timeout       time.Duration
	MaxSize       int64
	AddHeader     bool
	Prefix        string // Subject prefix; "" for none
	Table         *Table
}

// Bounds common to both engines.
const (
	DefaultTimeout = 30 * time.Second
	maxTimeout     = 10 * time.Minute
	maxPrefix      = 100
)

// Check validates the options; errors are *opes.FieldError.
func (o Options) Check(l Limits) (Engine, error) {
	e := Engine{Timeout: DefaultTimeout, MaxSize: l.DefaultMaxSize, AddHeader: o.AddHeader}
	var err error
	if e.Network, e.Addr, err = ParseAddress(o.Address, l.Example); err != nil {
		return e, &opes.FieldError{Field: "address", Err: err}
	}
	if o.Timeout != "" {
		d, err := time.ParseDuration(o.Timeout)
		if err != nil || d <= 0 || d > maxTimeout {
			return e, opes.FieldErrorf("timeout", "%q is not a duration between 0 and %s, e.g. \"30s\"", o.Timeout, maxTimeout)
		}
		e.Timeout = d
	}
	if o.MaxSize != 0 {
		if o.MaxSize < 0 || o.MaxSize > l.MaxMaxSize {
			return e, opes.FieldErrorf("max_size", "%d is not between 1 and %d octets", o.MaxSize, l.MaxMaxSize)
		}
		e.MaxSize = o.MaxSize
	}
	if o.SubjectPrefix != "" {
		p := strings.TrimSpace(o.SubjectPrefix)
		if err := opes.CheckPrintable(p, maxPrefix); err != nil {
			return e, &opes.FieldError{Field: "subject_prefix", Err: err}
		}
		e.Prefix = p
	}
	def := Set{Tag: o.TagScore, Quarantine: o.QuarantineScore, Reject: o.RejectScore}
	if e.Table, err = NewTable(def, o.Recipient); err != nil {
		return e, err
	}
	return e, nil
}

// ParseAddress accepts "host:port", "/path/to.sock" and "unix:/path/to.sock".
func ParseAddress(a, example string) (network, addr string, err error) {
	a = strings.TrimSpace(a)
	if a == "" {
		return "", "", errors.New("is required, e.g. " + example)
	}
	if p, ok := strings.CutPrefix(a, "unix:"); ok || strings.HasPrefix(a, "/") {
		if !ok {
			p = a
		}
		if !strings.HasPrefix(p, "/") {
			return "", "", fmt.Errorf("unix socket %q is not an absolute path", p)
		}
		return "unix", p, nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return "", "", fmt.Errorf("%q is not host:port or an absolute unix socket path", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("%q: port %q is not 1..65535", a, port)
	}
	return "tcp", a, nil
}
