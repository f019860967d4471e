package ndr

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"regexp"
	"strings"
	"time"
)

// Recipient is one dropped recipient to report, with what arrived for it
// in the SMTP dialog.
type Recipient struct {
	// Address is the envelope recipient as accepted (RCPT TO, without the
	// angle brackets), reported exactly, case preserved.
	Address string
	// ORCPT is the RCPT ORCPT parameter as received, "addr-type;xtext";
	// empty when none was given (then no Original-Recipient is written).
	ORCPT string
	// Notify is the RCPT NOTIFY parameter as received; empty when none.
	Notify string
	// Status is the RFC 3463 enhanced status code, e.g. "5.7.1". Anything
	// that is not a valid 5.x.y code is reported as 5.0.0 (RFC 3461 §6.3g):
	// the action is "failed", which is permanent.
	Status string
	// Diagnostic is the SMTP reply we would have given in the dialog,
	// lines separated by CRLF or LF (an "smtp;" prefix is accepted too).
	Diagnostic string
	// Via is the OPES-Via trace value for this recipient.
	Via string
}

// Report is everything one non-delivery report says. Values marked "from
// the wire" are sanitised by Build; configuration values are checked.
type Report struct {
	ReportingMTA string // host name of this MTA (configuration)
	From         string // header From address; default MAILER-DAEMON@ReportingMTA
	SystemURI    string // OPES system URI (configuration)
	PolicyURL    string // policy and bypass page; default SystemURI
	TraceID      string // the message's trace id
	Arrival      time.Time
	// ReversePath is the original MAIL FROM (from the wire): the report's
	// To and envelope recipient.
	ReversePath string
	// EnvID is the MAIL ENVID parameter as received (xtext, from the
	// wire); empty when none was given.
	EnvID      string
	Service    string // URI of the service that decided
	Bypassable bool   // whether that service may be bypassed
	Reason     string // human text (may come from a service or the wire)
	Recipients []Recipient
	// Headers is the processed message header, including our OPES trace
	// fields (from the wire); returned as text/rfc822-headers. Anything
	// after the first empty line is ignored.
	Headers []byte
	// MessageIDDomain is the right-hand side of the report's Message-ID;
	// default ReportingMTA.
	MessageIDDomain string
	// Date is the report's Date; zero means now. MessageID (without angle
	// brackets) is generated when empty. Both exist so a report can be
	// rebuilt byte for byte (tests, replays).
	Date      time.Time
	MessageID string
}

// Subject of every report: fixed, so nothing from the wire reaches it.
const Subject = "Undelivered Mail: refused by OPES policy"

// dateLayout is the RFC 5322 date-time with a numeric zone.
const dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

var statusCode = regexp.MustCompile(`^5\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$`)

