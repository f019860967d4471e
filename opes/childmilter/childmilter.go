// Package childmilter runs an existing milter — OpenDKIM, a greylisting
// milter, anything written for Sendmail or Postfix — as an OPES service,
// the way milter-manager chains milters: opes-milter speaks the MTA side
// of the milter protocol to the child (go-milter's client) and turns its
// answers into verdicts, so the child's decisions and modifications get
// the processor's trace, failure policy and trace-field protection like
// any built-in service.
//
// Options, under [service.options]:
//
//	socket = "unix:/run/opendkim/opendkim.sock"  # required; or "inet:8891@127.0.0.1",
//	                                             # "inet:127.0.0.1:8891", "inet6:8891@[::1]"
//	connect_timeout = "5s"   # opening the connection to the child
//	command_timeout = "20s"  # each hook before the end of data (connect ... headers)
//	eom_timeout = "120s"     # the end-of-data hook: any replay, body, decision, changes
//	stages = ["connect", "helo", "mail", "rcpt", "data", "headers", "eom"]  # default: all
//	macros = ["j", "{daemon_name}", "{auth_authen}", "i"]  # default: every macro we know
//
// One child session per transaction: a second message on the same SMTP
// connection gets a new child connection, with connect and HELO replayed
// (ServiceTx lives for one transaction). The child connection is opened at
// the first hook the service runs for a transaction (never when the
// policy is loaded: a child that is down at start-up must not keep the
// daemon from starting, and its failures belong to the failure policy of
// the transaction that meets them). Each hook first replays what the child
// has not seen yet — connect, HELO, MAIL, the recipients, DATA, the
// header — from the transaction, so a service enabled by a rule at a late
// stage, or configured with few stages, still drives the child through a
// complete, well-ordered milter dialog. stages only chooses at which
// stages the child is consulted (and can refuse); the child's own protocol
// negotiation (SMFIP_NO*, SMFIP_NR_*) then saves the round trips it does
// not want. Needs therefore comes from the configuration, not from the
// child: asking the child at load time would need the network then.
// The default, every stage with the header and the body, is what a child
// milter generally expects from an MTA.
//
// Answers map to verdicts:
//
//   - continue, accept: Continue (after accept the child sees nothing more
//     of the transaction; other services still run — a child cannot accept
//     on behalf of the whole policy).
//   - reject, tempfail, and a reply with a code (smfi_setreply): Reject or
//     TempFail with the child's code, enhanced code and text, validated
//     and sanitised; the processor appends the trace lines. At RCPT the
//     refusal is for that recipient. A refusal at any other step refuses
//     the transaction, and every later hook repeats it. A recipient
//     refused while being replayed (rcpt not in stages) refuses the
//     message: a recipient cannot be refused after RCPT, and accepting and
//     then dropping it would need an NDR.
//   - discard: Discard (the processor refuses instead until it can send
//     NDRs). A discard at RCPT applies at the next stage that is not RCPT,
//     as it does in an MTA: it concerns the message, not the recipient.
//   - quarantine (at the end of data): Quarantine with the child's reason;
//     its other changes still apply.
//
// Changes at the end of data go through the Transaction: add, insert,
// change and delete header field → tx.Header; replace body →
// tx.ReplaceBody; change sender, add and delete recipient →
// tx.ChangeSender, AddRecipient, DeleteRecipient. Inserted fields are
// added at the end (the processor emits new fields as appends; only its
// own trace block goes on top). Changes to OPES-System, OPES-Via and
// OPES-Bypass are dropped here, and the processor restores trace fields
// anyway. A change the processor refuses (a header value with a bare line
// break, an address with control bytes) fails the hook: the child's
// changes are checked before the first one is applied, so the message is
// changed completely or not at all. The trace action says what the child
// did: header-added (only new fields), modified (fields changed or
// deleted, body replaced, or several kinds of change), rewritten (sender
// changed), rerouted (recipients added or deleted), quarantined, rejected,
// or analyzed when nothing changed.
//
// An empty body reaches the child as one empty line: go-milter's client
// cannot end a message without a body packet, and libmilter drops the
// connection on an empty one; for DKIM both are the same body. A
// replacement body is held in memory while go-milter reads the child's
// end-of-message answer.
//
// Failures are errors, so the service's on_error policy decides: the
// child unreachable, closing the connection, answering garbage, or not
// answering within the timeout (the error then wraps
// context.DeadlineExceeded). After a failure the child is not contacted
// again for that transaction; later hooks return the same error.
package childmilter

import (
	"fmt"
	"strings"
	"time"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/internal/sockspec"
	"github.com/opesmilter/opes-milter/internal/timeoutopt"
	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Socket         string    `toml:"socket"`
	ConnectTimeout string    `toml:"connect_timeout"`
	CommandTimeout string    `toml:"command_timeout"`
	EOMTimeout     string    `toml:"eom_timeout"`
	Stages         []string  `toml:"stages"`
	Macros         *[]string `toml:"macros"`
}

