// Package pgp is the OpenPGP service (RFC 3156 PGP/MIME; RFC 4496 §4.5,
// secure email handling), built on github.com/ProtonMail/go-crypto. One
// configured instance does one job, chosen by mode:
//
//   - "encrypt": a message whose accepted envelope recipients all have a
//     configured public key becomes multipart/encrypted, the original MIME
//     entity (its Content-* fields and body) encrypted to those keys.
//   - "sign": a message whose envelope sender has a configured private key
//     becomes multipart/signed (micalg=pgp-<hash>), the original entity
//     made 7bit first (RFC 3156 §3, §5) and signed byte for byte.
//   - "decrypt": a multipart/encrypted message for envelope recipients
//     whose private keys the gateway holds is replaced by the decrypted
//     entity.
//
// Keys are chosen by the envelope (MAIL FROM and the accepted RCPT TO),
// never by From, To or Cc: RFC 4496 §4.5 has the OPES system pick keys
// from what the MTA saw, not from header fields anyone can write.
//
// Options, under [service.options]:
//
//	mode = "encrypt"                 # required: "encrypt", "sign" or "decrypt"
//	partial = "skip"                 # encrypt, decrypt: only some recipients have
//	                                 # keys: "skip" (leave the message alone) or
//	                                 # "tempfail-split" (452 4.5.3 at RCPT so the
//	                                 # client sends them in separate transactions)
//	on_fail = "continue"             # decrypt: a message we hold a key for does not
//	                                 # decrypt: continue | reject | quarantine | tempfail
//	[[service.options.keys]]         # one or more
//	recipient = "joe@example.net"    # encrypt, decrypt: address or "@domain"
//	sender = "alice@example.org"     # sign: address or "@domain"
//	public_key_file = "/etc/opes/pgp/joe.asc"      # encrypt: armored public key(s)
//	public_key = """-----BEGIN PGP PUBLIC KEY BLOCK-----..."""  # or inline
//	private_key_file = "/etc/opes/pgp/alice.asc"   # sign, decrypt: armored secret key
//	passphrase_file = "/etc/opes/pgp/alice.pass"   # optional: when the secret key is protected
//
// A message that is already signed or encrypted (multipart/signed,
// multipart/encrypted, application/pkcs7-mime, application/pgp-encrypted)
// is left alone by "sign" and "encrypt" (status=skipped; reason=signed),
// except that "encrypt" does encrypt a multipart/signed message: that is
// RFC 3156 §6.1 sign-then-encrypt, and a message that arrived signed is
// still protected by the processor, which undoes the change unless the
// service has modify_signed = true. For the same reason "decrypt" works
// only with modify_signed = true.
package pgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/opesmilter/opes-milter/opes"
)

type options struct {
	Mode    string       `toml:"mode"`
	Partial string       `toml:"partial"`
	OnFail  string       `toml:"on_fail"`
	Keys    []keyOptions `toml:"keys"`
}

type keyOptions struct {
	Recipient      string `toml:"recipient"`
	Sender         string `toml:"sender"`
	PublicKey      string `toml:"public_key"`
	PublicKeyFile  string `toml:"public_key_file"`
	PrivateKeyFile string `toml:"private_key_file"`
	PassphraseFile string `toml:"passphrase_file"`
}

type mode uint8

const (
	modeEncrypt mode = iota + 1
	modeSign
	modeDecrypt
)

type failAction uint8

const (
	failContinue failAction = iota
	failReject
	failQuarantine
	failTempFail
)

// Bounds.
const (
	maxKeys = 10000
	// maxMessage bounds what signing and decryption hold in memory (the
	// signed entity is rebuilt, a decrypted one is checked in full before
	// any of it is delivered). Larger mail is traced status=skipped.
	maxMessage = 64 << 20
)

type service struct {
	mode    mode
	split   bool // partial = "tempfail-split"
	onFail  failAction
	keys    map[string]openpgp.EntityList // by "user@domain" or "@domain", lower case
	log     *slog.Logger
	maxSize int64
}

