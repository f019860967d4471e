package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func runCtl(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

const example = "../../contrib/policy-example.toml"

func TestCheck(t *testing.T) {
	code, out, _ := runCtl("check", "-config", example)
	if code != 0 || !strings.Contains(out, "ok (2 services, 3 rules") {
		t.Fatalf("check of the example: exit %d, %q", code, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[system]\nuri = \"https://x.example/opes/\"\n\n[[rule]]\nname = \"r\"\nverdict = \"reject\"\ncode = 450\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCtl("check", "-config", bad)
	if code != 1 || !strings.HasPrefix(errOut, bad+":7:") {
		t.Fatalf("invalid file: exit %d, stderr %q (want %s:7:col: ...)", code, errOut, bad)
	}
}

// Every policy shipped in contrib/ must pass check.
func TestContribPolicies(t *testing.T) {
	files, err := filepath.Glob("../../contrib/*.toml")
	if err != nil || len(files) < 3 {
		t.Fatalf("contrib policies: %v %v", files, err)
	}
	for _, f := range files {
		if code, out, errOut := runCtl("check", "-config", f); code != 0 {
			t.Errorf("%s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
}

func TestExplain(t *testing.T) {
	code, out, errOut := runCtl("explain", "-config", example, "-from", "alice@outside.example",
		"-rcpt", "bob@example.net", "-rcpt", "trap@example.net", "-client", "198.51.100.7",
		"-helo", "mail.outside.example", "-queue-id", "4ABC123", "testdata/external.eml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	golden(t, "explain-external.golden", out)

	// Refused at connect: exit 3 and the full reply.
	code, out, _ = runCtl("explain", "-config", example, "-from", "a@b.example", "-rcpt", "bob@example.net",
		"-client", "192.0.2.9", "testdata/external.eml")
	if code != 3 || !strings.Contains(out, "554-5.7.1 Your network is blocked by local policy") ||
		!strings.Contains(out, "554 5.7.1 Policy, privacy and bypass: https://mx1.example.net/opes/privacy") {
		t.Fatalf("connect refusal: exit %d\n%s", code, out)
	}
}

func TestExplainDefaultPolicy(t *testing.T) {
	code, out, errOut := runCtl("explain", "-from", "a@example.org", "-rcpt", "b@example.net", "-queue-id", "Q1", "testdata/external.eml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "--- header as delivered ---\nOPES-System: https://localhost/opes/; id=Q1\nOPES-Via: https://localhost/opes/; id=Q1\nFrom: Alice") {
		t.Errorf("default policy output:\n%s", out)
	}
}

func TestCheckWarnsWithoutConsent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.toml")
	src := "[system]\nuri = \"https://x.example/opes/\"\n\n[[service]]\nname = \"t\"\nkind = \"tag\"\n[service.options]\nheader = \"X-T: 1\"\n\n[[rule]]\nrun = [\"t\"]\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "-config", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "warning: no [consent]") {
		t.Errorf("no consent warning:\n%s", out.String())
	}
	if err := os.WriteFile(path, []byte(src+"\n[consent]\nrecipients = [\"@x.example\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	run([]string{"check", "-config", path}, &out, &errOut)
	if strings.Contains(out.String(), "warning") {
		t.Errorf("warning with a [consent]:\n%s", out.String())
	}
}