// Defaults for the options. They stay below the deadlines opes-milter's
// own MTA gives it (Postfix: milter_command_timeout 30s,
// milter_content_timeout 300s), so a slow child ends in this service's
// failure policy rather than in the MTA's milter_default_action.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultCommandTimeout = 20 * time.Second
	DefaultEOMTimeout     = 120 * time.Second
	// maxTimeout keeps a typo ("30m") from holding an SMTP client far
	// beyond any MTA's own milter timeouts.
	maxTimeout = 5 * time.Minute
)

// Service drives one configured child milter.
type Service struct {
	network, address string
	connectTimeout   time.Duration
	commandTimeout   time.Duration
	eomTimeout       time.Duration
	stages           opes.StageSet
	macros           map[string]bool // canonical names we may send
	clientOpts       []milter.Option
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("milter: decode options: %w", err)
		}
	}
	if strings.TrimSpace(o.Socket) == "" {
		return nil, opes.FieldErrorf("socket", `is required: "unix:/path/to/milter.sock" or "inet:PORT@HOST"`)
	}
	network, address, err := sockspec.Parse(strings.TrimSpace(o.Socket))
	if err != nil {
		return nil, &opes.FieldError{Field: "socket", Err: err}
	}
	s := &Service{
		network: network, address: address,
		connectTimeout: DefaultConnectTimeout,
		commandTimeout: DefaultCommandTimeout,
		eomTimeout:     DefaultEOMTimeout,
		stages:         opes.AllStages,
	}
	for _, d := range []struct {
		field string
		value string
		dst   *time.Duration
	}{
		{"connect_timeout", o.ConnectTimeout, &s.connectTimeout},
		{"command_timeout", o.CommandTimeout, &s.commandTimeout},
		{"eom_timeout", o.EOMTimeout, &s.eomTimeout},
	} {
		if d.value == "" {
			continue
		}
		if *d.dst, err = timeoutopt.Parse(d.value, maxTimeout); err != nil {
			return nil, &opes.FieldError{Field: d.field, Err: err}
		}
	}
	if o.Stages != nil {
		if len(o.Stages) == 0 {
			return nil, opes.FieldErrorf("stages", "is empty: list the stages at which the child is consulted, or leave stages out for all")
		}
		s.stages = 0
		for i, name := range o.Stages {
			st, err := opes.ParseStage(name)
			if err != nil {
				return nil, &opes.FieldError{Field: fmt.Sprintf("stages[%d]", i+1), Err: err}
			}
			s.stages = s.stages.Add(st)
		}
	}
	names := knownMacroNames()
	if o.Macros != nil {
		names = nil
		for i, name := range *o.Macros {
			c, ok := canonicalMacro(name)
			if !ok {
				return nil, opes.FieldErrorf(fmt.Sprintf("macros[%d]", i+1), "unknown macro %q (known: %s)", name, strings.Join(knownMacroNames(), ", "))
			}
			names = append(names, c)
		}
	}
	s.macros = map[string]bool{}
	for _, n := range names {
		s.macros[n] = true
	}
	s.clientOpts = s.milterOptions()
	return s, nil
}

// milterOptions are the go-milter client options every child session
// uses: every action and protocol feature the client library handles (the
// processor can apply all of them), 64 KiB packets (what every milter
// accepts), and our macro lists per stage unless the child asks for its
// own at negotiation.
func (s *Service) milterOptions() []milter.Option {
	opts := []milter.Option{
		milter.WithActions(milter.AllClientSupportedActionMasks),
		milter.WithOfferedMaxData(milter.DataSize64K),
		milter.WithUsedMaxData(milter.DataSize64K),
		// The library's per-packet timeouts are only a backstop: the
		// connection clamps every deadline to the hook's own (see
		// deadlineConn).
		milter.WithReadTimeout(maxTimeout),
		milter.WithWriteTimeout(maxTimeout),
		milter.WithoutDefaultMacros(),
	}
	for st, names := range macroStages {
		list := []string{}
		for _, n := range names {
			if s.macros[n] {
				list = append(list, n)
			}
		}
		opts = append(opts, milter.WithMacroRequest(milter.MacroStage(st), list))
	}
	return opts
}

// Needs is what the configuration says (see the package comment): the
// header is read when the child gets it (at the header stage or, when
// replayed, at the end of data), the body at the end of data.
func (s *Service) Needs() opes.Needs {
	return opes.Needs{
		Stages:  s.stages,
		Headers: s.stages.Has(opes.StageHeaders) || s.stages.Has(opes.StageEOM),
		Body:    s.stages.Has(opes.StageEOM),
	}
}

// Begin starts the work on one transaction; the child is contacted at the
// first hook.
func (s *Service) Begin(tx *opes.Transaction) opes.ServiceTx {
	return &txState{s: s, tx: tx, sentRcpt: map[*opes.Recipient]bool{}}
}

// String names the child for logs and errors.
func (s *Service) String() string { return s.network + ":" + s.address }
