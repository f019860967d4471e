package spamd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/internal/spamengine"
)

// result is spamd's answer to a SYMBOLS request.
type result struct {
	Spam     bool    // spamd's own decision: Score >= Required
	Score    float64 // total score
	Required float64 // the spam threshold of the spamd user
	Symbols  []string
}

// Bounds on spamd's answer. The answer is wire data from another
// process: a confused or hostile peer must not make us buffer without
// limit. A real answer is a status line, two or three short header lines
// and a symbol list of at most a few hundred names.
const (
	maxResponseLine    = 1024
	maxResponseHeaders = 32
	maxResponseBody    = 64 << 10
	maxSymbols         = 500
	maxSymbolLen       = 128
	maxScore           = 1e6 // GTUBE is 1000; anything near this is nonsense
)

// errProtocol marks an answer that is not SPAMD/1.x; the caller's error
// then says so instead of blaming the network.
var errProtocol = errors.New("malformed spamd answer")

// parseResponse reads spamd's answer to SYMBOLS (or CHECK, which has no
// body):
//
//	SPAMD/1.1 0 EX_OK
//	Content-length: 43
//	Spam: True ; 1000.0 / 5.0
//
//	GTUBE,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO
//
// A non-zero status is returned as an error carrying spamd's message
// (EX_USAGE, EX_PROTOCOL, EX_TEMPFAIL, ...).
func parseResponse(r io.Reader) (*result, error) {
	br := bufio.NewReaderSize(r, maxResponseLine)
	status, err := readLine(br)
	if err != nil {
		return nil, fmt.Errorf("status line: %w", err)
	}
	if err := parseStatus(status); err != nil {
		return nil, err
	}
	var res result
	haveSpam := false
	bodyLen := -1
	for n := 0; ; n++ {
		line, err := readLine(br)
		if err != nil {
			return nil, fmt.Errorf("header: %w", err)
		}
		if line == "" {
			break
		}
		if n >= maxResponseHeaders {
			return nil, fmt.Errorf("%w: more than %d header lines", errProtocol, maxResponseHeaders)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%w: header line %q has no colon", errProtocol, spamengine.Clip(line))
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			if bodyLen >= 0 {
				return nil, fmt.Errorf("%w: two Content-length lines", errProtocol)
			}
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > maxResponseBody {
				return nil, fmt.Errorf("%w: Content-length %q not in 0..%d", errProtocol, spamengine.Clip(value), maxResponseBody)
			}
			bodyLen = n
		case "spam":
			if haveSpam {
				return nil, fmt.Errorf("%w: two Spam lines", errProtocol)
			}
			if res.Spam, res.Score, res.Required, err = parseSpamLine(value); err != nil {
				return nil, err
			}
			haveSpam = true
		}
		// Other lines (DidSet, DidRemove, future additions) do not change
		// what we decide.
	}
	if !haveSpam {
		return nil, fmt.Errorf("%w: no Spam line", errProtocol)
	}
	var body []byte
	if bodyLen >= 0 {
		body = make([]byte, bodyLen)
		if _, err := io.ReadFull(br, body); err != nil {
			return nil, fmt.Errorf("%w: body shorter than Content-length %d", errProtocol, bodyLen)
		}
	} else {
		// spamd always sends Content-length with a body; without one, read
		// to the end but never more than the bound.
		body, err = io.ReadAll(io.LimitReader(br, maxResponseBody+1))
		if err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		if len(body) > maxResponseBody {
			return nil, fmt.Errorf("%w: body longer than %d octets", errProtocol, maxResponseBody)
		}
	}
	if res.Symbols, err = parseSymbols(body); err != nil {
		return nil, err
	}
	return &res, nil
}

// readLine reads one CRLF- or LF-terminated line without the terminator.
func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("%w: line longer than %d octets", errProtocol, maxResponseLine)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%w: connection closed mid-answer", errProtocol)
		}
		return "", err
	}
	return string(bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))), nil
}

// parseStatus accepts "SPAMD/1.<minor> <code> <message>" and turns a
// non-zero code into an error.
func parseStatus(line string) error {
	rest, ok := strings.CutPrefix(line, "SPAMD/1.")
	if !ok {
		return fmt.Errorf("%w: status line %q", errProtocol, spamengine.Clip(line))
	}
	minor, rest, _ := strings.Cut(rest, " ")
	if !allDigits(minor) {
		return fmt.Errorf("%w: status line %q", errProtocol, spamengine.Clip(line))
	}
	codeText, msg, _ := strings.Cut(strings.TrimLeft(rest, " "), " ")
	code, err := strconv.Atoi(codeText)
	if err != nil || !allDigits(codeText) || code > 255 {
		return fmt.Errorf("%w: status line %q", errProtocol, spamengine.Clip(line))
	}
	if code != 0 {
		return fmt.Errorf("spamd refused the request: %d %s", code, spamengine.Clip(msg))
	}
	return nil
}

// parseSpamLine parses "True ; 7.5 / 5.0" (spamd also says Yes/No).
func parseSpamLine(v string) (spam bool, score, required float64, err error) {
	bad := func() (bool, float64, float64, error) {
		return false, 0, 0, fmt.Errorf("%w: Spam line %q", errProtocol, spamengine.Clip(v))
	}
	flag, scores, ok := strings.Cut(v, ";")
	if !ok {
		return bad()
	}
	switch strings.ToLower(strings.TrimSpace(flag)) {
	case "true", "yes":
		spam = true
	case "false", "no":
	default:
		return bad()
	}
	s, r, ok := strings.Cut(scores, "/")
	if !ok {
		return bad()
	}
	if score, ok = parseScore(s); !ok {
		return bad()
	}
	if required, ok = parseScore(r); !ok {
		return bad()
	}
	return spam, score, required, nil
}

func parseScore(s string) (float64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 16 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		// Plain decimals only: ParseFloat would also take "Inf", "0x1p3"
		// and "1e9", none of which spamd sends.
		if c := s[i]; !(c >= '0' && c <= '9' || c == '.' || (c == '-' && i == 0)) {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.Abs(f) > maxScore {
		return 0, false
	}
	return f, true
}

// parseSymbols splits the comma-separated rule names. Names are
// SpamAssassin rule names ([A-Za-z0-9_]); anything else means the answer
// is not what we think it is, and it would end up in a header field.
func parseSymbols(body []byte) ([]string, error) {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxSymbols {
		return nil, fmt.Errorf("%w: more than %d symbols", errProtocol, maxSymbols)
	}
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue // "A,,B" or a trailing comma: harmless
		}
		if len(p) > maxSymbolLen || !isSymbol(p) {
			return nil, fmt.Errorf("%w: symbol %q", errProtocol, spamengine.Clip(p))
		}
		out = append(out, p)
	}
	return out, nil
}

func isSymbol(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
