package ocp

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDecode feeds arbitrary octets to the decoder and the typed readers
// of the OSMTP profile. Whatever decodes must
// re-encode to a canonical form that decodes to the same canonical form,
// and nothing may panic or exceed the limits. The seed corpus is in
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("PQ;\r\nTS 1 2;\r\n"))
	f.Add([]byte("DUM 1 0\r\nAM-Part: BODY\r\nKept: 0 5\r\n\r\n5:hello\r\n;\r\n"))
	lim := Limits{MaxMessage: 4096, MaxDepth: 8, MaxItems: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), lim)
		for i := 0; i < 64; i++ {
			m, err := r.ReadMessage()
			if err != nil {
				var se *SyntaxError
				if err != io.EOF && !errors.As(err, &se) {
					t.Fatalf("error of unexpected type %T: %v", err, err)
				}
				return
			}
			// The typed readers must cope with any shape of value.
			_, _ = ParseDecision(m)
			_, _ = PartOf(m)
			for _, v := range m.Anon {
				_, _ = ParseProfile(v)
				_, _ = ParseResult(v)
			}
			enc, err := m.Append(nil)
			if err != nil {
				t.Fatalf("decoded message does not encode: %v", err)
			}
			m2, err := NewReader(bytes.NewReader(enc), Limits{MaxMessage: 1 << 20, MaxDepth: 9, MaxItems: 33}).ReadMessage()
			if err != nil {
				t.Fatalf("canonical form %q does not decode: %v", enc, err)
			}
			enc2, _ := m2.Append(nil)
			if !bytes.Equal(enc, enc2) {
				t.Fatalf("canonical form not stable:\n%q\n%q", enc, enc2)
			}
		}
	})
}
