package rspamd

import (
	"strings"
	"testing"
)

// Answers as rspamd 3.4 sent them to the test daemon (internal/enginetest).
const (
	answerGTUBE = `{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":0.130809}`
	answerHam   = `{"is_skipped":false,"score":2.4,"required_score":15.0,"action":"no action","symbols":{"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"metric_score":-0.1,"description":"Known content-type","options":["text/plain"]},"HFILTER_HOSTNAME_UNKNOWN":{"name":"HFILTER_HOSTNAME_UNKNOWN","score":2.5,"metric_score":2.5}},"messages":{},"message-id":"ham@example.test","time_real":0.01}`
	answerSubj  = `{"is_skipped":false,"score":9.0,"required_score":15.0,"action":"rewrite subject","subject":"***SPAM*** x","symbols":{"OPES_TEST_SCORE":{"name":"OPES_TEST_SCORE","score":9.0,"metric_score":1.0}},"messages":{},"message-id":"undef","time_real":0.000355}`
)

func TestParseResult(t *testing.T) {
	res, err := parseResult(strings.NewReader(answerGTUBE))
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != "reject" || res.Score != 15 || res.Required != 15 || len(res.Symbols) != 1 || res.Symbols[0] != (symbol{"GTUBE", 0}) || res.Message != "Gtube pattern" {
		t.Errorf("GTUBE: %+v", res)
	}
	res, err = parseResult(strings.NewReader(answerHam))
	if err != nil {
		t.Fatal(err)
	}
	// Sorted by name, as rspamd's own headers list them.
	if res.Action != "no action" || res.Score != 2.4 || len(res.Symbols) != 2 || res.Symbols[0].Name != "HFILTER_HOSTNAME_UNKNOWN" || res.Symbols[1].Score != -0.1 || res.Message != "" {
		t.Errorf("ham: %+v", res)
	}
	if _, err := parseResult(strings.NewReader(answerSubj)); err != nil {
		t.Errorf("rewrite subject: %v", err)
	}
	// smtp_message is sanitised for an SMTP reply.
	res, err = parseResult(strings.NewReader(`{"action":"soft reject","score":0,"messages":{"smtp_message":"Try\r\nagain  later\u00e9 ` + strings.Repeat("x", 400) + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Message, "Try again later ") || len(res.Message) > maxMessage {
		t.Errorf("message %q (%d octets)", res.Message, len(res.Message))
	}
	// An smtp_message that is not a string is ignored, not an error.
	if res, err := parseResult(strings.NewReader(`{"action":"reject","score":20,"messages":{"smtp_message":{"a":1}}}`)); err != nil || res.Message != "" {
		t.Errorf("object message: %+v %v", res, err)
	}
}

func TestParseResultErrors(t *testing.T) {
	tests := map[string]string{
		"empty":            "",
		"not json":         "<html>oops</html>",
		"array":            `[1,2]`,
		"no score":         `{"action":"reject"}`,
		"no action":        `{"score":1}`,
		"unknown action":   `{"action":"accept","score":1}`,
		"string score":     `{"action":"reject","score":"15"}`,
		"huge score":       `{"action":"reject","score":1e7}`,
		"huge required":    `{"action":"reject","score":1,"required_score":-1e9}`,
		"bad symbol":       `{"action":"reject","score":1,"symbols":{"A B":{"score":1}}}`,
		"long symbol":      `{"action":"reject","score":1,"symbols":{"` + strings.Repeat("A", 129) + `":{"score":1}}}`,
		"bad symbol score": `{"action":"reject","score":1,"symbols":{"A":{"score":"x"}}}`,
		"too big":          `{"action":"reject","score":1,"pad":"` + strings.Repeat("x", maxResponseBody) + `"}`,
	}
	for name, body := range tests {
		if res, err := parseResult(strings.NewReader(body)); err == nil {
			t.Errorf("%s: no error, result %+v", name, res)
		}
	}
	var many strings.Builder
	many.WriteString(`{"action":"reject","score":1,"symbols":{`)
	for i := 0; i <= maxSymbols; i++ {
		if i > 0 {
			many.WriteByte(',')
		}
		many.WriteString(`"S` + strings.Repeat("x", i%7) + itoa(i) + `":{"score":0}`)
	}
	many.WriteString("}}")
	if _, err := parseResult(strings.NewReader(many.String())); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("%d symbols: err = %v", maxSymbols+1, err)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

func TestSummary(t *testing.T) {
	syms := []symbol{{"A", 1}, {"B", 5}, {"C", -3}, {"D", 2}, {"E", 0.5}}
	if got := summary(syms); got != ": B, D, A" {
		t.Errorf("summary = %q", got)
	}
	if got := summary([]symbol{{"NEG", -1}}); got != "" {
		t.Errorf("only negative: %q", got)
	}
	long := []symbol{{strings.Repeat("L", 128), 3}, {strings.Repeat("M", 128), 2}}
	if got := summary(long); len(got) > 200 {
		t.Errorf("summary of %d octets", len(got))
	}
}

func TestResultValue(t *testing.T) {
	res := &result{Action: "add header", Score: 7, Required: 15}
	for i := 0; i < maxSymbols; i++ {
		res.Symbols = append(res.Symbols, symbol{Name: "SYMBOL_" + strings.Repeat("X", i%100) + itoa(i), Score: float64(i) / 10})
	}
	v := resultValue(true, res)
	if len(v) > maxResultValue || !strings.HasSuffix(v, "; ...") || !strings.HasPrefix(v, "default: True [7.00 / 15.00];") {
		t.Errorf("value of %d octets: %.100q ... %q", len(v), v, v[len(v)-20:])
	}
	for i, line := range strings.Split(v, "\r\n") {
		if len(line) > 998 || (i > 0 && !strings.HasPrefix(line, "\t")) {
			t.Fatalf("bad line %d: %q", i, line)
		}
	}
	if got := resultValue(false, &result{Score: -1.5, Required: 15}); got != "default: False [-1.50 / 15.00]" {
		t.Errorf("no symbols: %q", got)
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"Gtube pattern":          "Gtube pattern",
		"  lead\r\n\tand trail ": "lead and trail",
		"caf\xc3\xa9 bar":        "caf bar",
		"":                       "",
	} {
		if got := printable(in, 100); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
	if got := printable(strings.Repeat("ab ", 100), 10); len(got) != 10 {
		t.Errorf("bound: %q", got)
	}
}

// FuzzParseResult: no answer makes the parser panic, and what it accepts
// is safe to put into a header field and an SMTP reply.
func FuzzParseResult(f *testing.F) {
	for _, s := range []string{answerGTUBE, answerHam, answerSubj, `{"action":"reject","score":1}`, "", "{"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		res, err := parseResult(strings.NewReader(s))
		if err != nil {
			return
		}
		if !knownActions[res.Action] || !scoreOK(res.Score) || len(res.Symbols) > maxSymbols {
			t.Fatalf("accepted %+v", res)
		}
		for _, sym := range res.Symbols {
			if !isSymbol(sym.Name) || len(sym.Name) > maxSymbolLen {
				t.Fatalf("accepted symbol %q", sym.Name)
			}
		}
		for i := 0; i < len(res.Message); i++ {
			if c := res.Message[i]; c < 0x20 || c > 0x7e {
				t.Fatalf("message with byte 0x%02x", c)
			}
		}
		for _, v := range []string{statusValue(true, res), resultValue(true, res)} {
			for _, line := range strings.Split(v, "\r\n") {
				if len(line) > 998 {
					t.Fatalf("header line of %d octets", len(line))
				}
			}
		}
	})
}
