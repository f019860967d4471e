package sdk

import (
	"reflect"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func TestParseHeader(t *testing.T) {
	got, err := parseHeader("From: a\r\nSubject:x\r\n\ty\r\nX-Empty:\r\n\r\n")
	want := []opes.HeaderField{{Name: "From", Value: " a"}, {Name: "Subject", Value: "x\r\n\ty"}, {Name: "X-Empty", Value: ""}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseHeader = %+v, %v", got, err)
	}
	for _, bad := range []string{"From: a", "From: a\r\n", "", " cont\r\n\r\n", "no colon\r\n\r\n", "A: b\r\n\r\nmore", ": x\r\n\r\n"} {
		if _, err := parseHeader(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParseHeader: any HEADERS payload gives fields or an error, and
// fields render back to the same block.
func FuzzParseHeader(f *testing.F) {
	f.Add("From: a\r\nSubject:x\r\n\ty\r\n\r\n")
	f.Add("A:\r\n\r\n")
	f.Fuzz(func(t *testing.T, block string) {
		fields, err := parseHeader(block)
		if err != nil {
			return
		}
		if got := opes.FormatHeader(fields) + "\r\n"; got != block {
			t.Errorf("round trip %q -> %q", block, got)
		}
	})
}
