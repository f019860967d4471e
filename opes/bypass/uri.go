package bypass

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// MaxURILen bounds a normalised URI. It keeps every entry of a folded
// OPES-Bypass field on a line of at most 998 octets (RFC 5322 §2.1.1),
// "OPES-Bypass: " and the trailing "," included, since a URI cannot be
// folded.
const MaxURILen = 960

// maxRawURILen bounds the input of NormalizeURI: percent-decoding can shrink
// a URI to a third, so a longer input can never normalise to MaxURILen.
const maxRawURILen = 3 * MaxURILen

// NormalizeURI returns the normal form of an absolute URI (RFC 3986 §4.3)
// used for every bypass comparison: syntax-based normalisation (§6.2.2:
// lower-case scheme and host, upper-case percent-encoding hex digits,
// percent-encoded unreserved characters decoded, dot segments removed) and
// scheme-based normalisation (§6.2.3: an empty port and the default port of
// http (80) and https (443) removed, an empty http/https path becomes "/").
// IPv6 literals take their RFC 5952 text form.
//
// It fails for anything that is not an absolute URI: a relative reference,
// a fragment, whitespace, control or non-ASCII octets (an IRI must be
// converted to a URI first; trace and bypass data are US-ASCII), a character
// RFC 3986 does not allow where it stands, a bad percent-encoding, an http
// or https URI without a host, a port above 65535, or a result longer than
// MaxURILen. NormalizeURI(NormalizeURI(s)) == NormalizeURI(s).
func NormalizeURI(s string) (string, error) {
	if s == "" {
		return "", errors.New("bypass: empty uri")
	}
	if len(s) > maxRawURILen {
		return "", fmt.Errorf("bypass: uri longer than %d octets", maxRawURILen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80:
			return "", fmt.Errorf("bypass: uri has a non-ASCII octet at offset %d", i)
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			return "", fmt.Errorf("bypass: uri has whitespace at offset %d", i)
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("bypass: uri has a control octet 0x%02x at offset %d", c, i)
		case !isURIChar(c):
			return "", fmt.Errorf("bypass: uri has %q at offset %d", c, i)
		}
	}
	colon := strings.IndexAny(s, ":/?#")
	if colon <= 0 || s[colon] != ':' {
		return "", fmt.Errorf("bypass: %q is not an absolute uri (no scheme)", s)
	}
	scheme := s[:colon]
	if !isScheme(scheme) {
		return "", fmt.Errorf("bypass: bad uri scheme %q", scheme)
	}
	scheme = strings.ToLower(scheme)
	rest := s[colon+1:]
	if strings.IndexByte(rest, '#') >= 0 {
		return "", errors.New("bypass: uri has a fragment")
	}
	hier, query, hasQuery := strings.Cut(rest, "?")
	web := scheme == "http" || scheme == "https"

	// One buffer, appended to component by component: the result costs
	// one allocation plus the final string.
	b := make([]byte, 0, len(s)+1)
	b = append(b, scheme...)
	b = append(b, ':')

	path := hier
	hasAuth := strings.HasPrefix(hier, "//")
	if hasAuth {
		auth := hier[2:]
		path = ""
		if i := strings.IndexByte(auth, '/'); i >= 0 {
			auth, path = auth[:i], auth[i:]
		}
		b = append(b, "//"...)
		var err error
		if b, err = appendAuthority(b, auth, scheme); err != nil {
			return "", err
		}
	} else if web {
		return "", fmt.Errorf("bypass: %s uri without a host", scheme)
	}

	off := len(b)
	var err error
	if b, err = appendPct(b, path, isPathChar, false); err != nil {
		return "", fmt.Errorf("bypass: uri path: %w", err)
	}
	// Dot segments only mean something in a hierarchical path; "urn:a/../b"
	// is opaque and stays as it is.
	if len(b) > off && b[off] == '/' {
		b = b[:off+len(removeDotSegments(b[off:]))]
	}
	if !hasAuth && len(b) > off+1 && b[off] == '/' && b[off+1] == '/' {
		// Serialised, the path would read as an authority.
		return "", errors.New("bypass: uri path starts with \"//\" without an authority")
	}
	if web && len(b) == off {
		b = append(b, '/')
	}

	if hasQuery {
		b = append(b, '?')
		if b, err = appendPct(b, query, isQueryChar, false); err != nil {
			return "", fmt.Errorf("bypass: uri query: %w", err)
		}
	}
	if len(b) > MaxURILen {
		return "", fmt.Errorf("bypass: normalised uri longer than %d octets", MaxURILen)
	}
	return string(b), nil
}

