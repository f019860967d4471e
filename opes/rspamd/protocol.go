package rspamd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/opesmilter/opes-milter/internal/spamengine"
)

// result is rspamd's answer to /checkv2, reduced to what we act on.
type result struct {
	Action   string  // "reject", "add header", ...
	Score    float64 // total score
	Required float64 // the reject threshold rspamd reports; 0 when it reports none
	Symbols  []symbol
	Message  string // messages.smtp_message, sanitised; may be ""
}

type symbol struct {
	Name  string
	Score float64
}

// Bounds on rspamd's answer: it is wire data from another process. A real
// answer with every stock rule enabled is a few KiB and at most some
// hundred symbols.
const (
	maxResponseBody = 1 << 20
	maxSymbols      = 1000
	maxSymbolLen    = 128
	maxScore        = 1e6
	maxMessage      = 200
)

// errProtocol marks an answer that is not what rspamd sends; the caller's
// error then says so instead of blaming the network.
var errProtocol = errors.New("malformed rspamd answer")

// Actions rspamd 3.x reports ("quarantine" and "discard" exist in its
// action list but no stock rule uses them).
const (
	actionNoAction       = "no action"
	actionGreylist       = "greylist"
	actionAddHeader      = "add header"
	actionRewriteSubject = "rewrite subject"
	actionSoftReject     = "soft reject"
	actionReject         = "reject"
	actionQuarantine     = "quarantine"
	actionDiscard        = "discard"
)

var knownActions = map[string]bool{
	actionNoAction: true, actionGreylist: true, actionAddHeader: true, actionRewriteSubject: true,
	actionSoftReject: true, actionReject: true, actionQuarantine: true, actionDiscard: true,
}

// wireResult is the JSON layout of /checkv2 (rspamd 3.4):
//
//	{"is_skipped":false,"score":7.0,"required_score":15.0,"action":"add header",
//	 "symbols":{"SYM":{"name":"SYM","score":7.0,"metric_score":1.0,"options":[...]}},
//	 "messages":{"smtp_message":"..."},"subject":"...","message-id":"..."}
//
// Unknown members are ignored: rspamd adds some with every release.
type wireResult struct {
	Action   *string  `json:"action"`
	Score    *float64 `json:"score"`
	Required *float64 `json:"required_score"`
	Symbols  map[string]struct {
		Score float64 `json:"score"`
	} `json:"symbols"`
	Messages map[string]json.RawMessage `json:"messages"`
}

// parseResult reads and checks the body of a 200 answer.
func parseResult(r io.Reader) (*result, error) {
	body, err := io.ReadAll(io.LimitReader(r, maxResponseBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxResponseBody {
		return nil, fmt.Errorf("%w: longer than %d octets", errProtocol, maxResponseBody)
	}
	var w wireResult
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: %v (starts %q)", errProtocol, err, spamengine.Clip(string(body)))
	}
	if w.Action == nil || w.Score == nil {
		return nil, fmt.Errorf("%w: no action or score (starts %q)", errProtocol, spamengine.Clip(string(body)))
	}
	res := &result{Action: *w.Action, Score: *w.Score}
	if !knownActions[res.Action] {
		return nil, fmt.Errorf("%w: unknown action %q", errProtocol, spamengine.Clip(res.Action))
	}
	if !scoreOK(res.Score) {
		return nil, fmt.Errorf("%w: score %v", errProtocol, res.Score)
	}
	if w.Required != nil {
		if !scoreOK(*w.Required) {
			return nil, fmt.Errorf("%w: required_score %v", errProtocol, *w.Required)
		}
		res.Required = *w.Required
	}
	if len(w.Symbols) > maxSymbols {
		return nil, fmt.Errorf("%w: more than %d symbols", errProtocol, maxSymbols)
	}
	for name, s := range w.Symbols {
		// The name ends up in a header field and maybe an SMTP reply.
		if len(name) > maxSymbolLen || !isSymbol(name) {
			return nil, fmt.Errorf("%w: symbol %q", errProtocol, spamengine.Clip(name))
		}
		if !scoreOK(s.Score) {
			return nil, fmt.Errorf("%w: symbol %s score %v", errProtocol, name, s.Score)
		}
		res.Symbols = append(res.Symbols, symbol{Name: name, Score: s.Score})
	}
	sort.Slice(res.Symbols, func(i, j int) bool { return res.Symbols[i].Name < res.Symbols[j].Name })
	if raw, ok := w.Messages["smtp_message"]; ok {
		// A string, or (rare) an object; only a string is used.
		var m string
		if json.Unmarshal(raw, &m) == nil {
			res.Message = printable(m, maxMessage)
		}
	}
	return res, nil
}

func scoreOK(f float64) bool { return !math.IsNaN(f) && math.Abs(f) <= maxScore }

// isSymbol accepts rspamd symbol names: letters, digits, '_', and the
// '-' and '.' some Lua modules use.
func isSymbol(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return s != ""
}

// printable keeps printable US-ASCII, turns runs of anything else into
// one space and bounds the length: text from rspamd goes into an SMTP
// reply, which must be one line of ASCII.
func printable(s string, max int) string {
	var b strings.Builder
	space := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == ' ' {
			space = b.Len() > 0
			continue
		}
		if space {
			if b.Len()+2 > max {
				break
			}
			b.WriteByte(' ')
			space = false
		} else if b.Len()+1 > max {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}
