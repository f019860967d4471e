package match

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func writeList(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestListFiles(t *testing.T) {
	clients := writeList(t, "# blocked networks\n192.0.2.0/24\n\n2001:db8::/32  # docs\n")
	senders := writeList(t, "spammer@example.org\n<>\n")
	domains := writeList(t, ".bad.example\n")
	c, err := Compile(Spec{Client: []string{"198.51.100.1"}, ClientFile: clients})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"192.0.2.77": true, "2001:db8::5": true, "198.51.100.1": true, "203.0.113.1": false} {
		tx := &opes.Transaction{Conn: &opes.Connection{Addr: netip.MustParseAddr(addr)}}
		if got := c.Match(tx, nil); got != want {
			t.Errorf("client %s: %v, want %v", addr, got, want)
		}
	}
	c, err = Compile(Spec{SenderFile: senders})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"Spammer@Example.org": true, "": true, "ok@example.org": false} {
		tx := &opes.Transaction{Conn: &opes.Connection{}, Sender: &opes.Address{Addr: addr}}
		if got := c.Match(tx, nil); got != want {
			t.Errorf("sender %q: %v, want %v", addr, got, want)
		}
	}
	c, err = Compile(Spec{RecipientDomainFile: domains})
	if err != nil {
		t.Fatal(err)
	}
	tx := &opes.Transaction{Conn: &opes.Connection{}}
	if !c.Match(tx, &opes.Recipient{Address: opes.Address{Addr: "x@mx.bad.example"}}) || c.Match(tx, &opes.Recipient{Address: opes.Address{Addr: "x@good.example"}}) {
		t.Error("recipient_domain_file does not match as recipient_domain")
	}
}

func TestListFileErrors(t *testing.T) {
	bad := writeList(t, "192.0.2.0/24\n\n# next is wrong\nnot-an-address\n")
	_, err := Compile(Spec{ClientFile: bad})
	if err == nil || !strings.Contains(err.Error(), "client_file: "+bad+":4: ") {
		t.Errorf("bad entry: %v, want the file and line 4", err)
	}
	if _, err := Compile(Spec{ClientFile: "relative/list"}); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("relative path: %v", err)
	}
	if _, err := Compile(Spec{SenderFile: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.HasPrefix(err.Error(), "sender_file: ") {
		t.Errorf("missing file: %v", err)
	}
	// An inline error keeps its own key.
	if _, err := Compile(Spec{Client: []string{"bogus"}, ClientFile: writeList(t, "192.0.2.1\n")}); err == nil || !strings.HasPrefix(err.Error(), "client[1]: ") {
		t.Errorf("inline error: %v", err)
	}
}
