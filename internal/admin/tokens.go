package admin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
)

// MinTokenLength rejects tokens short enough to guess.
const MinTokenLength = 16

// maxTokenFile bounds the token file; it holds a few lines.
const maxTokenFile = 1 << 20

// Tokens holds the API tokens of a token file: one "name:token" per line,
// "#" starts a comment line. The name is who acts in the audit log. It is
// safe for concurrent use; Reload replaces the set atomically.
type Tokens struct {
	path string
	set  atomic.Pointer[[]tokenEntry]
}

type tokenEntry struct {
	name string
	sum  [sha256.Size]byte
}

// LoadTokens reads the token file. The file must not be accessible by
// other users: a token in a world-readable file is no secret.
func LoadTokens(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload rereads the file (on SIGHUP); on error the old set stays.
func (t *Tokens) Reload() error {
	f, err := os.Open(t.path)
	if err != nil {
		return fmt.Errorf("admin token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("admin token file: %w", err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return fmt.Errorf("admin token file %s: accessible by other users (mode %04o); chmod o-rwx it", t.path, fi.Mode().Perm())
	}
	if fi.Size() > maxTokenFile {
		return fmt.Errorf("admin token file %s: larger than %d bytes", t.path, maxTokenFile)
	}
	entries, err := parseTokens(bufio.NewScanner(f))
	if err != nil {
		return fmt.Errorf("admin token file %s:%w", t.path, err)
	}
	t.set.Store(&entries)
	return nil
}

// parseTokens reads "name:token" lines; errors start with the line number.
func parseTokens(sc *bufio.Scanner) ([]tokenEntry, error) {
	var entries []tokenEntry
	names := map[string]bool{}
	sums := map[[sha256.Size]byte]bool{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("%d: want name:token", n)
		case strings.ContainsFunc(name, isBadNameRune):
			return nil, fmt.Errorf("%d: name %q: only printable characters without spaces", n, name)
		case len(tok) < MinTokenLength:
			return nil, fmt.Errorf("%d: token of %q shorter than %d characters", n, name, MinTokenLength)
		case strings.ContainsFunc(tok, isBadNameRune):
			return nil, fmt.Errorf("%d: token of %q contains spaces or control characters", n, name)
		case names[name]:
			return nil, fmt.Errorf("%d: name %q listed twice", n, name)
		}
		sum := sha256.Sum256([]byte(tok))
		if sums[sum] {
			return nil, fmt.Errorf("%d: token of %q is also another name's token", n, name)
		}
		names[name], sums[sum] = true, true
		entries = append(entries, tokenEntry{name: name, sum: sum})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf(" %w", err)
	}
	if len(entries) == 0 {
		return nil, errors.New(" no tokens")
	}
	return entries, nil
}

func isBadNameRune(r rune) bool { return r <= ' ' || r == 0x7f }

// Authenticate returns the name of the token's owner. Every entry is
// compared, in constant time over hashes of equal length, so neither the
// position of a match nor the length of a token leaks through timing.
func (t *Tokens) Authenticate(token string) (string, bool) {
	if t == nil || token == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(token))
	name, found := "", 0
	for _, e := range *t.set.Load() {
		if subtle.ConstantTimeCompare(sum[:], e.sum[:]) == 1 {
			name, found = e.name, 1
		}
	}
	return name, found == 1
}

// requestToken takes the token from "Authorization: Bearer" or from the
// password of HTTP basic authentication (what a browser can send).
func requestToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	if _, pw, ok := r.BasicAuth(); ok {
		return pw
	}
	return ""
}

// ReadClientToken reads the token a client uses from a token file: the
// token of the first "name:token" line, or a bare token line.
func ReadClientToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if _, tok, ok := strings.Cut(s, ":"); ok {
			s = strings.TrimSpace(tok)
		}
		if s == "" {
			break
		}
		return s, nil
	}
	return "", fmt.Errorf("token file %s: no token", path)
}
