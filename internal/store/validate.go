package store

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on stored strings: the values come from SMTP clients and admin
// requests and must not grow the database without bound. maxText also
// keeps a reply text or note readable.
const (
	maxAddr = 320 // RFC 5321 local part 64 + "@" + domain 255
	maxText = 8192
)

// checkText accepts valid UTF-8 without NUL (PostgreSQL text holds
// neither, and both backends must accept the same values) up to maxText.
func checkText(what, s string) error {
	switch {
	case len(s) > maxText:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxText)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%w: %s contains NUL", ErrInvalid, what)
	}
	return nil
}

// cleanText makes s storable instead of refusing it: used for error texts
// we record about ourselves, where losing the record would be worse than
// a replaced byte.
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) > maxText {
		s = strings.ToValidUTF8(s[:maxText], "")
	}
	return s
}

func hasSpaceOrControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
	}) >= 0
}

// checkAddr accepts an envelope address as it reaches us, without angle
// brackets: printable, no spaces, bounded.
func checkAddr(what, a string) error {
	switch {
	case a == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(a) > maxAddr:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxAddr)
	case !utf8.ValidString(a) || hasSpaceOrControl(a) || strings.ContainsAny(a, "<>"):
		return fmt.Errorf("%w: %s %q", ErrInvalid, what, a)
	}
	return nil
}

// normalizeAddr is what an address from the wire is compared as:
// without angle brackets, lower-cased.
func normalizeAddr(a string) string {
	a = strings.TrimSpace(a)
	a = strings.TrimPrefix(a, "<")
	a = strings.TrimSuffix(a, ">")
	return strings.ToLower(a)
}

// domainOf returns the part after the last "@", or "".
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return addr[i+1:]
}

// normalizeTarget validates and lower-cases a preference's recipient or
// sender: "local@domain" or "@domain"; "" only if emptyOK (any sender).
func normalizeTarget(s string, emptyOK bool) (string, error) {
	s = normalizeAddr(s)
	if s == "" {
		if emptyOK {
			return "", nil
		}
		return "", fmt.Errorf("%w: empty address", ErrInvalid)
	}
	if err := checkAddr("address", s); err != nil {
		return "", err
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return "", fmt.Errorf("%w: %q is neither an address nor @domain", ErrInvalid, s)
	}
	local, domain := s[:at], s[at+1:]
	if strings.HasPrefix(s, "@") && strings.Count(s, "@") > 1 {
		return "", fmt.Errorf("%w: %q is neither an address nor @domain", ErrInvalid, s)
	}
	if domain == "" || strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") ||
		strings.Contains(domain, "..") {
		return "", fmt.Errorf("%w: bad domain in %q", ErrInvalid, s)
	}
	if local != "" && len(local) > 64 {
		return "", fmt.Errorf("%w: local part of %q longer than 64 bytes", ErrInvalid, s)
	}
	return s, nil
}

// checkID rejects what cannot be an ID we assigned (a ULID), so that a
// typo gives ErrInvalid and odd bytes never reach a query.
func checkID(id string) error {
	if len(id) != 26 {
		return fmt.Errorf("%w: id %q is not a ULID", ErrInvalid, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
			return fmt.Errorf("%w: id %q is not a ULID", ErrInvalid, id)
		}
	}
	return nil
}

// checkEnvelope checks a stored message's envelope: a sender, or none
// for the null reverse-path, and at least one recipient.
func checkEnvelope(sender string, recipients []string) error {
	if sender != "" {
		if err := checkAddr("sender", sender); err != nil {
			return err
		}
	}
	if len(recipients) == 0 {
		return fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	for _, r := range recipients {
		if err := checkAddr("recipient", r); err != nil {
			return err
		}
	}
	return nil
}

func checkQuarantineItem(it *QuarantineItem) error {
	if err := checkEnvelope(it.Sender, it.Recipients); err != nil {
		return err
	}
	if len(it.RecipientArgs) == 0 {
		it.RecipientArgs = nil
	}
	if it.RecipientArgs != nil && len(it.RecipientArgs) != len(it.Recipients) {
		return fmt.Errorf("%w: %d recipient parameter sets for %d recipients", ErrInvalid, len(it.RecipientArgs), len(it.Recipients))
	}
	for _, m := range it.RecipientArgs {
		for k, v := range m {
			if err := checkText("recipient parameter name", k); err != nil {
				return err
			}
			if err := checkText("recipient parameter "+k, v); err != nil {
				return err
			}
		}
	}
	for _, f := range []struct{ what, v string }{
		{"trace id", it.TraceID}, {"queue id", it.QueueID}, {"envid", it.EnvID},
		{"reason", it.Reason}, {"service", it.Service},
	} {
		if err := checkText(f.what, f.v); err != nil {
			return err
		}
	}
	if !it.Expires.IsZero() && !it.Created.IsZero() && it.Expires.Before(it.Created) {
		return fmt.Errorf("%w: expires before created", ErrInvalid)
	}
	it.Recipients = append([]string(nil), it.Recipients...)
	if it.RecipientArgs != nil {
		args := make([]map[string]string, len(it.RecipientArgs))
		for i, m := range it.RecipientArgs {
			if m != nil {
				args[i] = make(map[string]string, len(m))
				for k, v := range m {
					args[i][k] = v
				}
			}
		}
		it.RecipientArgs = args
	}
	return nil
}

func checkOutboxItem(it *OutboxItem) error {
	if err := checkEnvelope(it.Sender, it.Recipients); err != nil {
		return err
	}
	if len(it.Data) == 0 {
		return fmt.Errorf("%w: empty message", ErrInvalid)
	}
	if it.Attempts < 0 {
		return fmt.Errorf("%w: negative attempts", ErrInvalid)
	}
	if err := checkText("trace id", it.TraceID); err != nil {
		return err
	}
	it.LastError = cleanText(it.LastError)
	it.Recipients = append([]string(nil), it.Recipients...)
	return nil
}

// recipientKeys are the values a quarantine recipient filter matches:
// each recipient lower-cased and its "@domain".
func recipientKeys(rcpts []string) []string {
	seen := make(map[string]bool, 2*len(rcpts))
	var keys []string
	for _, r := range rcpts {
		r = strings.ToLower(r)
		for _, k := range []string{r, "@" + domainOf(r)} {
			if k != "@" && !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	return keys
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}
