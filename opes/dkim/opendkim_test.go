package dkim

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/opes"
)

// Interoperability with Debian's OpenDKIM, run in its test mode (opendkim
// -t: the filter's code path without an MTA) with keys from
// opendkim-genkey and public keys from a file instead of DNS.

type openDKIM struct {
	*enginetest.OpenDKIMTestMode
	keyFile string // sel.private from opendkim-genkey
	txt     string // its TXT record
}

func newOpenDKIM(t *testing.T) *openDKIM {
	t.Helper()
	if _, err := enginetest.LookBin("opendkim-genkey", ""); err != nil {
		t.Skip("opendkim-tools not installed (Debian packages opendkim, opendkim-tools)")
	}
	o, err := enginetest.NewOpenDKIMTestMode(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &openDKIM{OpenDKIMTestMode: o, keyFile: o.KeyFile, txt: o.TXT}
}

// runFilter runs opendkim -t over msg with conf and returns its output.
func (o *openDKIM) runFilter(t *testing.T, conf, msg string) string {
	t.Helper()
	out, err := o.Filter(conf, msg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// verifyWith has OpenDKIM verify msg against the given key records and
// returns the dkim= results of its Authentication-Results field.
func (o *openDKIM) verifyWith(t *testing.T, msg string, records map[string]string) []string {
	t.Helper()
	var keys strings.Builder
	for name, txt := range records {
		keys.WriteString(name + " " + txt + "\n")
	}
	keysPath := filepath.Join(o.Dir(), "keys.txt")
	if err := os.WriteFile(keysPath, []byte(keys.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out := o.runFilter(t, "Mode v\nAuthservID opendkim.example.net\nTestPublicKeys "+keysPath+"\n", msg)
	m := regexp.MustCompile(`(?s)hname='Authentication-Results' hvalue='([^']*)'`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no Authentication-Results in opendkim output:\n%s", out)
	}
	var res []string
	for _, r := range regexp.MustCompile(`dkim=(\w+)[^;]*header\.d=([\w.]+)`).FindAllStringSubmatch(m[1], -1) {
		res = append(res, r[1]+" "+r[2])
	}
	return res
}

// Signed by the sign service with the key opendkim-genkey made (PKCS #8
// RSA), verified by OpenDKIM.
func TestOpenDKIMVerifiesOurSignature(t *testing.T) {
	o := newOpenDKIM(t)
	ed := newKey(t, o.Dir(), "ed25519")
	for _, tc := range []struct {
		name, keyFile, txt, canon string
	}{
		{"rsa relaxed/relaxed", o.keyFile, o.txt, ""},
		{"rsa relaxed/simple", o.keyFile, o.txt, "relaxed/simple"},
		{"ed25519", ed.file, ed.txt, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if tc.canon != "" {
				extra = `canonicalization = "` + tc.canon + `"`
			}
			_, delivered := run(t, baseMsg, newService(t, signOptions(testKey{file: tc.keyFile}, extra), nil))
			if len(fieldValues(delivered, "DKIM-Signature")) != 1 {
				t.Fatalf("not signed:\n%s", delivered)
			}
			records := map[string]string{"sel._domainkey.example.org": tc.txt}
			if got := o.verifyWith(t, delivered, records); !slices.Equal(got, []string{"pass example.org"}) {
				t.Errorf("opendkim: %q, want pass", got)
			}
			tampered := strings.Replace(delivered, "numbers are", "numbers were", 1)
			if got := o.verifyWith(t, tampered, records); !slices.Equal(got, []string{"fail example.org"}) {
				t.Errorf("opendkim on a changed body: %q, want fail", got)
			}
		})
	}
}

// Signed by OpenDKIM — including its default simple/simple, which needs
// the header exactly as it came — verified by the verify service.
func TestVerifyOpenDKIMSignature(t *testing.T) {
	o := newOpenDKIM(t)
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {o.txt}}}
	msg := baseMsg.raw()
	for _, canon := range []string{"simple/simple", "relaxed/relaxed", "relaxed/simple"} {
		t.Run(canon, func(t *testing.T) {
			out := o.runFilter(t, "Mode s\nDomain example.org\nSelector sel\nKeyFile "+o.keyFile+"\nCanonicalization "+canon+"\n"+
				"SignHeaders From,To,Subject,Date,Message-ID\n", msg)
			m := regexp.MustCompile(`(?s)### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='([^']*)'`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no signature in opendkim output:\n%s", out)
			}
			signed := "DKIM-Signature: " + strings.ReplaceAll(m[1], "\n", "\r\n") + "\r\n" + msg
			b := tagValue(m[1], "b")[:8]
			svc := newService(t, verifyOptions(`on_fail = "reject"`), zone)
			res, delivered := run(t, parseMessage(t, signed, "alice@example.org", "bob@example.net"), svc)
			if res.Kind != opes.Continue {
				t.Fatalf("outcome %v %v", res.Kind, res.Reply)
			}
			want := authserv + "; dkim=pass header.b=" + b + " header.d=example.org header.s=sel"
			if ar := fieldValues(delivered, FieldAuthResults); !slices.Equal(ar, []string{want}) {
				t.Errorf("Authentication-Results %q, want %q", ar, want)
			}
			res, _ = run(t, parseMessage(t, strings.Replace(signed, "Quarterly", "Urgent", 1), "alice@example.org", "bob@example.net"), svc)
			if res.Kind != opes.Reject {
				t.Errorf("changed Subject: outcome %v, want reject", res.Kind)
			}
		})
	}
}
