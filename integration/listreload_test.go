package integration

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestLookupListReloadedOnSIGHUP: an acl entry reads its senders from a
// list file; after the file changes, SIGHUP makes the running daemon
// refuse the newly listed sender, with the trace, without a restart.
func TestLookupListReloadedOnSIGHUP(t *testing.T) {
	t.Parallel()
	list := filepath.Join(TempDir(t), "blocked-senders")
	if err := os.WriteFile(list, []byte("# one address per line\nsomeone@example.net\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := `
[system]
uri = "` + itSystem + `"
privacy_url = "` + itSystem + `privacy"
[consent]
recipients = ["@example.net", "@example.org", "@example.test", "@x.test", "@y.test"]
[[service]]
name = "access"
kind = "acl"
[[service.options.entry]]
stage = "mail"
action = "deny"
sender_file = "` + list + `"
[[rule]]
name = "all"
run = ["access"]
`
	_, m, addr := mtaStack(t, "postfix", MilterOptions{Policy: policy})
	if tr := SendMail(t, addr, "blocked@example.org", []string{"bob@example.net"}, message("before-list")); !tr.Accepted() {
		t.Fatalf("sender not yet listed, but refused:\n%s", tr)
	}
	if err := os.WriteFile(list, []byte("someone@example.net\nblocked@example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m.WaitLog(t, "reloaded", 5*time.Second)
	c := Dial(t, addr)
	c.Ehlo("client.example")
	checkTraceReply(t, c.MailFrom("blocked@example.org"), 550, "5.7.1", itSystem+"svc/access")
	c.Quit()
}
