package integration

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// TestChildMilterOpenDKIMThroughPostfix: a real OpenDKIM driven as the
// `milter` service signs mail that real Postfix delivers; the signature
// verifies on the delivered message (with our trace above it), and the
// trace lists the service with action=header-added.
func TestChildMilterOpenDKIMThroughPostfix(t *testing.T) {
	t.Parallel()
	Require(t)
	if _, err := enginetest.LookBin("opendkim", enginetest.OpenDKIMAptHint); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "odkim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	key, err := enginetest.NewDKIMKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := enginetest.StartOpenDKIM(enginetest.OpenDKIMOptions{Dir: dir, Conf: []string{
		"Mode s", "Domain example.org", "Selector it", "KeyFile " + key.PEMFile, "Canonicalization relaxed/relaxed",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	policy := `[system]
uri = "` + itSystem + `"

[consent]
senders = ["@example.org"]

[[service]]
name = "dkim-sign"
kind = "milter"
required_for_delivery = true
[service.options]
socket = "` + d.Socket + `"
stages = ["eom"]

[[rule]]
name = "sign"
stage = "mail"
run = ["dkim-sign"]
`
	sink, _, pf := mta(t, MilterOptions{Policy: policy})
	if tr := SendMail(t, pf.Addr(), "alice@example.org", []string{"bob@example.net"}, message("signed")); !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	dump := sink.WaitDump(t, HasHeader("Subject", "signed"), 15*time.Second)
	msg := string(dump.Message)
	unfolded := strings.ReplaceAll(msg, "\n\t", " ")
	if !strings.Contains(unfolded, itSystem+"svc/dkim-sign; action=header-added") || !strings.Contains(msg, "DKIM-Signature:") {
		t.Fatalf("delivered message lacks the signature or the trace:\n%s", msg)
	}
	raw := strings.ReplaceAll(msg, "\n", "\r\n")
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader([]byte(raw)), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain == "it._domainkey.example.org" {
				return []string{key.TXT}, nil
			}
			return nil, errors.New("no such record")
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "example.org" {
		t.Fatalf("signature does not verify on the delivered message: %v %+v\n%s", err, verifs, msg)
	}
}
