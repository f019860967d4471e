// Package notify is the service that tells people what the services
// before it found (RFC 4496 §4.1: "warn in Subject or body", "notify
// sender / recipients / admin by mail"). It runs at the end of the
// message, last in the policy, and acts when a header field that an
// earlier service added or changed in this transaction matches one of its
// triggers — clamav's X-Virus, spamd's X-Spam-Status, attachments'
// X-OPES-Attachment — or, for any message, when its "when" condition
// holds.
//
// Only fields added or changed during this transaction count as findings:
// the service remembers the header as the client sent it (at the end of
// the header block), so a sender who forges "X-Virus: yes" cannot make it
// send mail.
//
// Actions: a Subject prefix, a warning in the body (prepended to a plain
// text message, or a text part added in front of any other), and
// notification messages to the admin, the recipients and — off by
// default, it is backscatter for spam and viruses with forged senders —
// the sender. Notifications carry no original content beyond a few header
// fields, are sent with a null reverse-path and Auto-Submitted:
// auto-generated, and are stored durably through a Submitter (the NDR
// outbox) before the service answers.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"regexp"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/match"
)

// Submitter stores a notification durably for delivery with MAIL FROM:<>
// to one address; *ndr.Worker implements it. Submit returns only once
// the message is stored.
type Submitter interface {
	Submit(ctx context.Context, traceID string, data []byte, to string) error
}

// Deps are what the daemon gives the service besides its options.
type Deps struct {
	// Submitter queues notifications. Nil: a message that should cause a
	// notification makes the hook fail (its on_error decides), so a
	// policy that mails nobody can still be checked without a store.
	Submitter Submitter
	// Hostname names this host in Message-ID and the default From
	// (MAILER-DAEMON@Hostname); default the host of the system URI.
	Hostname string
	// From is the default From of notifications ([ndr] from); the
	// service's own from option wins.
	From string
	// Log receives one line per notification decision; nil discards.
	Log *slog.Logger
}

// Limits.
const (
	DefaultMaxNotifications = 10  // per message
	maxMaxNotifications     = 100 // what max_notifications may be set to
	maxTriggers             = 100
	maxAdmins               = 50
	maxReason               = 200
	maxWarnText             = 4000
	maxPrefix               = 100
)

// Warn-body modes.
const (
	WarnPrepend = "prepend" // into a plain text message; a new part in front for anything else
	WarnPart    = "part"    // always a new text part in front
)

type options struct {
	AddedHeader      []string   `toml:"added_header"`
	Reason           string     `toml:"reason"`
	SubjectPrefix    string     `toml:"subject_prefix"`
	WarnBody         string     `toml:"warn_body"`
	WarnText         string     `toml:"warn_text"`
	NotifyAdmin      []string   `toml:"notify_admin"`
	NotifyRecipients bool       `toml:"notify_recipients"`
	NotifySender     bool       `toml:"notify_sender"`
	From             string     `toml:"from"`
	MaxNotifications int        `toml:"max_notifications"`
	When             match.Spec `toml:"when"`
}

type trigger struct {
	name string
	re   *regexp.Regexp // nil: the field only has to be added
}

type service struct {
	triggers   []trigger
	when       *match.Condition
	reason     string
	prefix     string
	warnMode   string // "" = no body warning
	warnText   string
	admins     []string
	recipients bool
	sender     bool
	from       string
	max        int
	deps       Deps
	log        *slog.Logger
	needs      opes.Needs
}

// New builds the service from its options, without daemon dependencies:
// notifications by mail then fail at run time. The daemon uses
// NewWithDeps.
func New(decode func(v any) error) (opes.Service, error) { return NewWithDeps(decode, Deps{}) }

