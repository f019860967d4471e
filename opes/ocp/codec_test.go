package ocp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// rfcWire turns the RFC's rendering (one message per line group, CRLF not
// shown) into bytes: every "\n" becomes CRLF.
func rfcWire(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func decodeAll(t *testing.T, s string, lim Limits) []*Message {
	t.Helper()
	r := NewReader(strings.NewReader(s), lim)
	var out []*Message
	for {
		m, err := r.ReadMessage()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("decode %q: %v", s, err)
		}
		out = append(out, m)
	}
}

// TestRFCExamples decodes the examples of RFC 4037 §3.3, §6.2 and RFC 4236
// §4 (figure 15), corrected where the RFCs are wrong, and checks that
// re-encoding gives the same bytes.
//
// Corrections (see the spec digest §5.11):
//   - §3.3 "32:http://www.iana.org/assignments/opes/ocp/tls": the URI has 44
//     octets, so the prefix is 44.
//   - §3.3 "Size-Request" is spelled "Size-request" in §11.17; names are
//     case-sensitive (the codec keeps either, the agents read both).
//   - §6.2 "31:ocp://example/storage/volatile": 30 octets.
//   - §6.2 "CSE { 400 ... }": the message is CE, and the ABNF allows no
//     spaces inside braces: CE {400 "33:..."}.
//   - RFC 4236 figure 15 omits the ';' after "S: DUY 88 65 64".
//   - The §3.3 DUM example shows the payload CRLF as "\r\n" and the
//     payload's own trailing CRLF is missing; the ABNF needs both.
func TestRFCExamples(t *testing.T) {
	examples := []struct {
		name string
		wire string
		want *Message
	}{
		{"PQ", "PQ;\n", &Message{Name: "PQ"}},
		{"TS", "TS 1 2;\n", NewMessage("TS", Atom("1"), Atom("2"))},
		{"DWM", "DWM 22;\n", NewMessage("DWM", Atom("22"))},
		{"DWP", "DWP 22 16;\n", NewMessage("DWP", Atom("22"), Atom("16"))},
		{"x-doit", "x-doit \"5:xyzzy\";\n", NewMessage("x-doit", Atom("xyzzy"))},
		{"NO tls", "NO ({\"44:http://www.iana.org/assignments/opes/ocp/tls\"});\n",
			NewMessage("NO", List{&Struct{Anon: []Value{Atom("http://www.iana.org/assignments/opes/ocp/tls")}}})},
		{"NO http", "NO ({\"54:http://www.iana.org/assignments/opes/ocp/http/response\"\nOptional-Parts: (request-header)\n}," +
			"{\"54:http://www.iana.org/assignments/opes/ocp/http/response\"\nOptional-Parts: (request-header,request-body)\nTransfer-Encodings: (chunked)\n});\n",
			NewMessage("NO", List{
				&Struct{Anon: []Value{Atom("http://www.iana.org/assignments/opes/ocp/http/response")},
					Named: []Param{{Name: "Optional-Parts", Values: []Value{List{Atom("request-header")}}}}},
				&Struct{Anon: []Value{Atom("http://www.iana.org/assignments/opes/ocp/http/response")},
					Named: []Param{{Name: "Optional-Parts", Values: []Value{List{Atom("request-header"), Atom("request-body")}}},
						{Name: "Transfer-Encodings", Values: []Value{List{Atom("chunked")}}}}},
			})},
		{"DWM ext", "DWM 1 3\nSize-Request: 16384\nX-Need-Info: \"26:twenty six octet extension\"\n;\n",
			NewMessage("DWM", Atom("1"), Atom("3")).With("Size-Request", Atom("16384")).With("X-Need-Info", Atom("twenty six octet extension"))},
		{"DUM", "DUM 1 13\nModp: 75\n\n10:raw octets\n;\n",
			NewMessage("DUM", Atom("1"), Atom("13")).With("Modp", Atom("75")).WithPayload([]byte("raw octets"))},
		{"NR pending", "NR\nOffer-Pending: true\n;\n", (&Message{Name: "NR"}).With("Offer-Pending", Atom("true"))},
		{"NR unknowns", "NR\nUnknowns: ({\"30:ocp://example/storage/volatile\"})\n;\n",
			(&Message{Name: "NR"}).With("Unknowns", List{&Struct{Anon: []Value{Atom("ocp://example/storage/volatile")}}})},
		{"CE", "CE {400 \"33:lack of VolStore protocol support\"};\n",
			NewMessage("CE", Failure("lack of VolStore protocol support").Value())},
		{"DUM kept", "DUM 88 65\nKept: 65 64\nAM-Part: response-header\n\n3:abc\n;\n",
			NewMessage("DUM", Atom("88"), Atom("65")).With("Kept", Atom("65"), Atom("64")).With("AM-Part", Atom("response-header")).WithPayload([]byte("abc"))},
		{"DUY", "DUY 88 65 64;\n", NewMessage("DUY", Atom("88"), Atom("65"), Atom("64"))},
		{"empty quoted", "x \"0:\";\n", NewMessage("x", Atom(""))},
		{"empty list and struct", "x () {};\n", NewMessage("x", List{}, &Struct{})},
		{"struct named only", "x {\nA: 1\n};\n", NewMessage("x", &Struct{Named: []Param{{Name: "A", Values: []Value{Atom("1")}}}})},
		{"payload only", "DUM 1 0\n5:hello\n;\n", NewMessage("DUM", Atom("1"), Atom("0")).WithPayload([]byte("hello"))},
		{"empty payload", "DUM 1 0\n0:\n;\n", NewMessage("DUM", Atom("1"), Atom("0")).WithPayload([]byte{})},
	}
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			w := rfcWire(ex.wire)
			got := decodeAll(t, w, Limits{})
			if len(got) != 1 {
				t.Fatalf("decoded %d messages", len(got))
			}
			enc, err := got[0].Append(nil)
			if err != nil {
				t.Fatal(err)
			}
			canon := w
			if ex.name == "x-doit" { // a quoted value that could be bare is sent bare
				canon = "x-doit xyzzy;\r\n"
			}
			if string(enc) != canon {
				t.Errorf("re-encoded:\n%q\nwant\n%q", enc, w)
			}
			want, err := ex.want.Append(nil)
			if err != nil {
				t.Fatal(err)
			}
			if string(want) != canon {
				t.Errorf("built message encodes as\n%q\nwant\n%q", want, w)
			}
		})
	}
}