// Build writes the report as a complete message with CRLF line ends: an
// RFC 3464 multipart/report in the layout of PROFILE §4. It fails only
// for missing or invalid configuration values and an empty report (no
// recipient, null reverse-path); values from the wire never make it fail,
// they are sanitised or encoded.
func Build(r Report) ([]byte, error) {
	rp := ReturnPath(r.ReversePath)
	switch {
	case rp == "":
		return nil, errors.New("ndr: build report: null reverse-path gets no report")
	case len(r.Recipients) == 0:
		return nil, errors.New("ndr: build report: no recipients")
	case !printableASCII(r.SystemURI) || len(r.SystemURI) > maxFieldValue:
		return nil, fmt.Errorf("ndr: build report: system URI %q is not printable US-ASCII", r.SystemURI)
	case r.PolicyURL != "" && (!printableASCII(r.PolicyURL) || len(r.PolicyURL) > maxFieldValue):
		return nil, fmt.Errorf("ndr: build report: policy URL %q is not printable US-ASCII", r.PolicyURL)
	case r.Service != "" && (!printableASCII(r.Service) || len(r.Service) > maxFieldValue):
		return nil, fmt.Errorf("ndr: build report: service URI %q is not printable US-ASCII", r.Service)
	}
	mta := strings.TrimSuffix(r.ReportingMTA, ".")
	if !printableASCII(mta) || len(mta) > 255 {
		return nil, fmt.Errorf("ndr: build report: reporting MTA %q is not a host name", r.ReportingMTA)
	}
	trace := traceID(r.TraceID)
	if trace == "" {
		return nil, fmt.Errorf("ndr: build report: trace id %q has no printable character", r.TraceID)
	}
	from := r.From
	if from == "" {
		from = "MAILER-DAEMON@" + mta
	}
	if !headerAddress(from) {
		return nil, fmt.Errorf("ndr: build report: From %q is not an address", from)
	}
	date := r.Date
	if date.IsZero() {
		date = time.Now()
	}
	msgID := r.MessageID
	if msgID == "" {
		var err error
		if msgID, err = newMessageID(r.MessageIDDomain, mta); err != nil {
			return nil, err
		}
	}
	if !headerAddress(msgID) {
		return nil, fmt.Errorf("ndr: build report: Message-ID %q is not id-left@id-right", msgID)
	}

	parts := [][]byte{r.humanPart(rp, mta, trace), r.statusPart(mta, trace)}
	if h := returnedHeader(r.Headers); h != nil {
		parts = append(parts, h)
	}
	boundary := makeBoundary(parts)

	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <%s>\r\n", from)
	if headerAddress(rp) {
		fmt.Fprintf(&b, "To: <%s>\r\n", rp)
	} else {
		// An SMTPUTF8 or hostile reverse-path cannot go in a US-ASCII
		// header; the envelope still carries it.
		b.WriteString("To: undisclosed-recipients:;\r\n")
	}
	fmt.Fprintf(&b, "Subject: %s\r\n", Subject)
	fmt.Fprintf(&b, "Date: %s\r\n", date.Format(dateLayout))
	fmt.Fprintf(&b, "Message-ID: <%s>\r\n", msgID)
	b.WriteString("Auto-Submitted: auto-replied\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n", boundary)
	b.WriteString("\r\nThis is a MIME-encapsulated message.\r\n")
	for _, p := range parts {
		fmt.Fprintf(&b, "\r\n--%s\r\n", boundary)
		b.Write(p)
	}
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes(), nil
}

// humanPart is part 1: what happened, for the sender, naming what RFC 4902
// §3.1/§4 asks for (system, trace id, service, bypassability, recipients,
// policy page).
func (r *Report) humanPart(rp, mta, trace string) []byte {
	policy := r.PolicyURL
	if policy == "" {
		policy = r.SystemURI
	}
	var lines []string
	add := func(l ...string) { lines = append(lines, l...) }
	add("This is the mail system at host "+mta+".", "")
	add(wrapText("Your message was accepted by "+mta+", but it was not delivered to the "+
		"recipients below: an OPES service of this mail system refused it after "+
		"the message had been accepted.", "", 72)...)
	add("")
	for _, rc := range r.Recipients {
		add(wrapText("<"+humanText(rc.Address, 300)+">: "+reportStatus(rc.Status), "    ", 76)...)
	}
	if reason := humanText(r.Reason, maxReasonRunes); reason != "" {
		add("", "Reason:")
		add(wrapText(reason, "    ", 76)...)
	}
	add("")
	add(labeled("OPES system:", r.SystemURI)...)
	add(labeled("Trace id:", trace)...)
	if r.Service != "" {
		add(labeled("OPES service:", r.Service)...)
		if r.Bypassable {
			add(labeled("Bypassable:", "yes - you may ask for this service to be "+
				"bypassed; the policy page below says how.")...)
		} else {
			add(labeled("Bypassable:", "no - this service cannot be bypassed.")...)
		}
	}
	add("", "Policy, privacy statement, contact and bypass options:")
	add(wrapText(policy, "    ", 76)...)
	add("")
	add(wrapText("Please quote the trace id when you contact the postmaster. The "+
		"delivery report and the header of your message are attached.", "", 72)...)

	text := strings.Join(lines, "\n")
	var b bytes.Buffer
	if isASCII(text) {
		b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
		b.WriteString("Content-Description: Notification\r\n")
		b.WriteString("Content-Transfer-Encoding: 7bit\r\n\r\n")
		for _, l := range lines {
			b.WriteString(l)
			b.WriteString("\r\n")
		}
		return b.Bytes()
	}
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Description: Notification\r\n")
	b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
	for _, l := range lines {
		writeQPLine(&b, l)
	}
	return b.Bytes()
}

// labeled is "label  value" with the value wrapped under itself.
func labeled(label, value string) []string {
	const indent = "              "
	lines := wrapText(value, indent, 76)
	if len(lines) == 0 {
		return []string{label}
	}
	lines[0] = label + indent[len(label):] + strings.TrimLeft(lines[0], " ")
	return lines
}