// NewWithDeps builds the service from its options with the daemon's
// dependencies.
func NewWithDeps(decode func(v any) error, deps Deps) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("notify: decode options: %w", err)
		}
	}
	s := &service{deps: deps, recipients: o.NotifyRecipients, sender: o.NotifySender, log: deps.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if len(o.AddedHeader) > maxTriggers {
		return nil, opes.FieldErrorf("added_header", "%d entries, at most %d", len(o.AddedHeader), maxTriggers)
	}
	for i, v := range o.AddedHeader {
		tr, err := parseTrigger(v)
		if err != nil {
			return nil, &opes.FieldError{Field: fmt.Sprintf("added_header[%d]", i+1), Err: err}
		}
		s.triggers = append(s.triggers, tr)
	}
	when, err := match.Compile(o.When)
	if err != nil {
		var fe *opes.FieldError
		if errors.As(err, &fe) {
			return nil, &opes.FieldError{Field: "when." + fe.Field, Err: fe.Err}
		}
		return nil, &opes.FieldError{Field: "when", Err: err}
	}
	s.when = when
	if len(s.triggers) == 0 && when.Empty() {
		return nil, opes.FieldErrorf("added_header", "added_header or when is required: without a trigger the service would act on every message")
	}
	if o.Reason != "" {
		if err := checkText(o.Reason, maxReason, false); err != nil {
			return nil, &opes.FieldError{Field: "reason", Err: err}
		}
		s.reason = strings.TrimSpace(o.Reason)
	}
	if o.SubjectPrefix != "" {
		p := strings.TrimSpace(o.SubjectPrefix)
		if err := opes.CheckPrintable(p, maxPrefix); err != nil {
			return nil, &opes.FieldError{Field: "subject_prefix", Err: err}
		}
		s.prefix = p
	}
	switch o.WarnBody {
	case "", "off":
	case WarnPrepend, WarnPart:
		s.warnMode = o.WarnBody
	default:
		return nil, opes.FieldErrorf("warn_body", "%q: want %q, %q or \"off\"", o.WarnBody, WarnPrepend, WarnPart)
	}
	if o.WarnText != "" {
		if s.warnMode == "" {
			return nil, opes.FieldErrorf("warn_text", "is set but warn_body is off")
		}
		// ASCII only: the text is put in front of a part in whatever
		// charset that part declares.
		if err := checkText(o.WarnText, maxWarnText, true); err != nil {
			return nil, &opes.FieldError{Field: "warn_text", Err: err}
		}
		s.warnText = strings.TrimRight(strings.ReplaceAll(o.WarnText, "\r\n", "\n"), "\n")
	}
	if len(o.NotifyAdmin) > maxAdmins {
		return nil, opes.FieldErrorf("notify_admin", "%d addresses, at most %d", len(o.NotifyAdmin), maxAdmins)
	}
	for i, a := range o.NotifyAdmin {
		if err := checkAddress(a); err != nil {
			return nil, &opes.FieldError{Field: fmt.Sprintf("notify_admin[%d]", i+1), Err: err}
		}
		s.admins = append(s.admins, a)
	}
	if o.From != "" {
		if err := checkAddress(o.From); err != nil {
			return nil, &opes.FieldError{Field: "from", Err: err}
		}
		s.from = o.From
	} else if deps.From != "" && checkAddress(deps.From) == nil {
		s.from = deps.From
	}
	switch {
	case o.MaxNotifications == 0:
		s.max = DefaultMaxNotifications
	case o.MaxNotifications < 0 || o.MaxNotifications > maxMaxNotifications:
		return nil, opes.FieldErrorf("max_notifications", "%d: want 1 to %d", o.MaxNotifications, maxMaxNotifications)
	default:
		s.max = o.MaxNotifications
	}
	if s.prefix == "" && s.warnMode == "" && !s.SendsMail() {
		return nil, opes.FieldErrorf("notify_admin", "no action: set subject_prefix, warn_body, notify_admin, notify_recipients or notify_sender")
	}
	s.needs = opes.Needs{Stages: opes.StagesOf(opes.StageHeaders, opes.StageEOM), Headers: true, Body: s.warnMode != ""}.Union(when.Needs())
	return s, nil
}

// SendsMail reports whether the service may send notifications, so that
// the policy loader can refuse it when no outbox is configured.
func (s *service) SendsMail() bool { return len(s.admins) > 0 || s.recipients || s.sender }

func parseTrigger(v string) (trigger, error) {
	name, pattern, ok := strings.Cut(v, ":")
	if !ok {
		return trigger{}, fmt.Errorf(`%q is not "Name: regex" or "Name:"`, v)
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 76 {
		return trigger{}, fmt.Errorf("field name %q is empty or longer than 76 octets", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 {
			return trigger{}, fmt.Errorf("field name %q contains byte 0x%02x", name, c)
		}
	}
	for _, f := range []string{opes.FieldSystem, opes.FieldVia, opes.FieldBypass} {
		if strings.EqualFold(name, f) {
			// The processor writes these itself; they say nothing
			// about what a service found.
			return trigger{}, fmt.Errorf("%s is a trace field, not a finding", f)
		}
	}
	tr := trigger{name: name}
	if pattern = strings.TrimSpace(pattern); pattern != "" {
		if len(pattern) > match.MaxPatternLen {
			return trigger{}, fmt.Errorf("pattern longer than %d octets", match.MaxPatternLen)
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			return trigger{}, fmt.Errorf("pattern: %w", err)
		}
		tr.re = re
	}
	return tr, nil
}

// checkText allows printable US-ASCII, and line breaks when multiline.
func checkText(v string, max int, multiline bool) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("is empty")
	}
	if len(v) > max {
		return fmt.Errorf("is longer than %d octets", max)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if multiline && (c == '\n' || c == '\r' && i+1 < len(v) && v[i+1] == '\n') {
			continue
		}
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("has byte 0x%02x at offset %d: only printable US-ASCII is allowed", c, i)
		}
	}
	if multiline {
		for _, l := range strings.Split(v, "\n") {
			if len(l) > 900 {
				return errors.New("has a line longer than 900 octets")
			}
		}
	}
	return nil
}

