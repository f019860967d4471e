// Package tag is the service that marks mail for the reader instead of
// refusing it: at the end of the message it adds a header field (for
// filters in the mail client) and/or puts a prefix in front of the Subject
// (for people), for the mail its "when" condition selects — the typical
// "[EXTERNAL]" warning on mail from outside.
//
// Options, under [service.options]:
//
//	header = "X-OPES-Tag: external"   # optional "Name: value"
//	subject_prefix = "[EXTERNAL]"     # optional; not added twice
//	[service.options.when]            # optional; any match.Spec key
//	authenticated = false
package tag

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/match"
)

type options struct {
	Header        string     `toml:"header"`
	SubjectPrefix string     `toml:"subject_prefix"`
	When          match.Spec `toml:"when"`
}

// Limits on configured text. A prefix is read by people on one subject
// line; a header line must stay within RFC 5322's 998 octets since the
// value is never folded.
const (
	maxPrefix = 100
	maxLine   = 998
)

// singleFields may appear at most once in a message (RFC 5322 §3.6); a
// tag that added a second one would make every tagged message invalid.
var singleFields = []string{
	"Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
	"Message-ID", "In-Reply-To", "References", "Subject",
}

type service struct {
	name, value string // header field to add; name "" for none
	prefix      string // subject prefix; "" for none
	when        *match.Condition
	needs       opes.Needs
}

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("tag: decode options: %w", err)
		}
	}
	s := &service{}
	if strings.TrimSpace(o.Header) == "" && strings.TrimSpace(o.SubjectPrefix) == "" {
		return nil, opes.FieldErrorf("header", "header or subject_prefix is required: a tag service without either changes nothing")
	}
	if o.Header != "" {
		var err error
		if s.name, s.value, err = parseHeader(o.Header); err != nil {
			return nil, &opes.FieldError{Field: "header", Err: err}
		}
	}
	if o.SubjectPrefix != "" {
		p := strings.TrimSpace(o.SubjectPrefix)
		if err := opes.CheckPrintable(p, maxPrefix); err != nil {
			return nil, &opes.FieldError{Field: "subject_prefix", Err: err}
		}
		s.prefix = p
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
	s.needs = opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: s.prefix != ""}.Union(when.Needs())
	return s, nil
}

// parseHeader splits "Name: value" and checks that both can go into a
// message as they are: the value is not encoded or folded.
func parseHeader(h string) (name, value string, err error) {
	name, value, ok := strings.Cut(strings.TrimSpace(h), ":")
	if !ok {
		return "", "", fmt.Errorf(`%q is not "Name: value"`, h)
	}
	value = strings.TrimSpace(value)
	if name == "" || len(name) > 76 {
		return "", "", fmt.Errorf("field name %q is empty or longer than 76 octets", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 {
			return "", "", fmt.Errorf("field name %q contains byte 0x%02x", name, c)
		}
	}
	for _, f := range []string{opes.FieldSystem, opes.FieldVia, opes.FieldBypass} {
		if strings.EqualFold(name, f) {
			return "", "", fmt.Errorf("%s is a trace field only the processor writes", f)
		}
	}
	for _, f := range singleFields {
		if strings.EqualFold(name, f) {
			return "", "", fmt.Errorf("a message has at most one %s field; use subject_prefix or an X- field", f)
		}
	}
	if value == "" {
		return "", "", fmt.Errorf("field %s has an empty value", name)
	}
	if err := opes.CheckPrintable(value, maxLine-len(name)-2); err != nil {
		return "", "", fmt.Errorf("field value %w", err)
	}
	return name, value, nil
}

func (s *service) Needs() opes.Needs { return s.needs }

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

func (t *txState) EndOfMessage(context.Context) (opes.Verdict, error) {
	s := t.s
	if !s.when.Match(t.tx, nil) {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	action := "analyzed"
	if s.name != "" {
		if err := t.tx.Header.Add(s.name, s.value); err != nil {
			return opes.Verdict{}, fmt.Errorf("tag: add %s: %w", s.name, err)
		}
		action = "header-added"
	}
	if s.prefix != "" {
		marked, err := t.tx.Header.MarkSubject(s.prefix)
		if err != nil {
			return opes.Verdict{}, fmt.Errorf("tag: mark subject: %w", err)
		}
		if marked {
			action = "tagged"
		}
	}
	return opes.Verdict{Kind: opes.Continue, Action: action}, nil
}
