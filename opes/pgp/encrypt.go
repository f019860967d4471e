package pgp

import (
	"bytes"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"github.com/opesmilter/opes-milter/opes"
)

// recipientKeys returns the keys of the accepted envelope recipients
// (never To or Cc), each entity once, and how many recipients have none.
func (s *service) recipientKeys(tx *opes.Transaction) (keys openpgp.EntityList, total, missing int) {
	seen := map[*openpgp.Entity]bool{}
	for _, r := range tx.AcceptedRecipients() {
		total++
		el := s.lookup(r.Addr)
		if el == nil {
			missing++
			continue
		}
		for _, e := range el {
			if !seen[e] {
				seen[e] = true
				keys = append(keys, e)
			}
		}
	}
	return keys, total, missing
}

// encrypt turns the message into multipart/encrypted (RFC 3156 §4) when
// every accepted envelope recipient has a key. The first part is the
// version identification, the second the armored OpenPGP message whose
// plaintext is the original entity: the Content-* fields and the body as
// earlier services left it, in canonical CRLF form.
func (s *service) encrypt(tx *opes.Transaction) (opes.Verdict, error) {
	if mt, _ := contentType(tx); mt == "multipart/encrypted" || mt == "application/pkcs7-mime" ||
		mt == "application/x-pkcs7-mime" || mt == "application/pgp-encrypted" {
		return skippedSigned, nil
	}
	to, total, missing := s.recipientKeys(tx)
	switch {
	case total == 0 || missing == total:
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	case missing > 0:
		s.log.Info("pgp: not encrypted: some recipients have no key", "trace_id", tx.TraceID(), "recipients", total, "without_key", missing)
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: "no-key"}, nil
	}
	boundary, err := newBoundary()
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	fs := contentFields(tx)
	src := tx.CurrentBody()
	err = tx.ReplaceBody(func(w *opes.Body) error {
		out := &crlfWriter{w: w}
		if _, err := io.WriteString(out, "This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"+
			"--"+boundary+"\r\n"+
			"Content-Type: application/pgp-encrypted\r\n"+
			"Content-Description: PGP/MIME version identification\r\n\r\n"+
			"Version: 1\r\n\r\n"+
			"--"+boundary+"\r\n"+
			"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"+
			"Content-Description: OpenPGP encrypted message\r\n"+
			"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"); err != nil {
			return err
		}
		aw, err := armor.Encode(out, "PGP MESSAGE", nil)
		if err != nil {
			return err
		}
		pw, err := openpgp.Encrypt(aw, to, nil, &openpgp.FileHints{IsBinary: true}, nil)
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		if err := writeEntity(pw, fs, src); err != nil {
			return err
		}
		if err := pw.Close(); err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		if err := aw.Close(); err != nil {
			return err
		}
		_, err = io.WriteString(out, "\r\n--"+boundary+"--\r\n")
		return err
	})
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	ct := ` multipart/encrypted; protocol="application/pgp-encrypted";` + "\r\n\t" + `boundary="` + boundary + `"`
	if err := replaceContentFields(tx, []field{{"Content-Type", ct}}); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	return opes.Verdict{Kind: opes.Continue, Action: "modified"}, nil
}

// writeEntity writes the MIME entity fs + body in canonical form.
func writeEntity(w io.Writer, fs []field, body *opes.Body) error {
	if err := writeFields(w, fs); err != nil {
		return err
	}
	if _, err := io.WriteString(w, "\r\n"); err != nil {
		return err
	}
	var r io.Reader = bytes.NewReader(nil)
	if body != nil {
		r = body.Reader()
	}
	if _, err := io.Copy(&crlfWriter{w: w}, r); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	return nil
}

// entityBytes reads the entity fs + body into memory in canonical form,
// up to max octets.
func entityBytes(fs []field, body *opes.Body, max int64) ([]byte, error) {
	if body != nil && body.Size() > max {
		return nil, errTooLarge
	}
	var b bytes.Buffer
	if err := writeEntity(&b, fs, body); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
