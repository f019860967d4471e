package pgp

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/opesmilter/opes-milter/opes"
)

// micalgs names the hashes a signature may use in multipart/signed's
// micalg parameter (RFC 3156 §5, RFC 4880 §9.4).
var micalgs = map[crypto.Hash]string{
	crypto.SHA256: "pgp-sha256", crypto.SHA384: "pgp-sha384", crypto.SHA512: "pgp-sha512",
	crypto.SHA224: "pgp-sha224", crypto.SHA3_256: "pgp-sha3-256", crypto.SHA3_512: "pgp-sha3-512",
}

// sign turns the message into multipart/signed (RFC 3156 §5) when the
// envelope sender has a key: the first part is the original entity made
// 7bit, the second its detached signature.
func (s *service) sign(tx *opes.Transaction) (opes.Verdict, error) {
	if sig, enc := protectedType(mediaTypeOf(tx)); sig || enc {
		return skippedSigned, nil
	}
	if tx.Sender == nil || tx.Sender.Addr == "" {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	el := s.lookup(tx.Sender.Addr)
	if el == nil {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	raw, err := entityBytes(nil, tx.CurrentBody(), s.maxSize)
	if errors.Is(err, errTooLarge) {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: "too-large"}, nil
	}
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	fs, body, err := to7bit(contentFields(tx), raw[2:], 0) // raw starts with the empty header's CRLF
	if err != nil {
		// Mail that cannot be signed is delivered unsigned, traced.
		s.log.Info("pgp: not signed", "trace_id", tx.TraceID(), "err", err)
		reason := "malformed-mime"
		if errors.Is(err, errUnencodable) {
			reason = "8bit-unencodable"
		}
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: reason}, nil
	}
	var entity bytes.Buffer
	if err := writeFields(&entity, fs); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	entity.WriteString("\r\n")
	entity.Write(body)

	var sig bytes.Buffer
	cfg := &packet.Config{DefaultHash: crypto.SHA256}
	if err := openpgp.DetachSign(&sig, el[0], bytes.NewReader(entity.Bytes()), cfg); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: sign for %s: %w", tx.Sender.Addr, err)
	}
	p, err := packet.Read(bytes.NewReader(sig.Bytes()))
	sp, ok := p.(*packet.Signature)
	if err != nil || !ok {
		return opes.Verdict{}, fmt.Errorf("pgp: read back the signature: %v", err)
	}
	micalg, ok := micalgs[sp.Hash]
	if !ok {
		return opes.Verdict{}, fmt.Errorf("pgp: the key of %s signed with hash %v, which has no micalg name", tx.Sender.Addr, sp.Hash)
	}
	var armored bytes.Buffer
	if err := armorSignature(&armored, sig.Bytes()); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	boundary, err := newBoundary()
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	err = tx.ReplaceBody(func(w *opes.Body) error {
		// The signed part is written as signed, byte for byte; the CRLF
		// after it belongs to the delimiter (RFC 2046 §5.1.1).
		for _, chunk := range [][]byte{
			[]byte("This is an OpenPGP/MIME signed message (RFC 3156).\r\n--" + boundary + "\r\n"),
			entity.Bytes(),
			[]byte("\r\n--" + boundary + "\r\n" +
				"Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n" +
				"Content-Description: OpenPGP digital signature\r\n" +
				"Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n"),
			crlf(armored.Bytes()),
			[]byte("\r\n--" + boundary + "--\r\n"),
		} {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	ct := ` multipart/signed; micalg=` + micalg + `; protocol="application/pgp-signature";` + "\r\n\t" + `boundary="` + boundary + `"`
	if err := replaceContentFields(tx, []field{{"Content-Type", ct}}); err != nil {
		return opes.Verdict{}, fmt.Errorf("pgp: %w", err)
	}
	return opes.Verdict{Kind: opes.Continue, Action: "modified"}, nil
}

func mediaTypeOf(tx *opes.Transaction) string {
	mt, _ := contentType(tx)
	return mt
}

func armorSignature(w io.Writer, sig []byte) error {
	aw, err := armorEncode(w, "PGP SIGNATURE")
	if err != nil {
		return err
	}
	if _, err := aw.Write(sig); err != nil {
		return err
	}
	return aw.Close()
}