// traceID keeps the printable US-ASCII of a trace id (ours, or the MTA's
// queue id), at most 128 octets.
func traceID(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 128; i++ {
		if s[i] >= 0x21 && s[i] <= 0x7e {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// statusPart is part 2, message/delivery-status (RFC 3464 §2, 7bit).
func (r *Report) statusPart(mta, trace string) []byte {
	var b bytes.Buffer
	b.WriteString("Content-Type: message/delivery-status\r\n")
	b.WriteString("Content-Description: Delivery report\r\n")
	b.WriteString("Content-Transfer-Encoding: 7bit\r\n\r\n")
	field := func(name, value string) { fmt.Fprintf(&b, "%s: %s\r\n", name, value) }

	if r.EnvID != "" {
		field("Original-Envelope-Id", decodedXtextField(r.EnvID))
	}
	if isFQDN(mta) {
		field("Reporting-MTA", "dns; "+mta)
	} else {
		// RFC 3461 §6.3b: without a domain name the type must not be dns.
		field("Reporting-MTA", "x-local-hostname; "+mta)
	}
	if !r.Arrival.IsZero() {
		field("Arrival-Date", r.Arrival.Format(dateLayout))
	}
	field("X-OPES-System", listValue("X-OPES-System", r.SystemURI+"; id="+paramValue(trace)))

	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		if rc.ORCPT != "" {
			field("Original-Recipient", originalRecipientField(rc.ORCPT))
		}
		field("Final-Recipient", recipientField(rc.Address))
		field("Action", "failed")
		field("Status", reportStatus(rc.Status))
		if d := diagnosticCode(rc.Diagnostic); d != "" {
			field("Diagnostic-Code", d)
		}
		field("Final-Log-ID", trace)
		if via := textASCII(rc.Via, maxTraceValue); via != "" {
			field("X-OPES-Via", listValue("X-OPES-Via", via))
		}
	}
	// The part ends with the last field's CRLF; the CRLF before the
	// boundary belongs to the boundary (RFC 2046 §5.1.1).
	return b.Bytes()
}

// listValue folds a trace list for the field name. A list with a piece
// too long for one line (which our own trace never has) is cut to one
// line instead: bounded beats complete for a value from elsewhere.
func listValue(name, value string) string {
	folded := foldList(len(name), value)
	for _, l := range strings.Split(folded, "\r\n") {
		if len(name)+2+len(l) > 998 {
			return value[:min(len(value), maxFieldValue)]
		}
	}
	return folded
}

// reportStatus is the Status value: the given code when it is a valid
// permanent RFC 3463 code, else 5.0.0 (RFC 3461 §6.3g).
func reportStatus(s string) string {
	s = strings.TrimSpace(s)
	if statusCode.MatchString(s) {
		return s
	}
	return "5.0.0"
}

// diagnosticCode renders an SMTP reply as an "smtp" diagnostic-code (RFC
// 3461 §9.2): every reply line after the first on a continuation line
// starting with a space. Reply lines are made printable US-ASCII and
// bounded in length and count, so the field can neither break out of its
// group nor exceed 998 octets per line.
func diagnosticCode(reply string) string {
	reply = strings.TrimSpace(reply)
	if len(reply) >= 5 && strings.EqualFold(reply[:5], "smtp;") {
		reply = strings.TrimSpace(reply[5:])
	}
	var lines []string
	for _, l := range strings.Split(reply, "\n") {
		if l = textASCII(strings.TrimSuffix(l, "\r"), maxReplyLine); l != "" && len(lines) < maxReplyLines {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "smtp; " + strings.Join(lines, "\r\n ")
}

// returnedHeader is part 3, the processed message header as
// text/rfc822-headers, or nil when there is none. It stops at the first
// empty line (no body ever leaks), is bounded, and is quoted-printable
// when it holds anything but US-ASCII text lines of at most 998 octets,
// so the report stays 7bit for any relay.
func returnedHeader(h []byte) []byte {
	var lines [][]byte
	size := 0
	for len(h) > 0 {
		var line []byte
		if i := bytes.IndexByte(h, '\n'); i >= 0 {
			line, h = h[:i], h[i+1:]
		} else {
			line, h = h, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if size += len(line) + 2; size > maxHeaderBytes {
			break
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 {
		return nil
	}
	sevenBit := true
	for _, l := range lines {
		if len(l) > 998 || !isTextASCII(l) {
			sevenBit = false
			break
		}
	}
	var b bytes.Buffer
	b.WriteString("Content-Type: text/rfc822-headers\r\n")
	b.WriteString("Content-Description: Undelivered message header\r\n")
	if sevenBit {
		b.WriteString("Content-Transfer-Encoding: 7bit\r\n\r\n")
		for _, l := range lines {
			b.Write(l)
			b.WriteString("\r\n")
		}
	} else {
		b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
		for _, l := range lines {
			writeQPLine(&b, string(l))
		}
	}
	return b.Bytes()
}

// writeQPLine writes one line quoted-printable (binary mode, so a stray
// CR or LF inside the line is encoded, not taken as a line break) and ends
// it with a hard CRLF.
func writeQPLine(b *bytes.Buffer, line string) {
	w := quotedprintable.NewWriter(b)
	w.Binary = true
	w.Write([]byte(line)) //nolint:errcheck // bytes.Buffer never fails
	w.Close()             //nolint:errcheck
	b.WriteString("\r\n")
}

func isTextASCII(l []byte) bool {
	for _, c := range l {
		if (c < 0x20 && c != '\t') || c > 0x7e {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] > 0x7e || (s[i] < 0x20 && s[i] != '\n') {
			return false
		}
	}
	return true
}

// makeBoundary derives the boundary from a hash of the parts: it is
// deterministic (golden files) and, being a digest of the content, cannot
// appear in it — checked anyway, with a counter as the way out.
func makeBoundary(parts [][]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	for n := 0; ; n++ {
		b := "=_opes-ndr_" + sum[:32]
		if n > 0 {
			b += fmt.Sprintf("_%d", n)
		}
		clash := false
		for _, p := range parts {
			if bytes.Contains(p, []byte("--"+b)) {
				clash = true
				break
			}
		}
		if !clash {
			return b
		}
	}
}

// newMessageID makes a unique id-left@id-right from random bits.
func newMessageID(domain, mta string) (string, error) {
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("ndr: build report: Message-ID: %w", err)
	}
	switch {
	case isFQDN(domain):
	case isFQDN(mta):
		domain = mta
	default:
		domain = "opes-milter.invalid"
	}
	return fmt.Sprintf("ndr.%d.%s@%s", time.Now().Unix(), hex.EncodeToString(rnd[:]), strings.TrimSuffix(domain, ".")), nil
}

// ReturnPath is the address a report for mail from reversePath goes to:
// angle brackets and surrounding space removed, an RFC 5321 source route
// ("@a,@b:user@host") cut to the mailbox (RFC 3461 §6.1 via RFC 5321
// §3.3). It is "" for the null reverse-path.
func ReturnPath(reversePath string) string {
	s := strings.TrimSpace(reversePath)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	if strings.HasPrefix(s, "@") {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			s = s[i+1:]
		}
	}
	return s
}

// Needed returns the recipients a report must be sent for: none when the
// reverse-path is null (RFC 5321 §6.1, RFC 3461 §5.2 — whatever the
// header says), and of the others only those whose NOTIFY asks for
// failures (RFC 3461 §5.2.6): no NOTIFY, or a list naming FAILURE.
// NOTIFY=NEVER and lists without FAILURE (SUCCESS, DELAY) get none. A
// NOTIFY value that is not valid RFC 3461 syntax — the MTA should have
// refused it — counts as absent, so the sender is told rather than not.
//
// Reverse-paths such as MAILER-DAEMON@... or postmaster@... are NOT
// suppressed: our report is sent with a null reverse-path, so it can never
// bounce back and loop (the loop protection RFC 5321 §6.1 relies on), and
// a postmaster is exactly who should hear about lost mail. Messages that
// are themselves reports arrive with a null reverse-path and get nothing.
func Needed(reversePath string, rcpts []Recipient) []Recipient {
	if ReturnPath(reversePath) == "" {
		return nil
	}
	var out []Recipient
	for _, rc := range rcpts {
		if wantsFailure(rc.Notify) {
			out = append(out, rc)
		}
	}
	return out
}

func wantsFailure(notify string) bool {
	notify = strings.TrimSpace(notify)
	if notify == "" {
		return true
	}
	items := strings.Split(notify, ",")
	failure := false
	for _, it := range items {
		switch strings.ToUpper(strings.TrimSpace(it)) {
		case "NEVER":
			if len(items) != 1 {
				return true // NEVER must stand alone: invalid, counts as absent
			}
		case "FAILURE":
			failure = true
		case "SUCCESS", "DELAY":
		default:
			return true
		}
	}
	return failure
}
