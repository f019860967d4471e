package bypass

import (
	"errors"
	"fmt"
	"strings"
)

// ParamName is the ESMTP parameter of MAIL and RCPT that carries a bypass
// request in the SMTP dialog (PROFILE §5), under the EHLO keyword X-OPES.
const ParamName = "X-OPES-BYPASS"

// ParseParam parses the value of X-OPES-BYPASS=<xtext>: the xtext is
// decoded (DecodeXtext), then read as "*" or a comma-separated list of
// absolute URIs with the grammar of ParseField minus whitespace, folding
// and empty elements (profile digest §9.4). Any error means the caller
// answers 501 5.5.4; a duplicate parameter on one command is for the
// caller to detect. The xtext is at most MaxParamXtext characters.
func ParseParam(xtext string) (Request, error) {
	if len(xtext) > MaxParamXtext {
		return Request{}, fmt.Errorf("bypass: %s value longer than %d characters", ParamName, MaxParamXtext)
	}
	s, err := DecodeXtext(xtext)
	if err != nil {
		return Request{}, err
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return Request{}, fmt.Errorf("bypass: %s value has octet 0x%02x at offset %d", ParamName, c, i)
		}
	}
	return parseList(s, true)
}

// Param renders r as the xtext value of X-OPES-BYPASS that ParseParam
// reads back to the same request (if it fits in MaxParamXtext): "*" or the
// URIs joined by ",". The zero Request renders as "".
func (r Request) Param() string {
	if r.All {
		return "*"
	}
	return EncodeXtext(strings.Join(r.URIs, ","))
}

// DecodeXtext decodes RFC 3461 §4 xtext: "+" followed by two upper-case
// hex digits stands for that octet; every other character must be in
// "!" (33) to "~" (126) and not "+" or "=". Anything else is an error.
func DecodeXtext(s string) (string, error) {
	if strings.IndexByte(s, '+') < 0 {
		for i := 0; i < len(s); i++ {
			if !isXchar(s[i]) {
				return "", xtextError(s, i)
			}
		}
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '+' {
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return "", fmt.Errorf("bypass: xtext: bad hexchar at offset %d (\"+\" and two upper-case hex digits)", i)
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		if !isXchar(c) {
			return "", xtextError(s, i)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

func xtextError(s string, i int) error {
	if s[i] == '=' {
		return errors.New("bypass: xtext: \"=\" must be encoded as +3D")
	}
	return fmt.Errorf("bypass: xtext: octet 0x%02x at offset %d must be encoded", s[i], i)
}

// EncodeXtext encodes s as RFC 3461 xtext: octets outside "!".."~", "+"
// and "=" become "+XX".
func EncodeXtext(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isXchar(c) {
			b.WriteByte(c)
			continue
		}
		const hexUpper = "0123456789ABCDEF"
		b.WriteByte('+')
		b.WriteByte(hexUpper[c>>4])
		b.WriteByte(hexUpper[c&15])
	}
	return b.String()
}

func isXchar(c byte) bool    { return c >= 33 && c <= 126 && c != '+' && c != '=' }
func isUpperHex(c byte) bool { return isDigit(c) || (c >= 'A' && c <= 'F') }
