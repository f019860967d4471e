package integration

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Pieces of TOML policy that several tests through Postfix use alike: the
// admin API with its token, the store and what hangs off it, the tagging
// service, and the quarantine and discard rules.

// adminToken is the admin API token ("name:secret") of every test policy
// with an [admin] table; writeTokens puts it in the token file.
const adminToken = "ops:0123456789abcdef0123456789"

// writeTokens writes the admin token file into dir and returns its path.
func writeTokens(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "tokens")
	if err := os.WriteFile(p, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// authorize gives an admin API request the admin token.
func authorize(req *http.Request) {
	_, secret, _ := strings.Cut(adminToken, ":")
	req.Header.Set("Authorization", "Bearer "+secret)
}

// storePolicy is the [admin], [store], [quarantine], [audit] and [ndr]
// part of a policy that keeps its state in dir: the admin API on adminAddr
// with the token file of writeTokens, a bbolt store holding the
// quarantine, an audit log, and delivery reports relayed to ndrRelay.
// storeKeys and quarantineKeys are more lines of those tables ("" for
// none).
func storePolicy(dir, adminAddr, ndrRelay, storeKeys, quarantineKeys string) string {
	return `
[admin]
listen = "` + adminAddr + `"
token_file = "` + filepath.Join(dir, "tokens") + `"

[store]
path = "` + filepath.Join(dir, "store.db") + `"
` + storeKeys + `

[quarantine]
mode = "store"
` + quarantineKeys + `

[audit]
log = "` + filepath.Join(dir, "audit.jsonl") + `"

[ndr]
relay = "` + ndrRelay + `"
hostname = "mx.example.test"
`
}

// tagExternal is a tag service "external" that puts "[EXTERNAL]" in front
// of the Subject, run on all mail by the rule "tag". bypassable lets a
// bypass (in the message, or a recipient's preference) skip it.
func tagExternal(bypassable bool) string {
	flag := ""
	if bypassable {
		flag = "bypassable = true\n"
	}
	return `
[[service]]
name = "external"
kind = "tag"
` + flag + `[service.options]
subject_prefix = "[EXTERNAL]"

[[rule]]
name = "tag"
run = ["external"]
`
}

// holdRule quarantines at MAIL, "held for review", the mail that when
// selects: one [rule.when] line, e.g. `sender = ["hold@example.org"]`.
func holdRule(when string) string {
	return `
[[rule]]
name = "hold"
stage = "mail"
verdict = "quarantine"
reason = "held for review"
[rule.when]
` + when + "\n"
}

// dropRule discards after the data, "sender blocked by policy", the mail
// that when selects (as for holdRule); the sender is owed a report.
func dropRule(when string) string {
	return `
[[rule]]
name = "drop"
stage = "eom"
verdict = "discard"
reason = "sender blocked by policy"
[rule.when]
` + when + "\n"
}
