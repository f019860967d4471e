package integration

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	gomessage "github.com/emersion/go-message"
)

// TestPGPEncryptThroughPostfix: mail to a recipient with a key on file is
// delivered by real Postfix as PGP/MIME (RFC 3156) that the recipient's
// key decrypts back to the original text; the trace says modified, and
// the key was chosen by the envelope recipient.
func TestPGPEncryptThroughPostfix(t *testing.T) {
	t.Parallel()
	dir := TempDir(t)
	e, err := openpgp.NewEntity("Bob", "", "bob@example.net", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	w, _ := armor.Encode(&pub, openpgp.PublicKeyType, nil)
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	keyFile := filepath.Join(dir, "bob.asc")
	if err := os.WriteFile(keyFile, pub.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := `[system]
uri = "` + itSystem + `"

[consent]
recipients = ["@example.net"]

[[service]]
name = "pgp"
kind = "pgp"
[service.options]
mode = "encrypt"
[[service.options.keys]]
recipient = "bob@example.net"
public_key_file = "` + keyFile + `"

[[rule]]
name = "all"
run = ["pgp"]
`
	sink, _, pf := mta(t, MilterOptions{Policy: policy})
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("secret-plans")); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "secret-plans"), 20*time.Second)
	raw := string(d.Message)
	if strings.Contains(raw, "Hello.") {
		t.Fatalf("the text travelled in clear:\n%s", raw)
	}
	if !strings.Contains(strings.ReplaceAll(raw, "\n\t", " "), itSystem+"svc/pgp; action=modified") {
		t.Errorf("trace:\n%s", headerOf(raw))
	}
	m, err := gomessage.Read(strings.NewReader(strings.ReplaceAll(raw, "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if mt, _, _ := m.Header.ContentType(); mt != "multipart/encrypted" {
		t.Fatalf("Content-Type %q", mt)
	}
	mr := m.MultipartReader()
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		parts = append(parts, b)
	}
	if len(parts) != 2 {
		t.Fatalf("%d parts", len(parts))
	}
	blk, err := armor.Decode(bytes.NewReader(parts[1]))
	if err != nil {
		t.Fatal(err)
	}
	md, err := openpgp.ReadMessage(blk.Body, openpgp.EntityList{e}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(md.UnverifiedBody)
	if err != nil || !strings.Contains(string(plain), "Hello.") {
		t.Errorf("decrypted %q, %v", plain, err)
	}
}
