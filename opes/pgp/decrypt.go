package pgp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"github.com/opesmilter/opes-milter/opes"
)

func armorEncode(w io.Writer, blockType string) (io.WriteCloser, error) {
	return armor.Encode(w, blockType, nil)
}

// decrypt replaces a multipart/encrypted message (RFC 3156 §4) by the
// entity it holds, when every accepted envelope recipient has a gateway
// key (decrypting for some recipients would hand the plaintext to the
// others too). The plaintext is read and its integrity checked in full
// before anything of it is delivered.
func (s *service) decrypt(tx *opes.Transaction) (opes.Verdict, error) {
	mt, params := contentType(tx)
	if mt != "multipart/encrypted" || !strings.EqualFold(params["protocol"], "application/pgp-encrypted") {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	keys, total, missing := s.recipientKeys(tx)
	switch {
	case total == 0 || missing == total:
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	case missing > 0:
		s.log.Info("pgp: not decrypted: some recipients have no gateway key", "trace_id", tx.TraceID(), "recipients", total, "without_key", missing)
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: "no-key"}, nil
	}
	raw, err := entityBytes(nil, tx.CurrentBody(), s.maxSize)
	if errors.Is(err, errTooLarge) {
		return s.failed(tx, "too-large", err), nil
	}
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	_, parts, _, err := multipartParts(raw[2:], params["boundary"])
	if err != nil || len(parts) != 2 {
		return s.failed(tx, "malformed", fmt.Errorf("multipart/encrypted without its two parts: %v", err)), nil
	}
	_, armored, err := splitEntity(parts[1])
	if err != nil {
		return s.failed(tx, "malformed", err), nil
	}
	block, err := armor.Decode(bytes.NewReader(armored))
	if err != nil || block.Type != "PGP MESSAGE" {
		return s.failed(tx, "malformed", fmt.Errorf("second part is not an armored OpenPGP message: %v", err)), nil
	}
	md, err := openpgp.ReadMessage(block.Body, keys, nil, nil)
	if err != nil {
		return s.failed(tx, "decrypt-failed", err), nil
	}
	plain, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, s.maxSize+1))
	if err != nil {
		return s.failed(tx, "decrypt-failed", fmt.Errorf("integrity: %w", err)), nil
	}
	if int64(len(plain)) > s.maxSize {
		return s.failed(tx, "too-large", errTooLarge), nil
	}
	fs, body, err := splitEntity(crlf(plain))
	if err != nil {
		return s.failed(tx, "malformed", fmt.Errorf("decrypted data is not a MIME entity: %w", err)), nil
	}
	var cfs []field
	for _, f := range fs {
		if isContentField(f.name) {
			cfs = append(cfs, f)
		}
	}
	if err := tx.ReplaceBody(func(w *opes.Body) error { _, err := w.Write(body); return err }); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	if err := replaceContentFields(tx, cfs); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	return opes.Verdict{Kind: opes.Continue, Action: "modified"}, nil
}

// failed is the on_fail verdict for a message we hold a key for that did
// not decrypt.
func (s *service) failed(tx *opes.Transaction, reason string, err error) opes.Verdict {
	s.log.Info("pgp: decryption failed", "trace_id", tx.TraceID(), "reason", reason, "err", err)
	switch s.onFail {
	case failReject:
		return opes.Verdict{Kind: opes.Reject, Reason: reason,
			Reply: opes.Reply{Code: 554, Enhanced: "5.7.5", Text: "OpenPGP message could not be decrypted"}}
	case failTempFail:
		return opes.Verdict{Kind: opes.TempFail, Reason: reason,
			Reply: opes.Reply{Code: 451, Enhanced: "4.7.5", Text: "OpenPGP message could not be decrypted"}}
	case failQuarantine:
		return opes.Verdict{Kind: opes.Quarantine, Reason: "OpenPGP decryption failed (" + reason + ")"}
	}
	return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Reason: reason}
}
