package linelen

import (
	"strings"
	"testing"
)

func TestCounter(t *testing.T) {
	const max = 10
	tests := []struct {
		name   string
		pieces []string
		want   []bool // after each piece
	}{
		{"short lines", []string{"abc\ndef\n", "0123456789\n"}, []bool{false, false}},
		{"exactly max, open", []string{"0123456789"}, []bool{false}},
		{"one over, open", []string{"01234567890"}, []bool{true}},
		{"over across pieces", []string{"012345", "6789", "0"}, []bool{false, false, true}},
		{"line ended in time", []string{"012345", "6789\nabc"}, []bool{false, false}},
		{"long line then short", []string{"x\n" + strings.Repeat("y", max+1) + "\nz\n"}, []bool{true}},
		{"CRLF counts the CR", []string{"012345678\r\n", "012345678\r"}, []bool{false, false}},
		{"stays over", []string{"01234567890", "\nshort\n"}, []bool{true, true}},
		{"empty pieces", []string{"", "\n", ""}, []bool{false, false, false}},
	}
	for _, tt := range tests {
		var c Counter
		for i, p := range tt.pieces {
			if got := c.Add([]byte(p), max); got != tt.want[i] {
				t.Errorf("%s: Add(%q) = %v, want %v", tt.name, p, got, tt.want[i])
			}
		}
	}
}
