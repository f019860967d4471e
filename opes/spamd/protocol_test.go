package spamd

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *result
		err  string // substring; "" = success
	}{
		{"gtube", "SPAMD/1.1 0 EX_OK\r\nContent-length: 43\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO",
			&result{Spam: true, Score: 1000, Required: 5, Symbols: []string{"GTUBE", "NO_RECEIVED", "NO_RELAYS", "TVD_SPACE_RATIO"}}, ""},
		{"ham with trailing newline", "SPAMD/1.1 0 EX_OK\r\nContent-length: 19\r\nSpam: False ; 0.4 / 5.0\r\n\r\nMISSING_MID,TVD_X\r\n",
			&result{Score: 0.4, Required: 5, Symbols: []string{"MISSING_MID", "TVD_X"}}, ""},
		{"no symbols", "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -1.5 / 5.0\r\n\r\n",
			&result{Score: -1.5, Required: 5}, ""},
		{"CHECK answer without body", "SPAMD/1.1 0 EX_OK\r\nSpam: Yes ; 7.5 / 5.0\r\n\r\n",
			&result{Spam: true, Score: 7.5, Required: 5}, ""},
		{"LF only and extra headers", "SPAMD/1.5 0 EX_OK\nDidSet: local\nContent-length: 5\nspam: no ; 1 / 5\n\nA_B_C",
			&result{Score: 1, Required: 5, Symbols: []string{"A_B_C"}}, ""},
		{"empty entries", "SPAMD/1.1 0 EX_OK\r\nContent-length: 6\r\nSpam: False ; 0.0 / 5.0\r\n\r\nA,,B,\r\n",
			&result{Required: 5, Symbols: []string{"A", "B"}}, ""},

		{"empty", "", nil, "connection closed"},
		{"not spamd", "HTTP/1.1 200 OK\r\n\r\n", nil, "status line"},
		{"error status", "SPAMD/1.0 76 Bad header line: (EOF)\r\n", nil, "refused the request: 76 Bad header line"},
		{"bad code", "SPAMD/1.1 x EX_OK\r\n\r\n", nil, "status line"},
		{"huge code", "SPAMD/1.1 99999999999999999999 EX_OK\r\n\r\n", nil, "status line"},
		{"bad version", "SPAMD/1.a 0 EX_OK\r\n\r\n", nil, "status line"},
		{"truncated header", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5", nil, "closed mid-answer"},
		{"no spam line", "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", nil, "no Spam line"},
		{"two spam lines", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\nSpam: False ; 1 / 5\r\n\r\n", nil, "two Spam"},
		{"bad flag", "SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n", nil, "Spam line"},
		{"no semicolon", "SPAMD/1.1 0 EX_OK\r\nSpam: True 1 / 5\r\n\r\n", nil, "Spam line"},
		{"no slash", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 5\r\n\r\n", nil, "Spam line"},
		{"nan score", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5\r\n\r\n", nil, "Spam line"},
		{"inf score", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; Inf / 5\r\n\r\n", nil, "Spam line"},
		{"exponent", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e300 / 5\r\n\r\n", nil, "Spam line"},
		{"absurd score", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 99999999 / 5\r\n\r\n", nil, "Spam line"},
		{"header without colon", "SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", nil, "no colon"},
		{"negative length", "SPAMD/1.1 0 EX_OK\r\nContent-length: -1\r\nSpam: True ; 1 / 5\r\n\r\n", nil, "Content-length"},
		{"huge length", "SPAMD/1.1 0 EX_OK\r\nContent-length: 99999999\r\nSpam: True ; 1 / 5\r\n\r\n", nil, "Content-length"},
		{"two lengths", "SPAMD/1.1 0 EX_OK\r\nContent-length: 1\r\nContent-length: 1\r\n\r\n", nil, "two Content-length"},
		{"short body", "SPAMD/1.1 0 EX_OK\r\nContent-length: 10\r\nSpam: True ; 1 / 5\r\n\r\nGTUBE", nil, "shorter than Content-length"},
		{"symbol with space", "SPAMD/1.1 0 EX_OK\r\nContent-length: 7\r\nSpam: True ; 1 / 5\r\n\r\nA B,C_D", nil, "symbol"},
		{"symbol injecting a header", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\nGTUBE\r\nBcc: x@example.org", nil, "symbol"},
		{"long line", "SPAMD/1.1 0 EX_OK\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", nil, "longer than"},
		{"too many headers", "SPAMD/1.1 0 EX_OK\r\n" + strings.Repeat("X: y\r\n", 40) + "\r\n", nil, "header lines"},
		{"too many symbols", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\n" + strings.Repeat("A,", 600), nil, "symbols"},
		{"body without length too long", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\n" + strings.Repeat("A", 70000), nil, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte at a time: the parser must not depend on how the
			// answer is split into reads.
			got, err := parseResponse(iotest.OneByteReader(strings.NewReader(tt.in)))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestParseResponseReadError: a network error is passed on, not turned
// into a protocol complaint, so a timeout stays recognisable.
func TestParseResponseReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := parseResponse(iotest.ErrReader(boom))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add("SPAMD/1.1 0 EX_OK\r\nContent-length: 43\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO")
	f.Add("SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n")
	f.Add("SPAMD/1.0 76 Bad header line: (EOF)\r\n")
	f.Add("SPAMD/1.5 0 EX_OK\nContent-length: 3\nSpam: yes ; 1 / 5\n\nA,B")
	f.Fuzz(func(t *testing.T, in string) {
		res, err := parseResponse(strings.NewReader(in))
		if err != nil {
			if res != nil {
				t.Fatal("result with error")
			}
			return
		}
		if len(res.Symbols) > maxSymbols {
			t.Fatalf("%d symbols", len(res.Symbols))
		}
		for _, s := range res.Symbols {
			if !isSymbol(s) || len(s) > maxSymbolLen {
				t.Fatalf("symbol %q", s)
			}
		}
		if res.Score != res.Score || res.Score > maxScore || res.Score < -maxScore || res.Required > maxScore || res.Required < -maxScore {
			t.Fatalf("scores %v / %v", res.Score, res.Required)
		}
		// What we build from any accepted answer must be a valid header
		// value within the line limit.
		v := statusValue(res)
		for _, line := range strings.Split(v, "\r\n\t") {
			if len(line)+len(FieldStatus)+2 > maxLine || strings.ContainsAny(line, "\r\n") {
				t.Fatalf("status line %q", line)
			}
		}
	})
}