// appendAuthority appends the normal form of authority = [ userinfo "@" ]
// host [ ":" port ].
func appendAuthority(b []byte, auth, scheme string) ([]byte, error) {
	var err error
	if i := strings.LastIndexByte(auth, '@'); i >= 0 {
		// userinfo cannot hold "@", so appendPct rejects a second one.
		if b, err = appendPct(b, auth[:i], isUserinfoChar, false); err != nil {
			return nil, fmt.Errorf("bypass: uri userinfo: %w", err)
		}
		b = append(b, '@')
		auth = auth[i+1:]
	}
	host, port := auth, ""
	hasPort := false
	if strings.HasPrefix(auth, "[") {
		end := strings.IndexByte(auth, ']')
		if end < 0 {
			return nil, errors.New("bypass: uri ip-literal without ']'")
		}
		host = auth[:end+1]
		switch after := auth[end+1:]; {
		case after == "":
		case after[0] == ':':
			port, hasPort = after[1:], true
		default:
			return nil, fmt.Errorf("bypass: uri has %q after the ip-literal", after)
		}
		if b, err = appendIPLiteral(b, host[1:end]); err != nil {
			return nil, err
		}
	} else {
		if i := strings.LastIndexByte(auth, ':'); i >= 0 {
			host, port, hasPort = auth[:i], auth[i+1:], true
		}
		if host == "" && (scheme == "http" || scheme == "https") {
			return nil, fmt.Errorf("bypass: %s uri with an empty host", scheme)
		}
		if b, err = appendPct(b, host, isRegNameChar, true); err != nil {
			return nil, fmt.Errorf("bypass: uri host: %w", err)
		}
	}
	if !hasPort || port == "" {
		return b, nil // RFC 3986 §6.2.3: "host:" is "host"
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return nil, fmt.Errorf("bypass: uri port %q is not a number", port)
		}
	}
	trimmed := strings.TrimLeft(port, "0")
	if len(trimmed) > 5 {
		return nil, fmt.Errorf("bypass: uri port %q out of range", port)
	}
	n := 0
	if trimmed != "" {
		n, _ = strconv.Atoi(trimmed)
	}
	if n > 65535 {
		return nil, fmt.Errorf("bypass: uri port %q out of range", port)
	}
	if (scheme == "http" && n == 80) || (scheme == "https" && n == 443) {
		return b, nil
	}
	b = append(b, ':')
	return strconv.AppendInt(b, int64(n), 10), nil
}

// appendIPLiteral appends "[" lit "]" in normal form: IPv6 in RFC 5952
// text, IPvFuture lower-cased. Zone identifiers (RFC 6874) are refused:
// they mean nothing outside one host.
func appendIPLiteral(b []byte, lit string) ([]byte, error) {
	if lit != "" && (lit[0] == 'v' || lit[0] == 'V') {
		ver, rest, ok := strings.Cut(lit[1:], ".")
		if !ok || ver == "" || rest == "" {
			return nil, fmt.Errorf("bypass: bad uri IPvFuture %q", lit)
		}
		for i := 0; i < len(ver); i++ {
			if !isHex(ver[i]) {
				return nil, fmt.Errorf("bypass: bad uri IPvFuture %q", lit)
			}
		}
		for i := 0; i < len(rest); i++ {
			if c := rest[i]; !isUnreserved(c) && !isSubDelim(c) && c != ':' {
				return nil, fmt.Errorf("bypass: bad uri IPvFuture %q", lit)
			}
		}
		b = append(b, '[')
		for i := 0; i < len(lit); i++ {
			b = append(b, toLower(lit[i]))
		}
		return append(b, ']'), nil
	}
	a, err := netip.ParseAddr(lit)
	if err != nil || !a.Is6() || a.Zone() != "" {
		return nil, fmt.Errorf("bypass: bad uri IPv6 literal %q", lit)
	}
	b = append(b, '[')
	b = a.AppendTo(b)
	return append(b, ']'), nil
}

// appendPct appends s, checking every literal octet with allowed, decoding
// percent-encoded unreserved octets and upper-casing the hex digits of the
// others (RFC 3986 §6.2.2.1, §6.2.2.2). lower lower-cases literal letters
// (and decoded ones), for the host.
func appendPct(b []byte, s string, allowed func(byte) bool, lower bool) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return nil, fmt.Errorf("bad percent-encoding at %q", s[i:min(i+3, len(s))])
			}
			v := unhex(s[i+1])<<4 | unhex(s[i+2])
			i += 2
			if isUnreserved(v) {
				if lower {
					v = toLower(v)
				}
				b = append(b, v)
				continue
			}
			const hexUpper = "0123456789ABCDEF"
			b = append(b, '%', hexUpper[v>>4], hexUpper[v&15])
			continue
		}
		if !allowed(c) {
			return nil, fmt.Errorf("%q not allowed", c)
		}
		if lower {
			c = toLower(c)
		}
		b = append(b, c)
	}
	return b, nil
}

// removeDotSegments is RFC 3986 §5.2.4 for a path starting with "/",
// in place: the output never overtakes the input it has consumed.
func removeDotSegments(p []byte) []byte {
	if !bytes.Contains(p, []byte("/.")) {
		return p
	}
	out := p[:0]
	for i := 0; i < len(p); {
		j := i + 1 // p[i] is "/"
		for j < len(p) && p[j] != '/' {
			j++
		}
		seg := p[i+1 : j]
		last := j == len(p)
		switch string(seg) {
		case ".":
		case "..":
			if k := bytes.LastIndexByte(out, '/'); k >= 0 {
				out = out[:k]
			}
		default:
			out = append(out, p[i:j]...)
			i = j
			continue
		}
		if last {
			// "/a/." and "/a/b/.." both end in a directory: "/a/".
			out = append(out, '/')
		}
		i = j
	}
	return out
}

func isScheme(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlpha(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || ((c|0x20) >= 'a' && (c|0x20) <= 'f') }

func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return (c | 0x20) - 'a' + 10
}

func toLower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

func isSubDelim(c byte) bool { return strings.IndexByte("!$&'()*+,;=", c) >= 0 }

// isURIChar reports whether c may appear anywhere in a URI (RFC 3986 §2).
func isURIChar(c byte) bool {
	return isUnreserved(c) || isSubDelim(c) || strings.IndexByte(":/?#[]@%", c) >= 0
}

func isRegNameChar(c byte) bool  { return isUnreserved(c) || isSubDelim(c) }
func isUserinfoChar(c byte) bool { return isRegNameChar(c) || c == ':' }
func isPathChar(c byte) bool     { return isUserinfoChar(c) || c == '@' || c == '/' }
func isQueryChar(c byte) bool    { return isPathChar(c) || c == '?' }
