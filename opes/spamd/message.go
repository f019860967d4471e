package spamd

import (
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/spamengine"
	"github.com/opesmilter/opes-milter/opes"
)

// Bounds of the text the service writes.
const (
	maxHostname = 255 // a DNS name is at most 253 octets; HELO may be a literal
	maxAddr     = 512 // the envelope address bound the processor enforces
	maxLine     = 998 // RFC 5322 §2.1.1
	foldAt      = 78  // RFC 5322 §2.1.1 "SHOULD"
)

// envelopeLines builds the synthetic Return-Path and Received lines that
// tell SpamAssassin what the message itself does not yet carry: the
// envelope sender and the hop from the SMTP client. The Received line
// uses Postfix's layout, which SpamAssassin's Received parser knows:
//
//	Received: from HELO (RDNS [IP])
//		by MTA (opes-milter) with ESMTP[S][A] id QUEUEID; DATE
//
// Every value comes from the wire and is sanitised: a HELO with spaces or
// parentheses could otherwise forge a second, trusted hop.
func envelopeLines(tx *opes.Transaction, now time.Time) string {
	var b strings.Builder
	if tx.Sender != nil {
		if a, ok := envelopeAddr(tx.Sender.Addr); ok {
			b.WriteString("Return-Path: <" + a + ">\r\n")
		}
	}
	c := tx.Conn
	if c == nil || !c.Addr.IsValid() {
		// No IP (a unix-socket or unknown client): a hop without an
		// address would only mislead the relay rules.
		return b.String()
	}
	rdns := hostToken(c.Hostname)
	if rdns == "" || strings.HasPrefix(rdns, "[") {
		rdns = "unknown" // Postfix's word for "no verified reverse name"
	}
	helo := hostToken(c.Helo)
	if helo == "" {
		helo = "unknown"
	}
	by := hostToken(c.MTAName)
	if by == "" {
		by = "localhost"
	}
	with := "ESMTP"
	if c.TLS() {
		with += "S"
	}
	if c.Authenticated() {
		// Only the fact, never the login name: SpamAssassin treats an
		// ESMTPA hop as authenticated submission.
		with += "A"
	}
	b.WriteString("Received: from " + helo + " (" + rdns + " [" + c.Addr.Unmap().String() + "])\r\n")
	b.WriteString("\tby " + by + " (opes-milter) with " + with)
	if id := hostToken(tx.QueueID); id != "" {
		b.WriteString(" id " + id)
	}
	b.WriteString(";\r\n\t" + now.Format("Mon, 02 Jan 2006 15:04:05 -0700") + "\r\n")
	return b.String()
}

// hostToken keeps what may appear in a host name, an address literal or
// a queue id, replaces anything else with '_' and bounds the length.
func hostToken(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxHostname {
		s = s[:maxHostname]
	}
	b := []byte(s)
	// Brackets only around a whole address literal ("[192.0.2.1]"): one
	// inside a name could be read as the relay's address.
	literal := len(b) >= 2 && b[0] == '[' && b[len(b)-1] == ']'
	for i, c := range b {
		bracket := (c == '[' && i == 0 || c == ']' && i == len(b)-1) && literal
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || bracket) {
			b[i] = '_'
		}
	}
	return string(b)
}

// envelopeAddr returns the sender if it can go between angle brackets
// as it is; a null sender is "".
func envelopeAddr(a string) (string, bool) {
	if len(a) > maxAddr {
		return "", false
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c <= 0x20 || c > 0x7e || c == '<' || c == '>' {
			return "", false
		}
	}
	return a, true
}

// statusValue is X-Spam-Status in SpamAssassin's layout:
//
//	Yes, score=1000.0 required=5.0 tests=GTUBE,NO_RECEIVED
//
// folded at spaces only. The test list has no spaces, so it is cut (at a
// comma, ending in ",...") to keep every line within 998 octets.
func statusValue(res *result) string {
	yes := "No"
	if res.Spam {
		yes = "Yes"
	}
	tests := "none"
	if len(res.Symbols) > 0 {
		tests = strings.Join(res.Symbols, ",")
	}
	// A folded line is a tab plus the word.
	if room := maxLine - 1 - len("tests="); len(tests) > room {
		cut := strings.LastIndexByte(tests[:room-len(",...")+1], ',')
		if cut < 0 {
			cut = 0
		}
		tests = tests[:cut] + ",..."
	}
	words := []string{yes + ",", "score=" + spamengine.FormatScore(res.Score), "required=" + spamengine.FormatScore(res.Required), "tests=" + tests}
	return fold(len(FieldStatus)+2, words)
}

// fold joins words with spaces, starting a new line ("\r\n\t") before a
// word that would take the line past foldAt. used is the length of what
// precedes the value on the first line ("Name: ").
func fold(used int, words []string) string {
	var b strings.Builder
	n := used
	for i, w := range words {
		if i > 0 {
			if n+1+len(w) > foldAt {
				b.WriteString("\r\n\t")
				n = 1
			} else {
				b.WriteByte(' ')
				n++
			}
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
