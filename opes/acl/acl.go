// Package acl is the access-control service of RFC 4496 §4.4 and §4.8:
// an ordered list of allow/deny/tempfail entries on the client address,
// HELO name, AUTH identity, sender and recipients, each refusing at the
// SMTP stage it names — a recipient entry refuses that RCPT only, so the
// other recipients of the transaction are still accepted.
//
// Options, under [service.options]:
//
//	[[service.options.entry]]
//	stage = "rcpt"        # optional; default: the earliest stage the conditions allow
//	action = "deny"       # allow | deny | tempfail
//	recipient = ["spamtrap@example.org"]   # any match.Spec key
//	reply = "Mailbox is a spam trap"       # optional human text
//	code = 550            # optional; 5xx for deny, 4xx for tempfail
//	enhanced = "5.7.1"    # optional; class must match the code
//
// At each stage the entries of that stage are tried in file order and the
// first that matches decides. An allow ends the search at that stage only:
// like an OK in one Postfix restriction list, it does not exempt the
// client from the entries of later stages.
package acl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/match"
)

// options is the TOML form; the policy loader decodes [service.options]
// into it.
type options struct {
	Entry []entryOptions `toml:"entry"`
}

type entryOptions struct {
	Stage    string `toml:"stage"`
	Action   string `toml:"action"`
	Reply    string `toml:"reply"`
	Code     int    `toml:"code"`
	Enhanced string `toml:"enhanced"`
	match.Spec
}

type action uint8

const (
	allow action = iota
	deny
	tempfail
)

// entry is one compiled access rule.
type entry struct {
	when   *match.Condition
	action action
	reply  opes.Reply
}

// service holds the compiled entries grouped by stage, in file order.
type service struct {
	byStage [opes.StageEOM + 1][]entry
	needs   opes.Needs
}

// maxReplyText matches the processor's limit for the first reply line.
const maxReplyText = 200

// New builds the service from its options. decode fills a struct from
// [service.options] the way toml.PrimitiveDecode does.
func New(decode func(v any) error) (opes.Service, error) {
	var o options
	if decode != nil {
		if err := decode(&o); err != nil {
			return nil, fmt.Errorf("acl: decode options: %w", err)
		}
	}
	if len(o.Entry) == 0 {
		return nil, opes.FieldErrorf("entry", "at least one entry is required")
	}
	s := &service{}
	for i, eo := range o.Entry {
		prefix := fmt.Sprintf("entry[%d]", i+1)
		e, st, err := compileEntry(eo)
		if err != nil {
			var fe *opes.FieldError
			if errors.As(err, &fe) {
				return nil, &opes.FieldError{Field: prefix + "." + fe.Field, Err: fe.Err}
			}
			return nil, &opes.FieldError{Field: prefix, Err: err}
		}
		s.byStage[st] = append(s.byStage[st], e)
		s.needs = s.needs.Union(e.when.Needs())
		s.needs.Stages = s.needs.Stages.Add(st)
	}
	return s, nil
}

func compileEntry(eo entryOptions) (entry, opes.Stage, error) {
	var e entry
	switch strings.ToLower(strings.TrimSpace(eo.Action)) {
	case "allow":
		e.action = allow
	case "deny":
		e.action = deny
	case "tempfail":
		e.action = tempfail
	case "":
		return e, 0, opes.FieldErrorf("action", "is required (allow, deny or tempfail)")
	default:
		return e, 0, opes.FieldErrorf("action", "unknown action %q (want allow, deny or tempfail)", eo.Action)
	}
	cond, err := match.Compile(eo.Spec)
	if err != nil {
		return e, 0, err
	}
	e.when = cond
	st := cond.EarliestStage()
	if eo.Stage != "" {
		if st, err = opes.ParseStage(eo.Stage); err != nil {
			return e, 0, &opes.FieldError{Field: "stage", Err: err}
		}
		if err := cond.CheckStage(st); err != nil {
			return e, 0, &opes.FieldError{Field: "stage", Err: err}
		}
	}
	if e.reply, err = compileReply(eo, e.action); err != nil {
		return e, 0, err
	}
	return e, st, nil
}

func compileReply(eo entryOptions, a action) (opes.Reply, error) {
	r := opes.Reply{Code: eo.Code, Enhanced: strings.TrimSpace(eo.Enhanced), Text: eo.Reply}
	if a == allow {
		for _, f := range []struct {
			key string
			set bool
		}{{"reply", r.Text != ""}, {"code", r.Code != 0}, {"enhanced", r.Enhanced != ""}} {
			if f.set {
				return r, opes.FieldErrorf(f.key, "an allow entry sends no reply")
			}
		}
		return r, nil
	}
	class := 5
	if a == tempfail {
		class = 4
	}
	if r.Code != 0 && r.Code/100 != class || r.Code < 0 || r.Code > 599 {
		return r, opes.FieldErrorf("code", "%d is not a %dxx reply code, as %s requires", r.Code, class, actionName(a))
	}
	if r.Enhanced != "" {
		// Without a code the processor uses the stage default, which is
		// always of the action's class.
		code := r.Code
		if code == 0 {
			code = class * 100
		}
		if err := opes.CheckEnhancedCode(code, r.Enhanced); err != nil {
			return r, &opes.FieldError{Field: "enhanced", Err: err}
		}
	}
	if r.Text != "" {
		if len(r.Text) > maxReplyText {
			return r, opes.FieldErrorf("reply", "longer than %d characters", maxReplyText)
		}
		for i := 0; i < len(r.Text); i++ {
			if c := r.Text[i]; c < 0x20 || c > 0x7e {
				return r, opes.FieldErrorf("reply", "byte 0x%02x at offset %d: only printable US-ASCII may appear in an SMTP reply", c, i)
			}
		}
	}
	return r, nil
}

func actionName(a action) string {
	return [...]string{"allow", "deny", "tempfail"}[a]
}

func (s *service) Needs() opes.Needs { return s.needs }

func (s *service) Begin(tx *opes.Transaction) opes.ServiceTx { return &txState{s: s, tx: tx} }

// txState decides for one transaction. It keeps no state of its own: every
// decision reads the transaction as it is at that stage.
type txState struct {
	opes.BaseTx
	s  *service
	tx *opes.Transaction
}

func (t *txState) Connect(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageConnect, nil), nil
}

func (t *txState) Helo(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageHelo, nil), nil
}

func (t *txState) Mail(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageMail, nil), nil
}

func (t *txState) Rcpt(_ context.Context, r *opes.Recipient) (opes.Verdict, error) {
	return t.decide(opes.StageRcpt, r), nil
}

func (t *txState) Data(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageData, nil), nil
}

func (t *txState) Headers(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageHeaders, nil), nil
}

func (t *txState) EndOfMessage(context.Context) (opes.Verdict, error) {
	return t.decide(opes.StageEOM, nil), nil
}

func (t *txState) decide(st opes.Stage, rcpt *opes.Recipient) opes.Verdict {
	for _, e := range t.s.byStage[st] {
		if !e.when.Match(t.tx, rcpt) {
			continue
		}
		switch e.action {
		case deny:
			return opes.Verdict{Kind: opes.Reject, Action: "rejected", Reason: "access policy", Reply: e.reply}
		case tempfail:
			return opes.Verdict{Kind: opes.TempFail, Action: "rejected", Reason: "access policy", Reply: e.reply}
		}
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}
	}
	return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}
}
