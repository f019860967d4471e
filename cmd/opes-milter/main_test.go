package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An invalid file never starts the daemon: every problem is printed as
// file:line:column and the exit status is 1.
func TestInvalidConfigDoesNotStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.toml")
	src := "[system]\nuri = \"http://insecure.example/opes\"\n\n[[service]]\nname = \"a\"\nkind = \"nosuch\"\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := run([]string{"-config", path, "-listen", "inet:1@127.0.0.1"}, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("want one line per problem, got:\n%s", stderr.String())
	}
	for _, want := range []string{path + ":2:", path + ":6:"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("no error at %s in:\n%s", want, stderr.String())
		}
	}
}

func TestBadListenSpec(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-listen", "inet:notaport@127.0.0.1"}, &stderr); code != 1 {
		t.Fatalf("exit %d; %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "notaport") {
		t.Errorf("error does not name the bad spec: %s", stderr.String())
	}
}
