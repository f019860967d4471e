package admin

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTokenFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
	return path
}

func TestTokens(t *testing.T) {
	path := writeTokenFile(t, "# admins\n\nalice:0123456789abcdef-alice\n  bob : 0123456789abcdef-bob  \n", 0o600)
	tok, err := LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ token, name string }{
		{"0123456789abcdef-alice", "alice"}, {"0123456789abcdef-bob", "bob"},
		{"0123456789abcdef-bo", ""}, {"0123456789abcdef-bob ", ""}, {"", ""}, {"alice", ""},
	} {
		name, ok := tok.Authenticate(c.token)
		if name != c.name || ok != (c.name != "") {
			t.Errorf("Authenticate(%q) = %q %v, want %q", c.token, name, ok, c.name)
		}
	}
	var nilTokens *Tokens
	if _, ok := nilTokens.Authenticate("0123456789abcdef-alice"); ok {
		t.Error("nil Tokens authenticated")
	}

	// Reload picks up changes and keeps the old set when the file is bad.
	if err := os.WriteFile(path, []byte("carol:0123456789abcdef-carol\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := tok.Authenticate("0123456789abcdef-alice"); ok {
		t.Error("removed token still valid after reload")
	}
	if err := os.WriteFile(path, []byte("dave:short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reload(); err == nil {
		t.Error("reload of a bad file succeeded")
	}
	if name, ok := tok.Authenticate("0123456789abcdef-carol"); !ok || name != "carol" {
		t.Error("a failed reload dropped the running tokens")
	}
}

func TestTokenFileErrors(t *testing.T) {
	for _, c := range []struct {
		content string
		mode    os.FileMode
		want    string
	}{
		{"alice:0123456789abcdef\n", 0o644, "accessible by other users"},
		{"alice:0123456789abcdef\n", 0o604, "accessible by other users"},
		{"# nothing\n", 0o600, "no tokens"},
		{"0123456789abcdef\n", 0o600, ":1: want name:token"},
		{":0123456789abcdef\n", 0o600, ":1: want name:token"},
		{"a b:0123456789abcdef\n", 0o600, "only printable characters"},
		{"alice:short\n", 0o600, "shorter than 16"},
		{"alice:0123456789 abcdef\n", 0o600, "contains spaces"},
		{"alice:0123456789abcdef\n#\nalice:0123456789abcdeg\n", 0o600, ":3: name \"alice\" listed twice"},
		{"alice:0123456789abcdef\nbob:0123456789abcdef\n", 0o600, "also another name's token"},
	} {
		_, err := LoadTokens(writeTokenFile(t, c.content, c.mode))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q mode %o: %v, want %q", c.content, c.mode, err, c.want)
		}
	}
	if _, err := LoadTokens(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestRequestToken(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer  abc ")
	if got := requestToken(r); got != "abc" {
		t.Errorf("bearer: %q", got)
	}
	r.Header.Set("Authorization", "bearer xyz")
	if got := requestToken(r); got != "xyz" {
		t.Errorf("lower-case scheme: %q", got)
	}
	r = httptest.NewRequest("GET", "/", nil)
	r.SetBasicAuth("anyone", "pw-token")
	if got := requestToken(r); got != "pw-token" {
		t.Errorf("basic: %q", got)
	}
	if got := requestToken(httptest.NewRequest("GET", "/", nil)); got != "" {
		t.Errorf("none: %q", got)
	}
}

func TestReadClientToken(t *testing.T) {
	for content, want := range map[string]string{
		"# comment\nops:0123456789abcdef\nother:zzzzzzzzzzzzzzzzzz\n": "0123456789abcdef",
		"  0123456789abcdef  \n": "0123456789abcdef",
	} {
		got, err := ReadClientToken(writeTokenFile(t, content, 0o600))
		if err != nil || got != want {
			t.Errorf("%q: %q %v", content, got, err)
		}
	}
	for _, content := range []string{"", "# only\n", "ops:\n"} {
		if _, err := ReadClientToken(writeTokenFile(t, content, 0o600)); err == nil {
			t.Errorf("%q: no error", content)
		}
	}
}