// New builds the service from its options. Keys are read and checked
// here, so a missing or malformed key is a configuration error at load
// (a *opes.FieldError naming the option), not a failure on the mail path.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("pgp: decode options: %w", err)
		}
	}
	s := &service{log: slog.Default(), maxSize: maxMessage}
	switch strings.ToLower(strings.TrimSpace(o.Mode)) {
	case "encrypt":
		s.mode = modeEncrypt
	case "sign":
		s.mode = modeSign
	case "decrypt":
		s.mode = modeDecrypt
	case "":
		return nil, opes.FieldErrorf("mode", `is required: "encrypt", "sign" or "decrypt"`)
	default:
		return nil, opes.FieldErrorf("mode", `%q is not "encrypt", "sign" or "decrypt"`, o.Mode)
	}
	switch strings.ToLower(strings.TrimSpace(o.Partial)) {
	case "", "skip":
	case "tempfail-split":
		if s.mode == modeSign {
			return nil, opes.FieldErrorf("partial", `is an option of mode "encrypt" and "decrypt": signing depends on the sender only`)
		}
		s.split = true
	default:
		return nil, opes.FieldErrorf("partial", `%q is not "skip" or "tempfail-split"`, o.Partial)
	}
	switch strings.ToLower(strings.TrimSpace(o.OnFail)) {
	case "", "continue":
	case "reject":
		s.onFail = failReject
	case "quarantine":
		s.onFail = failQuarantine
	case "tempfail":
		s.onFail = failTempFail
	default:
		return nil, opes.FieldErrorf("on_fail", `%q is not "continue", "reject", "quarantine" or "tempfail"`, o.OnFail)
	}
	if o.OnFail != "" && s.mode != modeDecrypt {
		return nil, opes.FieldErrorf("on_fail", `is an option of mode "decrypt"`)
	}
	if err := s.loadKeys(o.Keys); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *service) Needs() opes.Needs {
	st := opes.StagesOf(opes.StageEOM)
	if s.split {
		st = opes.StagesOf(opes.StageRcpt, opes.StageEOM)
	}
	return opes.Needs{Stages: st, Headers: true, Body: true}
}

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

// splitReply defers a recipient whose key situation differs from the
// transaction's first recipient: each transaction is then all-keyed or
// all-unkeyed, so no message is delivered in clear to some recipients
// and encrypted to others (the same 452 4.5.3 the processor uses for
// recipients with a different OPES policy).
var splitReply = opes.Reply{Code: 452, Enhanced: "4.5.3", Text: "recipient needs a separate transaction (OpenPGP)"}

func (t *txState) Rcpt(_ context.Context, rcpt *opes.Recipient) (opes.Verdict, error) {
	if !t.s.split {
		return opes.ContinueVerdict, nil
	}
	for _, r := range t.tx.AcceptedRecipients() {
		if r == rcpt {
			continue
		}
		if (t.s.lookup(r.Addr) != nil) != (t.s.lookup(rcpt.Addr) != nil) {
			return opes.Verdict{Kind: opes.TempFail, Reply: splitReply, Reason: "OpenPGP key split"}, nil
		}
		break // the first accepted recipient decides
	}
	return opes.ContinueVerdict, nil
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	switch t.s.mode {
	case modeEncrypt:
		return t.s.encrypt(t.tx)
	case modeSign:
		return t.s.sign(t.tx)
	}
	return t.s.decrypt(t.tx)
}

// contentType is the media type of the working header's Content-Type
// (lower case), text/plain when absent or unparsable, and its parameters.
func contentType(tx *opes.Transaction) (string, map[string]string) {
	mt, params, err := mime.ParseMediaType(tx.Header.Get("Content-Type"))
	if err != nil || mt == "" {
		return "text/plain", nil
	}
	return mt, params
}

// protectedType reports whether a media type is signed or encrypted
// content (S/MIME or OpenPGP).
func protectedType(mt string) (signed, encrypted bool) {
	switch mt {
	case "multipart/signed", "application/pkcs7-signature", "application/x-pkcs7-signature":
		return true, false
	case "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted":
		return false, true
	}
	return false, false
}

var skippedSigned = opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: "signed"}

var errTooLarge = errors.New("message larger than the OpenPGP service handles")
