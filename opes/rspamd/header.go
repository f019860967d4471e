package rspamd

import (
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/internal/spamengine"
)

// Bounds of the header fields the service writes.
const (
	foldAt          = 78   // RFC 5322 §2.1.1 "SHOULD"
	maxResultValue  = 4000 // X-Spamd-Result: enough for ~150 symbols
	maxResultFields = 200
)

// statusValue is X-Spam-Status in SpamAssassin's layout, with rspamd's
// action instead of the test list (that is in X-Spamd-Result):
//
//	Yes, score=16.0 required=15.0 action=reject
//
// "Yes" is our decision (the message is tagged), not rspamd's action.
func statusValue(spam bool, res *result) string {
	yes := "No"
	if spam {
		yes = "Yes"
	}
	return yes + ", score=" + spamengine.FormatScore(res.Score) + " required=" + spamengine.FormatScore(res.Required) +
		" action=" + strings.ReplaceAll(res.Action, " ", "_")
}

// resultValue is X-Spamd-Result in the layout of rspamd's milter_headers
// module, without the symbol options (wire data such as URLs and
// addresses that do not belong in a header field):
//
//	default: True [16.00 / 15.00];
//		GTUBE(0.00); OPES_TEST_SCORE(16.00)
//
// folded after ';', symbols sorted by name, cut with "..." when longer
// than maxResultValue.
func resultValue(spam bool, res *result) string {
	flag := "False"
	if spam {
		flag = "True"
	}
	var b strings.Builder
	b.WriteString("default: " + flag + " [" + score2(res.Score) + " / " + score2(res.Required) + "]")
	n := len(FieldResult) + 2 + b.Len()
	for i, s := range res.Symbols {
		part := s.Name + "(" + score2(s.Score) + ")"
		if i >= maxResultFields || b.Len()+len(part)+3 > maxResultValue-len("; ...") {
			b.WriteString("; ...")
			break
		}
		b.WriteByte(';')
		if n+2+len(part) > foldAt {
			b.WriteString("\r\n\t")
			n = 1
		} else {
			b.WriteByte(' ')
			n += 2
		}
		b.WriteString(part)
		n += len(part)
	}
	return b.String()
}

// score2 prints a score with two decimals, as rspamd does in its headers.
func score2(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }
