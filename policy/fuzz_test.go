package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// FuzzParse: whatever the bytes, Parse returns either a Config that the
// processor accepts or positioned errors, and never panics.
func FuzzParse(f *testing.F) {
	f.Add(defaultTOML)
	seeds, _ := filepath.Glob("testdata/*/*.toml")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		cfg, err := Parse("fuzz.toml", data)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Parse took %v", d)
		}
		if err == nil {
			if cfg == nil || cfg.Policy == nil {
				t.Fatal("no error and no Config")
			}
			if _, err := opes.NewProcessor(cfg.Policy, nil); err != nil {
				t.Fatalf("accepted policy refused by the processor: %v", err)
			}
			return
		}
		if cfg != nil {
			t.Fatal("Config returned with an error")
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %T is not a non-empty Errors: %v", err, err)
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, e := range errs {
			if e.File != "fuzz.toml" || e.Line < 1 || e.Line > lines+1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("bad error position or text: %#v", e)
			}
			if strings.Contains(e.Msg, "internal error") {
				t.Fatalf("internal error: %v", e)
			}
		}
	})
}
