package opes

import (
	"fmt"
	"strings"
)

// VerdictKind is what a service or a rule decides at one stage.
type VerdictKind uint8

// Verdict kinds. Continue means "no objection"; Accept stops every further
// service for the transaction (the message is delivered with its trace);
// Reject and TempFail refuse at the current stage (for RCPT: that
// recipient); Quarantine holds the message at the end of data; Discard
// drops it (see docs/decisions.md: until the NDR generator exists the
// processor refuses instead, so no mail is ever dropped silently).
const (
	Continue VerdictKind = iota
	Accept
	Reject
	TempFail
	Quarantine
	Discard
)

var verdictNames = [...]string{"continue", "accept", "reject", "tempfail", "quarantine", "discard"}

func (k VerdictKind) String() string {
	if int(k) < len(verdictNames) {
		return verdictNames[k]
	}
	return fmt.Sprintf("verdict(%d)", uint8(k))
}

// ParseVerdictKind accepts the names used in the policy file.
func ParseVerdictKind(s string) (VerdictKind, error) {
	for i, n := range verdictNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return VerdictKind(i), nil
		}
	}
	return 0, fmt.Errorf("unknown verdict %q (want continue, accept, reject, tempfail, quarantine or discard)", s)
}

// terminal reports whether the verdict ends processing at this stage.
func (k VerdictKind) terminal() bool { return k == Reject || k == TempFail || k == Discard }

// Verdict is the result of one service hook.
type Verdict struct {
	Kind VerdictKind
	// Action is the trace action (PROFILE §2): analyzed, modified, tagged,
	// header-added, rejected, quarantined, ... Empty means the processor
	// derives it from Kind.
	Action string
	// Reply overrides the human part of the SMTP reply for Reject and
	// TempFail. Zero fields take the stage defaults.
	Reply Reply
	// Reason is a short token for logs, the quarantine reason and the
	// default reply text, e.g. "client address blocked".
	Reason string
	// Status is the trace status (PROFILE §2) when the service did not do
	// its work: "skipped" (e.g. a message too large to scan). Failures
	// ("failed", "timeout") are set by the processor from hook errors.
	Status string
}

// Reply is an SMTP reply the processor will send. Lines hold the text
// after the codes; the processor adds the trace lines.
type Reply struct {
	Code     int    // 4xx or 5xx
	Enhanced string // RFC 3463 code, e.g. "5.7.1"
	Text     string // human text, one line
}

// ContinueVerdict is the "no objection, nothing changed" verdict.
var ContinueVerdict = Verdict{Kind: Continue}

// RejectVerdict refuses with the given reason and default codes.
func RejectVerdict(reason string) Verdict { return Verdict{Kind: Reject, Reason: reason} }

// action returns the trace action for a verdict.
func (v Verdict) action() string {
	if v.Action != "" {
		return v.Action
	}
	switch v.Kind {
	case Reject, TempFail, Discard:
		return "rejected"
	case Quarantine:
		return "quarantined"
	}
	return "analyzed"
}
