package opes

import (
	"net/netip"
	"strings"
)

// Consent lists the parties on whose behalf the services act (RFC 3238
// §2.1 one-party consent; PROFILE §6): recipients for inbound mail,
// senders for outbound mail. Mail for which no party consented is traced
// and nothing else.
type Consent struct {
	// All: every recipient and sender consented (a gateway whose whole
	// traffic is delegated to it). Stated explicitly, never a default.
	All bool
	// Recipients are inbound parties: "user@example.net" or "@example.net".
	Recipients []string
	// Senders are outbound parties, same forms; a consenting sender covers
	// every recipient of its transaction.
	Senders []string
	// Party names the consenting party on the disclosure page, e.g.
	// "Example Net Ltd for example.net and example.org".
	Party string
}

// RecipientConsents reports whether mail to rcpt may be processed.
func (c *Consent) RecipientConsents(rcpt string) bool {
	return c == nil || c.All || matchParty(c.Recipients, rcpt)
}

// SenderConsents reports whether mail from sender may be processed for
// every recipient.
func (c *Consent) SenderConsents(sender string) bool {
	return c == nil || c.All || (sender != "" && matchParty(c.Senders, sender))
}

// matchParty matches an address against "user@domain" and "@domain"
// entries, case-insensitively.
func matchParty(list []string, addr string) bool {
	addr = strings.ToLower(addr)
	at := strings.LastIndexByte(addr, '@')
	for _, e := range list {
		if e == addr || (at >= 0 && e == addr[at:]) {
			return true
		}
	}
	return false
}

// BypassPolicy configures bypass requests (PROFILE §5, RFC 3897).
type BypassPolicy struct {
	// UnknownAsAll treats a requested URI that names nothing of ours as
	// "*" (RFC 3897 §4.3); the policy loader defaults it to true.
	UnknownAsAll bool
	// Trust sources that make an in-message or dialog request
	// authenticated.
	TrustAuth        bool           // the client authenticated (SMTP AUTH)
	TrustNetworks    []netip.Prefix // the client address is in one
	TrustPreferences bool           // every recipient has an out-of-band entry for the sender
	// DKIMDomains: a valid DKIM signature by one of these d= domains whose
	// h= covers OPES-Bypass authenticates an in-message request; the entry
	// "sender" means the envelope sender's domain.
	DKIMDomains []string
}
