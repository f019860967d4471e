package opes

import (
	"errors"
	"fmt"
	"mime"
	"net/netip"
	"strings"
)

// Connection holds what the MTA told us about the SMTP client. Every value
// came from the wire or from MTA macros and is untrusted: it is never copied
// raw into a header field or a reply.
type Connection struct {
	Hostname string     // client host name as the MTA reports it ("[192.0.2.1]" when unresolved)
	Addr     netip.Addr // client address; invalid for non-IP connections
	Port     uint16
	Family   string // "tcp4", "tcp6", "unix", "unknown"
	Helo     string // last HELO/EHLO argument

	TLSVersion  string
	Cipher      string
	CertSubject string
	AuthType    string // SASL mechanism, empty when not authenticated
	AuthUser    string // SASL login name, empty when not authenticated

	MTAName    string // macro j
	DaemonName string // macro {daemon_name}
}

// TLS reports whether the session is encrypted.
func (c *Connection) TLS() bool { return c.TLSVersion != "" || c.Cipher != "" }

// Authenticated reports whether the client authenticated with SMTP AUTH.
func (c *Connection) Authenticated() bool { return c.AuthUser != "" }

// Address is an envelope address with its ESMTP parameters.
type Address struct {
	Addr string   // without angle brackets; empty for the null reverse-path
	Args []string // ESMTP parameters as the MTA passed them, e.g. "SIZE=1024"
}

// Domain returns the part after the last @, lower-cased; empty if none.
func (a Address) Domain() string {
	if i := strings.LastIndexByte(a.Addr, '@'); i >= 0 {
		return strings.ToLower(a.Addr[i+1:])
	}
	return ""
}

// Arg returns the value of ESMTP parameter key (case-insensitive) and
// whether it was present.
func (a Address) Arg(key string) (string, bool) {
	for _, arg := range a.Args {
		k, v, _ := strings.Cut(arg, "=")
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return "", false
}

// Recipient is one RCPT TO of the transaction.
type Recipient struct {
	Address
	// Refused is set when the processor refused this recipient at RCPT.
	Refused bool
}

// Transaction is one message: the connection facts, the envelope, the
// header and the body as the MTA sent them, and the changes services made
// at the end of the message.
type Transaction struct {
	Conn       *Connection
	QueueID    string // MTA queue id (macro i), when known
	Sender     *Address
	Recipients []*Recipient
	// Header is the working copy of the message header. Services may change
	// it at StageEOM only; the processor turns the differences into milter
	// actions and protects trace fields.
	Header *Header
	// Body holds the message body, spooled to disk above a threshold.
	Body *Body

	stage    Stage
	traceID  string
	envelope envelopeChanges
	newBody  *Body
	retired  []*Body // replaced replacements, closed with the transaction
	// signed: the message arrived signed or encrypted (signedContent).
	signed, signedKnown bool
}

type envelopeChanges struct {
	sender  *Address
	added   []Address
	deleted []string
}

// ErrNotAtEOM is returned by modifying calls made before the end of the
// message: the milter protocol allows changes only there.
var ErrNotAtEOM = errors.New("opes: message changes are only allowed at the end of the message")

// Stage returns the stage the transaction is at.
func (t *Transaction) Stage() Stage { return t.stage }

// TraceID returns the trace id, empty until the processor assigned it.
func (t *Transaction) TraceID() string { return t.traceID }

// AcceptedRecipients returns the recipients not refused at RCPT.
func (t *Transaction) AcceptedRecipients() []*Recipient {
	var out []*Recipient
	for _, r := range t.Recipients {
		if !r.Refused {
			out = append(out, r)
		}
	}
	return out
}

// Size is the number of body octets received so far.
func (t *Transaction) Size() int64 {
	if t.Body == nil {
		return 0
	}
	return t.Body.Size()
}

// ChangeSender replaces the envelope sender.
func (t *Transaction) ChangeSender(a Address) error {
	if t.stage != StageEOM {
		return ErrNotAtEOM
	}
	if err := checkEnvelopeAddr(a.Addr); err != nil {
		return err
	}
	t.envelope.sender = &a
	return nil
}

// AddRecipient adds an envelope recipient.
func (t *Transaction) AddRecipient(a Address) error {
	if t.stage != StageEOM {
		return ErrNotAtEOM
	}
	if a.Addr == "" {
		return errors.New("opes: empty recipient")
	}
	if err := checkEnvelopeAddr(a.Addr); err != nil {
		return err
	}
	t.envelope.added = append(t.envelope.added, a)
	return nil
}

// DeleteRecipient removes an envelope recipient.
func (t *Transaction) DeleteRecipient(addr string) error {
	if t.stage != StageEOM {
		return ErrNotAtEOM
	}
	if err := checkEnvelopeAddr(addr); err != nil {
		return err
	}
	t.envelope.deleted = append(t.envelope.deleted, addr)
	return nil
}

// ReplaceBody replaces the message body with the content written by fill.
func (t *Transaction) ReplaceBody(fill func(w *Body) error) error {
	if t.stage != StageEOM {
		return ErrNotAtEOM
	}
	var opts BodyOptions
	if t.Body != nil {
		opts = t.Body.opts
	}
	nb := NewBody(opts)
	if err := fill(nb); err != nil {
		_ = nb.Close()
		return fmt.Errorf("opes: replace body: %w", err)
	}
	if t.newBody != nil {
		// Kept until the transaction ends: the processor may restore it
		// (a change to signed content is undone).
		t.retired = append(t.retired, t.newBody)
	}
	t.newBody = nb
	return nil
}

func checkEnvelopeAddr(a string) error {
	if len(a) > 512 {
		return errors.New("opes: address longer than 512 octets")
	}
	for i := 0; i < len(a); i++ {
		if a[i] < 0x21 || a[i] == 0x7f || a[i] == '<' || a[i] == '>' {
			return fmt.Errorf("opes: address contains byte 0x%02x", a[i])
		}
	}
	return nil
}

func (t *Transaction) close() {
	if t.Body != nil {
		_ = t.Body.Close()
	}
	if t.newBody != nil {
		_ = t.newBody.Close()
	}
	for _, b := range t.retired {
		_ = b.Close()
	}
	t.retired = nil
}

// signedContent reports whether the message is signed or encrypted as a
// whole (S/MIME, PGP/MIME), judged by its top-level Content-Type as
// received: fixed when the end of message begins, so that a service that
// rewrites the Content-Type along with the body cannot hide it.
func (t *Transaction) signedContent() bool {
	if t.signedKnown {
		return t.signed
	}
	t.signed, t.signedKnown = t.computeSigned(), true
	return t.signed
}

func (t *Transaction) computeSigned() bool {
	mt, _, err := mime.ParseMediaType(t.Header.Get("Content-Type"))
	if err != nil {
		return false
	}
	switch mt {
	case "multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted":
		return true
	case "application/pkcs7-signature", "application/x-pkcs7-signature":
		return true
	}
	return false
}

// CurrentBody is the body as it stands: the replacement an earlier
// service made at the end of message, else the body the MTA sent. A
// service that signs or scans what will be delivered reads this one.
func (t *Transaction) CurrentBody() *Body {
	if t.newBody != nil {
		return t.newBody
	}
	return t.Body
}
