// Package dkim is the DKIM service (RFC 6376; RFC 4496 §4.5, secure email
// handling): in mode "sign" it adds a DKIM-Signature for mail whose
// envelope sender belongs to a configured domain, in mode "verify" it
// checks the signatures of incoming mail and records the result in an
// Authentication-Results field (RFC 8601), optionally refusing or holding
// mail whose signatures fail. Both run at the end of the message; the
// cryptography is github.com/emersion/go-msgauth.
//
// Options, under [service.options]:
//
//	mode = "verify"                    # required: "sign" or "verify"
//
//	# mode = "sign"
//	canonicalization = "relaxed/relaxed"   # or "relaxed/simple"
//	expiration = "168h"                # optional x= tag: signature lifetime
//	[[service.options.domains]]        # one or more
//	domain = "example.net"             # envelope sender domain, also d=
//	selector = "mail2026"              # s=
//	key_file = "/etc/dkimkeys/mail2026.private"  # PEM, RSA (>= 1024 bits) or Ed25519
//	headers = ["From", "To", ...]      # signed when present; default DefaultHeaders
//	oversign = ["From", ...]           # listed once more: none may be added; default DefaultOversign
//
//	# mode = "verify"
//	authserv_id = "mx1.example.net"    # required: the name in Authentication-Results
//	on_fail = "continue"               # no valid signature, one failed: continue | reject | quarantine
//	on_none = "continue"               # no signature at all: continue | reject | quarantine
//	on_temperror = "continue"          # key lookup failed temporarily: continue | tempfail
//	max_signatures = 5                 # verified from the top; the others are ignored
//	timeout = "10s"                    # per key lookup
//
// Signing chooses the key by the envelope sender's domain, never by the
// From field: RFC 4496 §4.5 has the OPES system pick keys from the
// envelope, which the MTA authenticated, not from the visible header that
// anyone can write. The sign service must be the last service of the
// policy that changes the message: it signs the header and body as they
// are when it runs, and a later change breaks the signature. The trace
// fields OPES-System and OPES-Via are never signed (the processor inserts
// them after every service has run), so they do not break it either.
//
// Verification adds one Authentication-Results field with one result per
// signature (pass, fail, permerror, temperror), or dkim=none for unsigned
// mail, and first removes every Authentication-Results field that claims
// our authserv-id: such a field did not come from us, and a reader that
// trusts our results would trust a forgery (RFC 8601 §5).
package dkim

import (
	"context"
	"crypto"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Mode string `toml:"mode"`

	// sign
	Domains          []domainOptions `toml:"domains"`
	Canonicalization string          `toml:"canonicalization"`
	Expiration       string          `toml:"expiration"`

	// verify
	AuthservID    string `toml:"authserv_id"`
	OnFail        string `toml:"on_fail"`
	OnNone        string `toml:"on_none"`
	OnTempError   string `toml:"on_temperror"`
	MaxSignatures int    `toml:"max_signatures"`
	Timeout       string `toml:"timeout"`
}

type domainOptions struct {
	Domain   string   `toml:"domain"`
	Selector string   `toml:"selector"`
	KeyFile  string   `toml:"key_file"`
	Headers  []string `toml:"headers"`
	Oversign []string `toml:"oversign"`
}

// DefaultHeaders are the fields signed when present (RFC 6376 §5.4.1's
// list, plus the MIME fields that say how to read the body).
var DefaultHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "Content-Disposition",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

// DefaultOversign are the fields listed in h= once more than the message
// has them (RFC 6376 §8.15), so that nobody can add one without breaking
// the signature: a second From or Subject above the signed one is what a
// mail client may show instead.
var DefaultOversign = []string{"From", "Subject", "Date", "To", "Cc", "Reply-To"}

// Defaults and bounds of the options.
const (
	DefaultMaxSignatures = 5
	maxMaxSignatures     = 20
	DefaultTimeout       = 10 * time.Second
	maxTimeout           = 2 * time.Minute
	maxDomains           = 1000
	maxHeaderNames       = 100
)

// Outcome of a verification for the whole message, when no signature
// passed.
type action uint8

const (
	actContinue action = iota
	actReject
	actQuarantine
	actTempFail
)

type signKey struct {
	domain, selector string
	signer           crypto.Signer
	headers          []string // signed once per instance present
	oversign         []string // listed once more than present
}

type service struct {
	sign bool

	// sign
	keys       map[string]*signKey // by envelope sender domain, lower case
	bodyCanon  string              // "relaxed" or "simple"; headers are always relaxed
	expiration time.Duration

	// verify
	authservID    string
	onFail        action
	onNone        action
	onTempError   action
	maxSignatures int
	timeout       time.Duration
	// lookupTXT resolves key records; tests replace it, production uses
	// the system resolver bounded by timeout.
	lookupTXT func(ctx context.Context, name string) ([]string, error)
	now       func() time.Time
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does. Signing keys are
// read here, so a missing or bad key is a configuration error at load,
// not a failure on the mail path.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("dkim: decode options: %w", err)
		}
	}
	s := &service{lookupTXT: net.DefaultResolver.LookupTXT, now: time.Now}
	switch strings.ToLower(strings.TrimSpace(o.Mode)) {
	case "sign":
		s.sign = true
		if err := o.checkOnly("sign"); err != nil {
			return nil, err
		}
		if err := s.configureSign(&o); err != nil {
			return nil, err
		}
	case "verify":
		if err := o.checkOnly("verify"); err != nil {
			return nil, err
		}
		if err := s.configureVerify(&o); err != nil {
			return nil, err
		}
	case "":
		return nil, opes.FieldErrorf("mode", `is required: "sign" or "verify"`)
	default:
		return nil, opes.FieldErrorf("mode", `%q is not "sign" or "verify"`, o.Mode)
	}
	return s, nil
}

// checkOnly refuses options of the other mode: a verify option in a sign
// service would silently do nothing, which hides a mistake.
func (o *options) checkOnly(mode string) error {
	type opt struct {
		name string
		set  bool
	}
	sign := []opt{{"domains", o.Domains != nil}, {"canonicalization", o.Canonicalization != ""}, {"expiration", o.Expiration != ""}}
	verify := []opt{{"authserv_id", o.AuthservID != ""}, {"on_fail", o.OnFail != ""}, {"on_none", o.OnNone != ""},
		{"on_temperror", o.OnTempError != ""}, {"max_signatures", o.MaxSignatures != 0}, {"timeout", o.Timeout != ""}}
	other, otherMode := verify, "verify"
	if mode == "verify" {
		other, otherMode = sign, "sign"
	}
	for _, x := range other {
		if x.set {
			return opes.FieldErrorf(x.name, "is an option of mode = %q, not of mode = %q", otherMode, mode)
		}
	}
	return nil
}

func (s *service) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	if t.s.sign {
		return t.s.signMessage(t.tx)
	}
	return t.s.verifyMessage(ctx, t.tx)
}
