// Package spamengine holds what the two spam-engine adapters, opes/spamd
// and opes/rspamd, do the same way whatever the engine: how a failed
// exchange is reported, how a score is printed, and how the decision for
// the message becomes header fields, a Subject mark and a verdict. What
// differs (the protocol, the fields' layout, what the engine's own
// judgement means) stays in the adapters; the thresholds are package
// opes/spamlevel.
package spamengine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/spamlevel"
)

// CallError wraps the failure of one step (what) of the exchange with the
// engine at addr. A deadline says so with the configured timeout, so that
// the log tells a slow engine from a broken one.
func CallError(engine, addr, what string, timeout time.Duration, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s %s: %s: no answer within %s: %w", engine, addr, what, timeout, err)
	}
	return fmt.Errorf("%s %s: %s: %w", engine, addr, what, err)
}

// Clip keeps wire text in error messages short and printable: errors end
// up in logs.
func Clip(s string) string {
	const max = 64
	var b strings.Builder
	for i := 0; i < len(s) && i < max; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	if len(s) > max {
		b.WriteString("...")
	}
	return b.String()
}

// FormatScore prints a score with one decimal, as spamd does and as
// SpamAssassin's X-Spam-Score has it, whichever engine scored.
func FormatScore(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// Recipients are the addresses of the accepted recipients: what the
// recipient table of spamlevel classifies.
func Recipients(tx *opes.Transaction) []string {
	var rcpts []string
	for _, r := range tx.AcceptedRecipients() {
		rcpts = append(rcpts, r.Addr)
	}
	return rcpts
}

// Refuse is the refusal of a message as spam at the end of data (554
// 5.7.1). Nothing is delivered, so the header is left alone.
func Refuse(reason, text string) opes.Verdict {
	return opes.Verdict{
		Kind: opes.Reject, Action: "rejected", Reason: reason,
		Reply: opes.Reply{Enhanced: "5.7.1", Text: text},
	}
}

// TooLarge is the verdict for a message above the adapter's max_size:
// delivered unscanned rather than tying up the engine (spamc does the
// same), and the trace says skipped.
func TooLarge() opes.Verdict {
	return opes.Verdict{Kind: opes.Continue, Action: "analyzed", Status: "skipped", Reason: "not scanned: larger than max_size"}
}

// Marking is what a scanned message that is not refused takes along: the
// spam header fields and the Subject mark.
type Marking struct {
	// Engine names the service in errors ("spamd", "rspamd").
	Engine string
	// Owned are all the fields the service writes. A sender's own copies
	// would contradict ours, or be trusted by a mail client filter, so
	// they are removed whenever Fields adds any.
	Owned []string
	// Fields are added in this order; none leaves the header alone.
	Fields []opes.HeaderField
	// SubjectPrefix marks the Subject (not twice); "" = no mark.
	SubjectPrefix string
}

// Apply changes the header as m says and returns the verdict for lvl,
// the level of the message: quarantine, or delivery with the trace action
// that tells what was done ("tagged" beats "header-added" beats
// "analyzed"). The header changes apply to a quarantined message too:
// they tell whoever reviews the quarantine why the message is there.
func (m Marking) Apply(tx *opes.Transaction, lvl spamlevel.Level, reason string) (opes.Verdict, error) {
	action := "analyzed"
	if len(m.Fields) > 0 {
		for _, name := range m.Owned {
			tx.Header.Del(name)
		}
		for _, f := range m.Fields {
			if err := tx.Header.Add(f.Name, f.Value); err != nil {
				return opes.Verdict{}, fmt.Errorf("%s: add %s: %w", m.Engine, f.Name, err)
			}
		}
		action = "header-added"
	}
	if m.SubjectPrefix != "" {
		marked, err := tx.Header.MarkSubject(m.SubjectPrefix)
		if err != nil {
			return opes.Verdict{}, fmt.Errorf("%s: mark subject: %w", m.Engine, err)
		}
		if marked {
			action = "tagged"
		}
	}
	if lvl == spamlevel.Quarantine {
		return opes.Verdict{Kind: opes.Quarantine, Action: "quarantined", Reason: reason}, nil
	}
	return opes.Verdict{Kind: opes.Continue, Action: action, Reason: reason}, nil
}
