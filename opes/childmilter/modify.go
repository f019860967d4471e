package childmilter

import (
	"errors"
	"fmt"
	"strings"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/opes"
)

// applyChanges applies the child's end-of-message changes to the
// transaction and returns the verdict that says what they were. Every
// change is checked before the first is applied, so that a child asking
// for something the processor refuses leaves the message as it was.
func (t *txState) applyChanges(mods []milter.ModifyAction) (opes.Verdict, error) {
	var keep []milter.ModifyAction
	for _, m := range mods {
		if isHeaderChange(m.Type) && isTraceField(m.HeaderName) {
			// The processor owns the trace; it would undo this anyway.
			continue
		}
		if err := checkChange(&m); err != nil {
			return opes.Verdict{}, fmt.Errorf("end of message: the child asked for %s: %w", kindName(m.Type), err)
		}
		keep = append(keep, m)
	}

	var added, changed, sender, rcpts, held bool
	var quarantine string
	var body [][]byte
	h := t.tx.Header
	for _, m := range keep {
		var err error
		switch m.Type {
		case milter.ActionAddHeader, milter.ActionInsertHeader:
			// The processor emits new fields as appends, so the child's
			// position for an inserted field is not kept.
			err = h.Add(m.HeaderName, m.HeaderValue)
			added = true
		case milter.ActionChangeHeader:
			err = changeField(h, m.HeaderName, int(m.HeaderIndex), m.HeaderValue)
			changed = true
		case milter.ActionReplaceBody:
			body = append(body, m.Body)
		case milter.ActionChangeFrom:
			err = t.tx.ChangeSender(opes.Address{Addr: milter.RemoveAngle(m.From), Args: strings.Fields(m.FromArgs)})
			sender = true
		case milter.ActionAddRcpt:
			err = t.tx.AddRecipient(opes.Address{Addr: milter.RemoveAngle(m.Rcpt), Args: strings.Fields(m.RcptArgs)})
			rcpts = true
		case milter.ActionDelRcpt:
			err = t.tx.DeleteRecipient(milter.RemoveAngle(m.Rcpt))
			rcpts = true
		case milter.ActionQuarantine:
			quarantine, held = opes.SanitizeText(m.Reason, 200), true
		}
		if err != nil {
			return opes.Verdict{}, fmt.Errorf("end of message: apply %s: %w", kindName(m.Type), err)
		}
	}
	if body != nil {
		// The replacement arrives in packets, in order; together they
		// are the new body.
		err := t.tx.ReplaceBody(func(w *opes.Body) error {
			for _, b := range body {
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return opes.Verdict{}, fmt.Errorf("end of message: replace body: %w", err)
		}
		changed = true
	}

	v := opes.Verdict{Kind: opes.Continue, Action: changeAction(added, changed, sender, rcpts)}
	if held {
		v.Kind, v.Action = opes.Quarantine, "quarantined"
		v.Reason = "held by the child milter"
		if quarantine != "" {
			v.Reason += ": " + quarantine
		}
	}
	return v, nil
}

// changeAction is the trace action (PROFILE §2) for what the child did:
// one kind of change has its own word, several are "modified".
func changeAction(added, changed, sender, rcpts bool) string {
	kinds := 0
	action := "analyzed"
	for _, k := range []struct {
		did  bool
		name string
	}{{added, "header-added"}, {changed, "modified"}, {sender, "rewritten"}, {rcpts, "rerouted"}} {
		if k.did {
			kinds++
			action = k.name
		}
	}
	if kinds > 1 {
		return "modified"
	}
	return action
}

// changeField does what smfi_chgheader asks: replace the index-th
// (1-based) field named name, delete it when value is empty, and add the
// field when there are fewer than index fields of that name (Sendmail and
// Postfix do the same). The field keeps its place (opes.Header.SetAt,
// DelAt): the MTA gets a change of that occurrence.
func changeField(h *opes.Header, name string, index int, value string) error {
	index = max(index, 1)
	if value == "" { // smfi_chgheader with an empty value deletes
		_, err := h.DelAt(name, index)
		return err
	}
	ok, err := h.SetAt(name, index, value)
	if err == nil && !ok { // no such occurrence: the MTA adds the field
		err = h.Add(name, value)
	}
	return err
}

// checkChange applies the rules opes.Header and opes.Transaction enforce
// (header.go, transaction.go), so a bad change is found before any is
// applied. It also drops the line break some milters end a value with.
func checkChange(m *milter.ModifyAction) error {
	switch m.Type {
	case milter.ActionAddHeader, milter.ActionInsertHeader, milter.ActionChangeHeader:
		if err := checkFieldName(m.HeaderName); err != nil {
			return err
		}
		m.HeaderValue = strings.TrimRight(m.HeaderValue, "\r\n")
		return checkFieldValue(m.HeaderValue)
	case milter.ActionChangeFrom:
		return checkAddr(milter.RemoveAngle(m.From))
	case milter.ActionAddRcpt:
		a := milter.RemoveAngle(m.Rcpt)
		if a == "" {
			return errors.New("an empty recipient")
		}
		return checkAddr(a)
	case milter.ActionDelRcpt:
		return checkAddr(milter.RemoveAngle(m.Rcpt))
	}
	return nil
}

func checkFieldName(name string) error {
	if name == "" || len(name) > 76 {
		return fmt.Errorf("header field name %q: empty or longer than 76 octets", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return fmt.Errorf("header field name %q: byte 0x%02x not allowed", name, c)
		}
	}
	return nil
}

func checkFieldValue(v string) error {
	if len(v) > 16<<10 {
		return errors.New("a header field value longer than 16 KiB")
	}
	v = strings.ReplaceAll(v, "\r\n", "\n")
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\n':
			if i+1 >= len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
				return errors.New("a header field value with a line break not followed by white space")
			}
		case c == '\t':
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("a header field value with control byte 0x%02x", c)
		}
	}
	return nil
}

func checkAddr(a string) error {
	if len(a) > 512 {
		return errors.New("an address longer than 512 octets")
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x21 || c == 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("an address with byte 0x%02x", c)
		}
	}
	return nil
}

func isHeaderChange(k milter.ModifyActionType) bool {
	return k == milter.ActionAddHeader || k == milter.ActionInsertHeader || k == milter.ActionChangeHeader
}

func isTraceField(name string) bool {
	return strings.EqualFold(name, opes.FieldSystem) || strings.EqualFold(name, opes.FieldVia) ||
		strings.EqualFold(name, opes.FieldBypass)
}

func kindName(k milter.ModifyActionType) string {
	switch k {
	case milter.ActionAddHeader:
		return "add header"
	case milter.ActionInsertHeader:
		return "insert header"
	case milter.ActionChangeHeader:
		return "change header"
	case milter.ActionReplaceBody:
		return "replace body"
	case milter.ActionChangeFrom:
		return "change sender"
	case milter.ActionAddRcpt:
		return "add recipient"
	case milter.ActionDelRcpt:
		return "delete recipient"
	case milter.ActionQuarantine:
		return "quarantine"
	}
	return fmt.Sprintf("modification %d", k)
}