// TestRFCExampleErrorsRejected shows that the RFC's uncorrected bytes are
// not valid OCP, so they cannot slip into test vectors.
func TestRFCExampleErrorsRejected(t *testing.T) {
	bad := map[string]string{
		"wrong size 32 for 44 octets": "NO ({\"32:http://www.iana.org/assignments/opes/ocp/tls\"});\n",
		"wrong size 31 for 30 octets": "NO ({\"31:ocp://example/storage/volatile\"});\n",
		"spaces inside braces":        "CE { 400 \"3:bad\" };\n",
		"missing semicolon":           "DUY 88 65 64\nS",
	}
	for name, s := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := NewReader(strings.NewReader(rfcWire(s)), Limits{}).ReadMessage()
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a SyntaxError", err)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		in    string
		lim   Limits
		msg   string // part of the error text
		limit bool   // wraps ErrLimit
		eof   bool   // wraps io.ErrUnexpectedEOF
	}{
		{in: "1X;\r\n", msg: "expected a name"},
		{in: "PQ;\n", msg: "expected CRLF"},
		{in: "PQ ;\r\n", msg: "expected a value"},
		{in: "PQ  1;\r\n", msg: "expected a value"},
		{in: "TS 1 2", msg: "stream ended", eof: true},
		{in: "x \"05:hello\";\r\n", msg: "invalid size"},
		{in: "x \"5:hell\";\r\n", msg: "after quoted data"},
		{in: "x \"5:hell", msg: "stream ended", eof: true},
		{in: "x \"3:hello\";\r\n", msg: "after quoted data"},
		{in: "x \"2147483648:a\";\r\n", msg: "invalid size"},
		{in: "x \"99999999999:a\";\r\n", msg: "more than 10 digits"},
		{in: "x (a,,b);\r\n", msg: "expected a value"},
		{in: "x (a b);\r\n", msg: "expected ',' or ')'"},
		{in: "x {a\r\nB:1\r\n};\r\n", msg: "SP after B:"},
		{in: "x\r\nA: 1\r\nA: 2\r\n;\r\n", msg: "given twice"},
		{in: "x\r\nA: 1\r\n\r\nz\r\n;\r\n", msg: "expected payload size"},
		{in: "x\r\n;\r\n", msg: "expected payload size"},
		{in: "x\r\nA: 1;\r\n", msg: "expected CRLF"},
		{in: "x 1\r\n5:hello;\r\n", msg: "expected CRLF"},
		{in: "x ((((((((a))))))));\r\n", lim: Limits{MaxDepth: 4}, msg: "nested deeper", limit: true},
		{in: "x (a,b,c,d);\r\n", lim: Limits{MaxItems: 3}, msg: "list longer", limit: true},
		{in: "x a b c d;\r\n", lim: Limits{MaxItems: 3}, msg: "anonymous values", limit: true},
		{in: "DUM 1 0\r\n100:" + strings.Repeat("a", 100) + "\r\n;\r\n", lim: Limits{MaxMessage: 64}, msg: "longer than 64", limit: true},
		{in: "x " + strings.Repeat("a", 100) + ";\r\n", lim: Limits{MaxMessage: 64}, msg: "longer than 64", limit: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			r := NewReader(strings.NewReader(c.in), c.lim)
			_, err := r.ReadMessage()
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a SyntaxError", err)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %v, want it to mention %q", err, c.msg)
			}
			if errors.Is(err, ErrLimit) != c.limit {
				t.Errorf("errors.Is(err, ErrLimit) = %v", !c.limit)
			}
			if errors.Is(err, io.ErrUnexpectedEOF) != c.eof {
				t.Errorf("errors.Is(err, io.ErrUnexpectedEOF) = %v", !c.eof)
			}
			if _, err2 := r.ReadMessage(); err2 != err {
				t.Errorf("error is not sticky: %v", err2)
			}
		})
	}
}

