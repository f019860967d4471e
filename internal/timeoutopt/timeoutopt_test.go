package timeoutopt

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	const max = 5 * time.Minute
	for in, want := range map[string]time.Duration{"30s": 30 * time.Second, " 1m30s ": 90 * time.Second, "5m": max, "1ns": time.Nanosecond} {
		if d, err := Parse(in, max); err != nil || d != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, d, err, want)
		}
	}
	for in, msg := range map[string]string{
		"30":   `"30" is not a duration (e.g. "30s")`,
		"":     `"" is not a duration`,
		"soon": `"soon" is not a duration`,
		"0s":   "0s is not between 0 and 5m0s",
		"-1s":  "-1s is not between 0 and 5m0s",
		"5m1s": "5m1s is not between 0 and 5m0s",
		"1h":   "1h0m0s is not between 0 and 5m0s",
	} {
		if d, err := Parse(in, max); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Parse(%q) = %v, %v; want an error mentioning %q", in, d, err, msg)
		}
	}
}
