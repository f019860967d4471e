package checks

import (
	"net/netip"
	"strings"
)

// Names of the HELO findings.
const (
	HeloInvalid    = "helo-invalid"     // neither a domain nor an address literal (RFC 5321 §4.1.2)
	HeloNotFQDN    = "helo-not-fqdn"    // a single label
	HeloBareIP     = "helo-bare-ip"     // an IP address without brackets
	HeloIPMismatch = "helo-ip-mismatch" // an address literal that is not the client's address
	HeloLocalName  = "helo-local-name"  // one of our own host names
)

var heloText = map[string]string{
	HeloInvalid:    "HELO name is not a valid domain or address literal",
	HeloNotFQDN:    "HELO name is not a fully qualified domain",
	HeloBareIP:     "HELO name is an IP address without brackets",
	HeloIPMismatch: "HELO address literal is not the client address",
	HeloLocalName:  "HELO name is one of our own host names",
}

// checkHelo reports the first problem of the HELO name helo given by the
// client at addr (invalid when unknown), or false when the name is fine.
// The findings exclude each other, most basic first, so a name gets one.
// An empty name (no HELO reached the milter) is not judged.
func checkHelo(helo string, addr netip.Addr, local map[string]bool) (Finding, bool) {
	name := ""
	switch {
	case helo == "":
	case strings.HasPrefix(helo, "["):
		lit, ok := parseAddressLiteral(helo)
		switch {
		case !ok:
			name = HeloInvalid
		case addr.IsValid() && lit != unmap(addr):
			name = HeloIPMismatch
		}
	case isBareIP(helo):
		name = HeloBareIP
	default:
		d, ok := normalizeDomain(helo)
		switch {
		case !ok:
			name = HeloInvalid
		case !strings.Contains(d, "."):
			name = HeloNotFQDN
		case local[d]:
			name = HeloLocalName
		}
	}
	if name == "" {
		return Finding{}, false
	}
	return Finding{Name: name, Text: heloText[name]}, true
}

// parseAddressLiteral parses "[192.0.2.1]" and "[IPv6:2001:db8::1]"
// (RFC 5321 §4.1.3). General literals ("[tag:...]") name no address this
// side could compare and are refused as invalid.
func parseAddressLiteral(s string) (netip.Addr, bool) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, false
	}
	in := s[1 : len(s)-1]
	if len(in) > 5 && strings.EqualFold(in[:5], "IPv6:") {
		a, err := netip.ParseAddr(in[5:])
		// A zone ("%eth0") or an IPv4-mapped form has no place in
		// a literal a remote client sends.
		if err != nil || !a.Is6() || a.Zone() != "" || a.Is4In6() {
			return netip.Addr{}, false
		}
		return a, true
	}
	a, err := netip.ParseAddr(in)
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}

// isBareIP reports an IPv4 or IPv6 address written without brackets,
// with or without the "IPv6:" tag.
func isBareIP(s string) bool {
	if len(s) > 5 && strings.EqualFold(s[:5], "IPv6:") {
		s = s[5:]
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

// normalizeDomain checks RFC 5321 Domain syntax (letters, digits and
// hyphens; labels of 1 to 63 octets not starting or ending with a hyphen;
// 253 octets in all) and returns the name lower-cased. One trailing dot,
// the DNS absolute form, is accepted and removed, as Postfix does. A
// top-level label of digits only is refused (RFC 3696 §2): such a name
// is a mangled address. Underscores are refused: they are legal in DNS
// but not in a host name.
func normalizeDomain(s string) (string, bool) {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return "", false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return "", false
			}
		}
	}
	if len(labels) > 1 && allDigits(labels[len(labels)-1]) {
		return "", false
	}
	return strings.ToLower(s), true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
