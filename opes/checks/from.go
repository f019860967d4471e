package checks

import (
	"io"
	"mime"
	"net/mail"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// Names of the From: findings.
const (
	FromMismatch = "from-mismatch" // a From: address of another organisation than the envelope sender
	FromInvalid  = "from-invalid"  // a From: field that does not parse as an address list
)

var fromText = map[string]string{
	FromMismatch: "Envelope sender domain does not match the From: domain",
	FromInvalid:  "From: header field is not a valid address list",
}

// addrParser decodes encoded words in any charset: only the addresses
// matter, so an unknown charset in a display name must not make the
// field unparsable.
var addrParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// checkFrom compares the organisational domain of the envelope sender
// with that of every address in the From: fields. It judges nothing for
// the null sender (bounces come from the MTA of any domain), a sender
// without a domain, or a message without From:. Every From: address must
// match: mail clients show the first, and a second From: field matching
// the envelope must not hide a forged one.
func checkFrom(sender *opes.Address, from []string) (Finding, bool) {
	if sender == nil || sender.Addr == "" || len(from) == 0 {
		return Finding{}, false
	}
	env := orgDomain(sender.Domain())
	if env == "" {
		return Finding{}, false
	}
	name := ""
	for _, v := range from {
		list, err := addrParser.ParseList(v)
		if err != nil || len(list) == 0 {
			name = FromInvalid
			break
		}
		for _, a := range list {
			at := strings.LastIndexByte(a.Address, '@')
			if at < 0 || orgDomain(a.Address[at+1:]) != env {
				name = FromMismatch
			}
		}
	}
	if name == "" {
		return Finding{}, false
	}
	return Finding{Name: name, Text: fromText[name]}, true
}

// orgDomain approximates the organisational domain (DMARC, RFC 7489
// §3.2) by the last two labels, lower-cased: "mail.example.com" and
// "example.com" are one organisation. Without the Public Suffix List it
// errs towards a match under multi-label suffixes ("a.co.uk" and
// "b.co.uk" compare equal), so a finding is never a false alarm from
// that cause. "" when d is not a domain.
func orgDomain(d string) string {
	d, ok := normalizeDomain(strings.TrimSpace(d))
	if !ok {
		return ""
	}
	labels := strings.Split(d, ".")
	if len(labels) > 2 {
		labels = labels[len(labels)-2:]
	}
	return strings.Join(labels, ".")
}
