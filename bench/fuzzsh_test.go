package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeGo answers `go test -fuzz` the way Go 1.26 does in each case:
// a clean run, the coordinator's bare deadline race (go.dev/issue/75804),
// and a real finding. FAKE_STATE counts calls, so "flake-once" flakes
// only on the first.
const fakeGo = `#!/bin/sh
n=$(cat "$FAKE_STATE" 2>/dev/null || echo 0); n=$((n + 1)); echo $n >"$FAKE_STATE"
case "$FAKE" in
pass) echo PASS; exit 0;;
flake) printf -- '--- FAIL: FuzzX (2.10s)\n    context deadline exceeded\nFAIL\n'; exit 1;;
flake-once) if [ $n -eq 1 ]; then printf -- '--- FAIL: FuzzX (2.10s)\n    context deadline exceeded\nFAIL\n'; exit 1; fi; echo PASS; exit 0;;
finding) printf -- '--- FAIL: FuzzX (2.10s)\n    x_test.go:12: bad\n    Failing input written to testdata/fuzz/FuzzX/abc\nFAIL\n'; exit 1;;
deadline-and-error) printf -- '--- FAIL: FuzzX (2.10s)\n    x_test.go:12: context deadline exceeded\nFAIL\n'; exit 1;;
esac
`

// bench/fuzz.sh fails on a real finding, repeats a bare deadline race
// once, and counts a second bare race as passed (listed).
func TestFuzzScript(t *testing.T) {
	dir := t.TempDir()
	goBin := filepath.Join(dir, "go")
	if err := os.WriteFile(goBin, []byte(fakeGo), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		fake  string
		ok    bool
		calls string
		says  string
	}{
		{"pass", true, "1", "all passed"},
		{"flake-once", true, "2", "once more"},
		{"flake", true, "2", "coordinator deadline race twice"},
		{"finding", false, "1", "failed:"},
		{"deadline-and-error", false, "1", "failed:"},
	}
	for _, c := range cases {
		t.Run(c.fake, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "calls")
			cmd := exec.Command("sh", "fuzz.sh")
			cmd.Env = append(os.Environ(), "GO="+goBin, "FAKE="+c.fake, "FAKE_STATE="+state,
				"FUZZTIME=1s", "FUZZ_MATCH=^./milter FuzzGuard$")
			out, err := cmd.CombinedOutput()
			if (err == nil) != c.ok {
				t.Errorf("exit error %v, want ok=%v:\n%s", err, c.ok, out)
			}
			if !strings.Contains(string(out), c.says) {
				t.Errorf("output lacks %q:\n%s", c.says, out)
			}
			if calls, _ := os.ReadFile(state); strings.TrimSpace(string(calls)) != c.calls {
				t.Errorf("go ran %s times, want %s", strings.TrimSpace(string(calls)), c.calls)
			}
		})
	}
}
