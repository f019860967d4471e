package normalize

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/opesmilter/opes-milter/opes"
)

// RFC 5321 §4.5.3.1: a path is at most 256 octets with its angle brackets,
// so an address is at most 254; a local part 64, a domain 255, a label 63.
const (
	maxAddress   = 254
	maxLocalPart = 64
	maxDomain    = 255
	maxLabel     = 63
)

// commandVerdict refuses a MAIL or RCPT whose address or parameters cannot
// be rewritten into valid form: the milter protocol can replace an
// envelope address only at the end of data, and then the MTA has already
// accepted the broken value.
func commandVerdict(what string, a opes.Address, utf8ok, rcpt bool) opes.Verdict {
	if code, enh, why := checkAddress(a.Addr, utf8ok, rcpt); why != "" {
		return opes.Verdict{
			Kind:   opes.Reject,
			Reply:  opes.Reply{Code: code, Enhanced: enh, Text: what + " address cannot be normalised (" + why + ")"},
			Reason: why,
		}
	}
	if why := checkParams(a.Args, utf8ok); why != "" {
		return opes.Verdict{
			Kind:   opes.Reject,
			Reply:  opes.Reply{Code: 555, Enhanced: "5.5.4", Text: what + " parameters cannot be normalised (" + why + ")"},
			Reason: why,
		}
	}
	return opes.ContinueVerdict
}

// checkAddress returns the reply codes and a reason when addr cannot be
// used; why is "" when it can.
func checkAddress(addr string, utf8ok, rcpt bool) (code int, enhanced, why string) {
	const c, e = 553, "5.1.3"
	if addr == "" {
		if rcpt {
			return c, e, "empty address"
		}
		return 0, "", "" // the null reverse-path
	}
	if len(addr) > maxAddress {
		return c, e, fmt.Sprintf("address longer than %d octets", maxAddress)
	}
	ascii := true
	for i := 0; i < len(addr); i++ {
		b := addr[i]
		if b < 0x20 || b == 0x7f {
			return c, e, fmt.Sprintf("control character 0x%02x in address", b)
		}
		if b >= 0x80 {
			ascii = false
		}
	}
	if !ascii {
		if !utf8ok {
			return 553, "5.6.7", "non-ASCII address without SMTPUTF8"
		}
		if !utf8.ValidString(addr) {
			return c, e, "address is not valid UTF-8"
		}
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return 0, "", "" // unqualified: the MTA qualifies it (postmaster, local submission)
	}
	local, domain := addr[:at], addr[at+1:]
	switch {
	case local == "":
		return c, e, "empty local part"
	case len(local) > maxLocalPart:
		return c, e, fmt.Sprintf("local part longer than %d octets", maxLocalPart)
	case domain == "":
		return c, e, "empty domain"
	case len(domain) > maxDomain:
		return c, e, fmt.Sprintf("domain longer than %d octets", maxDomain)
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") || len(domain) < 3 {
			return c, e, "malformed address literal"
		}
		return 0, "", ""
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || len(label) > maxLabel {
			return c, e, "malformed domain"
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b >= 0x80
			if !ok {
				return c, e, fmt.Sprintf("byte 0x%02x in domain", b)
			}
		}
	}
	return 0, "", ""
}

// checkParams applies RFC 5321 §4.1.2 to ESMTP parameters:
// esmtp-keyword ["=" esmtp-value], keyword (ALPHA/DIGIT) *(ALPHA/DIGIT/"-"),
// value 1*(%d33-60 / %d62-126) (UTF-8 too under SMTPUTF8, RFC 6531), each
// keyword once.
func checkParams(args []string, utf8ok bool) string {
	seen := map[string]bool{}
	for _, arg := range args {
		k, v, hasValue := strings.Cut(arg, "=")
		if k == "" {
			return "parameter without keyword"
		}
		for i := 0; i < len(k); i++ {
			b := k[i]
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || (b == '-' && i > 0)) {
				return fmt.Sprintf("byte 0x%02x in parameter keyword", b)
			}
		}
		if hasValue && v == "" {
			return "empty parameter value"
		}
		for i := 0; i < len(v); i++ {
			b := v[i]
			if b >= 0x80 && utf8ok {
				continue
			}
			if b < 33 || b > 126 || b == '=' {
				return fmt.Sprintf("byte 0x%02x in parameter value", b)
			}
		}
		if hasValue && !utf8.ValidString(v) {
			return "parameter value is not valid UTF-8"
		}
		key := strings.ToUpper(k)
		if seen[key] {
			return "duplicate parameter " + opes.SanitizeText(key, 32)
		}
		seen[key] = true
	}
	return ""
}
