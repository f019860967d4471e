package pgp

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gnupg runs gpg with a private home in a temporary directory.
type gnupg struct {
	t    *testing.T
	home string
}

func newGnuPG(t *testing.T) *gnupg {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg (GnuPG) not installed: interoperability not tested")
	}
	// A short path: gpg-agent's socket lives in the home directory.
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	g := &gnupg{t: t, home: home}
	t.Cleanup(func() {
		if _, err := exec.LookPath("gpgconf"); err == nil {
			cmd := exec.Command("gpgconf", "--kill", "all")
			cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
			_ = cmd.Run()
		}
		_ = os.RemoveAll(home)
	})
	return g
}

// run runs gpg with args and stdin; it returns stdout and stderr and
// fails the test when gpg fails.
func (g *gnupg) run(stdin []byte, args ...string) (string, string) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "gpg", append([]string{"--batch", "--no-tty", "--trust-model", "always"}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.home)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		g.t.Fatalf("gpg %v: %v\n%s", args, err, errb.String())
	}
	return out.String(), errb.String()
}

func TestGnuPGInterop(t *testing.T) {
	g := newGnuPG(t)
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	alice := newKeyPair(t, dir, "Alice", "alice@example.org")
	g.run(nil, "--import", bob.secFile)
	g.run(nil, "--import", alice.pubFile)

	t.Run("gpg decrypts what we encrypt", func(t *testing.T) {
		r := run(t, newService(t, encryptOptions("", [2]string{"bob@example.net", bob.pubFile})), false,
			plainMsg("alice@example.org", "bob@example.net"))
		parts, _ := partsOf(t, r.raw, "multipart/encrypted")
		_, armored, err := splitEntity(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		out, _ := g.run(armored, "--decrypt")
		if out != originalEntity {
			t.Errorf("gpg decrypted %q, want %q", out, originalEntity)
		}
	})
	t.Run("gpg verifies what we sign", func(t *testing.T) {
		r := run(t, newService(t, signOptions(alice, "@example.org")), false, plainMsg("alice@example.org", "bob@example.net"))
		parts, _ := partsOf(t, r.raw, "multipart/signed")
		_, sig, err := splitEntity(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		signed, sigFile := filepath.Join(dir, "signed"), filepath.Join(dir, "signed.asc")
		writeFile(t, signed, string(parts[0]))
		writeFile(t, sigFile, string(sig))
		_, stderr := g.run(nil, "--verify", sigFile, signed)
		if !strings.Contains(stderr, `Good signature from "Alice <alice@example.org>"`) {
			t.Errorf("gpg --verify: %s", stderr)
		}
	})
	t.Run("we decrypt what gpg encrypts", func(t *testing.T) {
		entity := "Content-Type: text/plain; charset=us-ascii\r\n\r\nencrypted by GnuPG\r\n"
		armored, _ := g.run([]byte(entity), "--encrypt", "--armor", "-r", "bob@example.net")
		body := "--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--x\r\nContent-Type: application/octet-stream\r\n\r\n" +
			armored + "\r\n--x--\r\n"
		m := plainMsg("alice@example.org", "bob@example.net")
		m.header[4][1] = ` multipart/encrypted; protocol="application/pgp-encrypted"; boundary="x"`
		m.header = m.header[:5]
		m.body = string(crlf([]byte(body)))
		dec := newService(t, "[options]\nmode = \"decrypt\"\non_fail = \"reject\"\n[[options.keys]]\nrecipient = \"@example.net\"\nprivate_key_file = \""+bob.secFile+"\"\n")
		r := run(t, dec, true, m)
		if r.eom.Kind != 0 {
			t.Fatalf("refused: %v", r.eom.Reply)
		}
		_, got, _ := strings.Cut(r.raw, "\r\n\r\n")
		if got != "encrypted by GnuPG\r\n" {
			t.Errorf("decrypted body %q", got)
		}
		if ct, _ := headerValue(r.raw, "Content-Type"); ct != "text/plain; charset=us-ascii" {
			t.Errorf("Content-Type %q", ct)
		}
	})
}
