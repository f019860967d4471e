package childmilter

import (
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// maxReplyText bounds the child's text; the processor bounds the whole
// reply again when it adds the trace lines.
const maxReplyText = 200

// parseReply reads the reply a child set with smfi_setreply or
// smfi_setmlreply ("550 5.7.1 text", or several lines "550-5.7.1 a" CRLF
// "550 5.7.1 b") into a Reply: the code, the enhanced code when it is
// well-formed and of the same class, and the text of every line joined by
// spaces and reduced to printable ASCII. go-milter has already checked
// that code is 4xx or 5xx.
func parseReply(code int, raw string) opes.Reply {
	r := opes.Reply{Code: code}
	prefix := strconv.Itoa(code)
	var texts []string
	for i, line := range strings.Split(raw, "\n") {
		line = strings.TrimRight(line, "\r")
		if rest, ok := strings.CutPrefix(line, prefix); ok && (rest == "" || rest[0] == ' ' || rest[0] == '-') {
			line = strings.TrimLeft(rest, " -")
		}
		if enh, text, ok := cutEnhanced(line); ok && opes.CheckEnhancedCode(code, enh) == nil {
			if i == 0 {
				r.Enhanced = enh
			}
			line = text
		}
		if line = strings.TrimSpace(line); line != "" {
			texts = append(texts, line)
		}
	}
	r.Text = opes.SanitizeText(strings.Join(texts, " "), maxReplyText)
	return r
}

// cutEnhanced splits "x.y.z text" when the first word looks like an
// enhanced status code.
func cutEnhanced(line string) (enh, text string, ok bool) {
	word, text, _ := strings.Cut(line, " ")
	if strings.Count(word, ".") != 2 || strings.Trim(word, "0123456789.") != "" {
		return "", line, false
	}
	return word, text, true
}
