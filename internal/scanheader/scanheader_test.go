package scanheader

import (
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func TestFormat(t *testing.T) {
	tests := []struct {
		name   string
		fields []opes.HeaderField
		want   string
	}{
		{"empty header", nil, "\r\n"},
		{"value with its space", []opes.HeaderField{{Name: "Subject", Value: " hi"}}, "Subject: hi\r\n\r\n"},
		{"space added", []opes.HeaderField{{Name: "Content-Type", Value: "multipart/mixed"}}, "Content-Type: multipart/mixed\r\n\r\n"},
		{"empty value", []opes.HeaderField{{Name: "X-Empty", Value: ""}}, "X-Empty: \r\n\r\n"},
		{"tab kept", []opes.HeaderField{{Name: "To", Value: "\ta@example.net"}}, "To:\ta@example.net\r\n\r\n"},
		{"bare LF folding", []opes.HeaderField{{Name: "Received", Value: " from a\n\tby b\r\n\tfor c"}}, "Received: from a\r\n\tby b\r\n\tfor c\r\n\r\n"},
		{"order kept", []opes.HeaderField{{Name: "A", Value: " 1"}, {Name: "B", Value: "2"}}, "A: 1\r\nB: 2\r\n\r\n"},
	}
	for _, tt := range tests {
		if got := Format(tt.fields); got != tt.want {
			t.Errorf("%s: Format = %q, want %q", tt.name, got, tt.want)
		}
	}
}
