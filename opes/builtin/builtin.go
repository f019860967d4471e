// Package builtin maps the service kinds the policy file names (kind =
// "acl") to the packages that implement them. It is the one place that
// imports every built-in service, so the policy loader and the command
// line tools share one list and adding a service is one case here.
// There is no registration at init time and no mutable package state.
package builtin

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/acl"
	"github.com/opesmilter/opes-milter/opes/attachments"
	"github.com/opesmilter/opes-milter/opes/callout"
	"github.com/opesmilter/opes-milter/opes/checks"
	"github.com/opesmilter/opes-milter/opes/childmilter"
	"github.com/opesmilter/opes-milter/opes/clamav"
	"github.com/opesmilter/opes-milter/opes/dkim"
	"github.com/opesmilter/opes-milter/opes/icap"
	"github.com/opesmilter/opes-milter/opes/links"
	"github.com/opesmilter/opes-milter/opes/normalize"
	"github.com/opesmilter/opes-milter/opes/notify"
	"github.com/opesmilter/opes-milter/opes/pgp"
	"github.com/opesmilter/opes-milter/opes/reroute"
	"github.com/opesmilter/opes-milter/opes/rspamd"
	"github.com/opesmilter/opes-milter/opes/spamd"
	"github.com/opesmilter/opes-milter/opes/tag"
)

// Deps are what some kinds need from the running daemon besides their
// options: notify submits its mail through the report outbox.
type Deps struct {
	Submitter notify.Submitter // nil: notifications that are due fail the hook
	Hostname  string
	From      string
	Log       *slog.Logger
}

// New builds a service of the given kind. decode fills a struct from the
// service's [service.options] table, the way toml.PrimitiveDecode does;
// errors in options are *opes.FieldError relative to that table.
func New(kind string, decode func(v any) error) (opes.Service, error) {
	return NewWith(kind, decode, Deps{})
}

// NewWith is New with the daemon's dependencies.
func NewWith(kind string, decode func(v any) error, deps Deps) (opes.Service, error) {
	switch kind {
	case "acl":
		return acl.New(decode)
	case "attachments":
		return attachments.New(decode)
	case "callout":
		return callout.New(decode)
	case "checks":
		return checks.New(decode)
	case "clamav":
		return clamav.New(decode)
	case "dkim":
		return dkim.New(decode)
	case "icap":
		return icap.New(decode)
	case "normalize":
		return normalize.NewWithLogger(decode, deps.Log)
	case "notify":
		return notify.NewWithDeps(decode, notify.Deps{Submitter: deps.Submitter, Hostname: deps.Hostname, From: deps.From, Log: deps.Log})
	case "links":
		return links.New(decode)
	case "milter":
		return childmilter.New(decode)
	case "pgp":
		return pgp.New(decode)
	case "reroute":
		return reroute.New(decode)
	case "rspamd":
		return rspamd.New(decode)
	case "spamd":
		return spamd.New(decode)
	case "tag":
		return tag.New(decode)
	}
	return nil, fmt.Errorf("unknown service kind %q (known kinds: %s)", kind, strings.Join(Kinds(), ", "))
}

// Kinds lists the built-in kinds, sorted. The slice is new on every call.
func Kinds() []string {
	return []string{"acl", "attachments", "callout", "checks", "clamav", "dkim", "icap", "links", "milter", "normalize", "notify", "pgp", "reroute", "rspamd", "spamd", "tag"}
}
