package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// TestTransformsThroughPostfix: a large attachment becomes a signed HTTP
// link (kind links) and the result is DKIM-signed last (kind dkim), through
// real Postfix. The delivered message carries the link and no attachment,
// the link served by the admin listener returns the original bytes, the
// signature verifies on the delivered message, and the trace lists both
// services with their actions.
func TestTransformsThroughPostfix(t *testing.T) {
	t.Parallel()
	Require(t)
	dir := TempDir(t)
	store := filepath.Join(dir, "links")
	if err := os.Mkdir(store, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := enginetest.NewDKIMKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := FreeAddr(t)
	policy := `[system]
uri = "` + itSystem + `"

[consent]
senders = ["@example.org"]

[admin]
listen = "` + adminAddr + `"

[[service]]
name = "links"
kind = "links"
[service.options]
dir = "` + store + `"
base_url = "http://` + adminAddr + `/attachments"
min_size = 100000

[[service]]
name = "dkim-sign"
kind = "dkim"
[service.options]
mode = "sign"
[[service.options.domains]]
domain = "example.org"
selector = "it"
key_file = "` + key.PEMFile + `"

[[rule]]
name = "outbound"
stage = "mail"
run = ["links", "dkim-sign"]
`
	sink, _, pf := mta(t, MilterOptions{Policy: policy})
	file := make([]byte, 300<<10)
	if _, err := rand.Read(file); err != nil {
		t.Fatal(err)
	}
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, attachmentMessage("linked", "data.bin", file)); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	d := sink.WaitDump(t, HasHeader("Subject", "linked"), 20*time.Second)
	msg := string(d.Message)
	unfolded := strings.ReplaceAll(msg, "\n\t", " ")
	for _, want := range []string{itSystem + "svc/links; action=part-replaced", itSystem + "svc/dkim-sign; action=header-added"} {
		if !strings.Contains(unfolded, want) {
			t.Errorf("trace lacks %q:\n%s", want, headerOf(msg))
		}
	}
	if len(msg) > 100<<10 {
		t.Errorf("the attachment is still in the delivered message (%d octets)", len(msg))
	}
	link := regexp.MustCompile(`http://` + regexp.QuoteMeta(adminAddr) + `/attachments/[0-9a-f]{64}/[^\s"<>]+`).FindString(strings.ReplaceAll(msg, "=\n", ""))
	if link == "" {
		t.Fatalf("no link in the delivered message:\n%s", msg)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(strings.ReplaceAll(link, "=3D", "="))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || sha256.Sum256(got) != sha256.Sum256(file) {
		t.Errorf("GET %s: %d, %d octets; want the original %d", link, resp.StatusCode, len(got), len(file))
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader([]byte(strings.ReplaceAll(msg, "\n", "\r\n"))), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain == "it._domainkey.example.org" {
				return []string{key.TXT}, nil
			}
			return nil, errors.New("no such record")
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
		t.Errorf("the signature does not verify on the delivered message: %v %+v", err, verifs)
	}
}

func headerOf(msg string) string {
	h, _, _ := strings.Cut(msg, "\n\n")
	return h
}

// TestNormalizeThroughPostfix: a message with a 1500-octet line and a raw
// 8-bit Subject arrives repaired through real Postfix: every line at most
// 998 octets, the Subject an RFC 2047 encoded word, the trace says modified.
func TestNormalizeThroughPostfix(t *testing.T) {
	t.Parallel()
	policy := `[system]
uri = "` + itSystem + `"

[consent]
recipients = ["@example.net"]

[[service]]
name = "normalize"
kind = "normalize"

[[rule]]
name = "all"
run = ["normalize"]
`
	sink, _, pf := mta(t, MilterOptions{Policy: policy})
	msg := "From: alice@example.org\nTo: bob@example.net\nSubject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\nMessage-ID: <norm@example.org>\n\n" +
		strings.Repeat("x", 1500) + "\nend\n"
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, []byte(msg)); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	d := sink.WaitMessage(t, func(raw []byte) bool { return bytes.Contains(raw, []byte("<norm@example.org>")) }, 20*time.Second)
	got := string(ParseDump(d).Message)
	for i, l := range strings.Split(got, "\n") {
		if len(l) > 998 {
			t.Errorf("line %d is %d octets", i+1, len(l))
		}
	}
	if !strings.Contains(got, "Subject: =?") || !strings.Contains(strings.ReplaceAll(got, "\n\t", " "), itSystem+"svc/normalize; action=modified") {
		t.Errorf("not repaired:\n%s", headerOf(got))
	}
}