// checkAddress allows a bare addr-spec in US-ASCII, as an envelope
// address and a header address at once.
func checkAddress(a string) error {
	if !safeAddress(a) {
		return fmt.Errorf("%q is not a plain address like postmaster@example.net", a)
	}
	return nil
}

// safeAddress reports whether a can be written into a header field as it
// is: a US-ASCII addr-spec without display name, comments or quoting.
func safeAddress(a string) bool {
	if a == "" || len(a) > 254 || strings.ContainsAny(a, " \t\"<>()[],;:\\") {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < 0x21 || a[i] > 0x7e {
			return false
		}
	}
	p, err := mail.ParseAddress(a)
	return err == nil && p.Name == "" && p.Address == a && strings.Count(a, "@") == 1
}

func (s *service) Needs() opes.Needs { return s.needs }

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx {
	t := &txState{s: s, tx: tx}
	// Enabled by a rule of the header or end-of-message stage: the header
	// is complete and no service has changed it yet (changes happen only
	// in end-of-message hooks, which run after the stage's rules).
	if tx.Stage() >= opes.StageHeaders {
		t.snapshot()
	}
	return t
}

type txState struct {
	opes.BaseTx
	s        *service
	tx       *opes.Transaction
	received map[opes.HeaderField]int // the header as the client sent it
	seen     bool
}

func (t *txState) snapshot() {
	t.received = map[opes.HeaderField]int{}
	for _, f := range t.tx.Header.Fields() {
		t.received[f]++
	}
	t.seen = true
}

// Headers remembers the header as received.
func (t *txState) Headers(context.Context) (opes.Verdict, error) {
	t.snapshot()
	return opes.ContinueVerdict, nil
}

// finding is one header field an earlier service added that matched.
type finding struct{ name, value string }

// added returns the fields that were added or changed since the
// snapshot, matched against the triggers. HeaderField values compare
// with their origin: a field a service added differs from a received one
// with the same name and value.
func (t *txState) findings() []finding {
	left := make(map[opes.HeaderField]int, len(t.received))
	for f, n := range t.received {
		left[f] = n
	}
	var out []finding
	for _, f := range t.tx.Header.Fields() {
		if left[f] > 0 {
			left[f]--
			continue
		}
		v := unfold(f.Value)
		for _, tr := range t.s.triggers {
			if strings.EqualFold(tr.name, f.Name) && (tr.re == nil || tr.re.MatchString(v)) {
				out = append(out, finding{name: f.Name, value: v})
				break
			}
		}
	}
	return out
}

func unfold(v string) string {
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v))
}

func (t *txState) EndOfMessage(ctx context.Context) (opes.Verdict, error) {
	s := t.s
	if !t.seen {
		// Without the received header every field would look added,
		// forged ones included.
		return opes.Verdict{}, errors.New("notify: the header was not seen before the end of the message (enable the service at the headers stage or earlier, or at eom)")
	}
	var found []finding
	if len(s.triggers) > 0 {
		if found = t.findings(); len(found) == 0 {
			return opes.ContinueVerdict, nil
		}
	}
	if !s.when.Match(t.tx, nil) {
		return opes.ContinueVerdict, nil
	}
	why := t.reason(found)
	action := "analyzed"
	if s.prefix != "" {
		marked, err := t.tx.Header.MarkSubject(s.prefix)
		if err != nil {
			return opes.Verdict{}, fmt.Errorf("notify: mark subject: %w", err)
		}
		if marked {
			action = "tagged"
		}
	}
	if s.warnMode != "" {
		changed, err := t.warnBody(why)
		if err != nil {
			return opes.Verdict{}, err
		}
		if changed {
			action = "modified"
		} else {
			s.log.Info("notify: signed or encrypted message, no body warning", "trace_id", t.tx.TraceID())
		}
	}
	n, err := t.notify(ctx, why, found)
	if err != nil {
		return opes.Verdict{}, err
	}
	v := opes.Verdict{Kind: opes.Continue, Action: action, Reason: why}
	if n > 0 {
		v.Reason = fmt.Sprintf("%s; %d notification(s) queued", why, n)
	}
	return v, nil
}

// reason is the configured reason, or the findings as "Name: value".
func (t *txState) reason(found []finding) string {
	if t.s.reason != "" {
		return t.s.reason
	}
	if len(found) == 0 {
		return "the message matched the notification policy"
	}
	var parts []string
	for _, f := range found {
		parts = append(parts, f.name+": "+f.value)
	}
	return opes.SanitizeText(strings.Join(parts, "; "), maxReason)
}

// systemURI is our OPES system URI: the processor puts our OPES-System
// field first before any end-of-message service runs (PROFILE §2).
func (t *txState) systemURI() string {
	v := t.tx.Header.Get(opes.FieldSystem)
	if v == "" {
		return ""
	}
	entries, err := opes.ParseTraceList(v, 1)
	if err != nil || len(entries) == 0 {
		return ""
	}
	return entries[0].URI
}
