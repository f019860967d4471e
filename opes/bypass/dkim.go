package bypass

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/readguard"
)

// Bounds on DKIM verification (SignedBy).
const (
	// MaxSignatures is how many DKIM-Signature fields are verified, from
	// the top; the others are ignored. Each costs a key lookup and a body
	// hash.
	MaxSignatures = 8
	// MaxHeaderBytes bounds the message header read to count fields.
	MaxHeaderBytes = 1 << 20
)

// LookupTXTFunc returns the TXT records of a domain name. The records of a
// DKIM key are at <selector>._domainkey.<domain>.
type LookupTXTFunc func(ctx context.Context, domain string) ([]string, error)

// SignedBy returns the signing domains (d=, lower-cased, deduplicated, in
// header order) of the DKIM signatures of msg (header and body, CRLF or LF
// line ends) that verify and vouch for every OPES-Bypass field of the
// message. It returns nil at once when the message has no OPES-Bypass field
// or no DKIM-Signature field. lookupTXT is the DNS TXT lookup; nil means the
// system resolver.
//
// A signature vouches for the fields when it verifies and its h= tag names
// OPES-Bypass at least as many times as the message has OPES-Bypass fields.
// RFC 6376 §5.4.2 signs instances of a repeated field from the bottom up:
// h= naming OPES-Bypass once signs only the last field. Anyone on the path
// can add a field above it ("OPES-Bypass: *") without breaking the
// signature, and the processor honours the union of all fields, so a
// signature that leaves one field out vouches for nothing: it is not
// counted. A signer that wants its request to stay its own lists the name
// once more than it has fields (over-signing, §8.15): an added field then
// breaks the signature.
//
// Which domains are trusted is the caller's policy: d= need not be the
// From domain or the envelope sender's, and SignedBy does not compare them.
//
// A signature that fails, whose key cannot be found, or whose lookup fails
// does not count; that is not an error, since for the mail flow it only
// means "not trusted". Only the first MaxSignatures signatures are
// verified. The returned error reports that the message could not be read
// (header beyond MaxHeaderBytes, read error, ctx done); callers treat it as
// "no signer" as well, it never makes mail fail.
func SignedBy(ctx context.Context, msg io.Reader, lookupTXT LookupTXTFunc) ([]string, error) {
	if lookupTXT == nil {
		lookupTXT = net.DefaultResolver.LookupTXT
	}
	gr := readguard.New(ctx, msg)
	br := bufio.NewReaderSize(gr, 32<<10)
	hdr, nBypass, nSig, err := readHeader(br)
	if gr.Err() != nil {
		err = gr.Err() // the cause, rather than the EOF it became
	}
	if err != nil {
		return nil, fmt.Errorf("bypass: dkim: read header: %w", err)
	}
	if nBypass == 0 || nSig == 0 {
		return nil, nil
	}
	verifs, err := dkim.VerifyWithOptions(io.MultiReader(bytes.NewReader(hdr), br), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return lookupTXT(ctx, domain)
		},
		MaxVerifications: MaxSignatures,
	})
	if gr.Err() != nil {
		return nil, fmt.Errorf("bypass: dkim: read message: %w", gr.Err())
	}
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		return nil, fmt.Errorf("bypass: dkim: verify: %w", err)
	}
	var domains []string
	for _, v := range verifs {
		if v == nil || v.Err != nil || v.Domain == "" {
			continue
		}
		listed := 0
		for _, k := range v.HeaderKeys {
			if strings.EqualFold(strings.TrimSpace(k), FieldName) {
				listed++
			}
		}
		if listed < nBypass {
			continue
		}
		d := strings.ToLower(v.Domain)
		if !contains(domains, d) {
			domains = append(domains, d)
		}
	}
	return domains, nil
}

// readHeader reads the header up to and including the empty line (which
// it supplies if the message ends first), counting
// OPES-Bypass and DKIM-Signature fields the way go-msgauth's verifier splits
// them (a line starting with space or tab continues the previous field;
// names are compared trimmed and case-insensitively), so the count matches
// the fields its bottom-up picker sees.
func readHeader(br *bufio.Reader) (hdr []byte, nBypass, nSig int, err error) {
	for {
		start := len(hdr)
		for {
			chunk, err := br.ReadSlice('\n')
			hdr = append(hdr, chunk...)
			if len(hdr) > MaxHeaderBytes {
				return nil, 0, 0, fmt.Errorf("header longer than %d octets", MaxHeaderBytes)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF {
				// RFC 5322 §3.5: a message may end after its header,
				// without the empty line; its body is empty. Close the
				// last line and the header so the verifier sees that.
				if len(hdr) == start {
					return append(hdr, "\r\n"...), nBypass, nSig, nil
				}
				hdr = append(hdr, "\r\n"...)
				break
			}
			if err != nil {
				return nil, 0, 0, err
			}
			break
		}
		// As bufio.Reader.ReadLine, under textproto: "\n" and one "\r".
		line := bytes.TrimSuffix(bytes.TrimSuffix(hdr[start:], []byte("\n")), []byte("\r"))
		if len(line) == 0 {
			return hdr, nBypass, nSig, nil
		}
		if start > 0 && (line[0] == ' ' || line[0] == '\t') {
			continue
		}
		name, _, _ := bytes.Cut(line, []byte(":"))
		name = bytes.TrimSpace(name)
		switch {
		case bytes.EqualFold(name, []byte(FieldName)):
			nBypass++
		case bytes.EqualFold(name, []byte("DKIM-Signature")):
			nSig++
		}
	}
}