// TestStreaming decodes messages delivered one octet per Read.
func TestStreaming(t *testing.T) {
	var buf bytes.Buffer
	msgs := []*Message{
		NewMessage("CS"),
		NewMessage("NO", List{&Struct{Anon: []Value{Atom("https://example.org/x")}, Named: []Param{{Name: "P", Values: []Value{List{Atom("A"), Atom("b c")}}}}}}),
		NewMessage("DUM", Atom("7"), Atom("0")).With("AM-Part", Atom("BODY")).WithPayload([]byte("line\r\n;\r\n{\"")),
		NewMessage("TE", Atom("7"), Failure("timeout").Value()),
	}
	for _, m := range msgs {
		if err := Encode(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	want := buf.String()
	r := NewReader(iotest.OneByteReader(strings.NewReader(want)), Limits{})
	var got bytes.Buffer
	for i := 0; ; i++ {
		m, err := r.ReadMessage()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i >= len(msgs) {
			t.Fatal("too many messages")
		}
		_ = Encode(&got, m)
	}
	if got.String() != want {
		t.Errorf("round trip:\n%q\nwant\n%q", got.String(), want)
	}
	if r.Offset() != int64(len(want)) {
		t.Errorf("offset %d, want %d", r.Offset(), len(want))
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	for _, m := range []*Message{
		{Name: ""}, {Name: "1a"}, {Name: "a b"},
		(&Message{Name: "x"}).With("bad name"),
		{Name: "x", Anon: []Value{nil}},
		{Name: "x", Named: []Param{{Name: "A"}}},
	} {
		if _, err := m.Append(nil); err == nil {
			t.Errorf("%+v encoded", m)
		}
	}
}

func TestTypedAccessors(t *testing.T) {
	if n, err := Uni(Atom("2147483647")); err != nil || n != MaxUni {
		t.Errorf("Uni(max) = %d, %v", n, err)
	}
	for _, bad := range []Value{Atom("2147483648"), Atom("01"), Atom("-1"), Atom(""), List{}, nil} {
		if _, err := Uni(bad); err == nil {
			t.Errorf("Uni(%v) accepted", bad)
		}
	}
	r, err := ParseResult(nil)
	if err != nil || r.Code != 200 || r.Failed() {
		t.Errorf("absent result = %v, %v", r, err)
	}
	r, err = ParseResult(&Struct{Anon: []Value{Atom("299")}})
	if err != nil || !r.Failed() {
		t.Errorf("unknown code must count as failure: %v, %v", r, err)
	}
	if _, err := ParseResult(&Struct{}); err == nil {
		t.Error("result without code accepted")
	}
	if b, err := Bool(Atom("maybe")); err == nil {
		t.Errorf("Bool(maybe) = %v", b)
	}
}
