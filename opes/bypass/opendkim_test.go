package bypass

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// openDKIM is the real OpenDKIM filter in its test mode (opendkim -t:
// the milter code path without an MTA) with a key from opendkim-genkey.
type openDKIM struct {
	*enginetest.OpenDKIMTestMode
	txt string // the key's TXT record, as opendkim-genkey wrote it
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
	return &openDKIM{OpenDKIMTestMode: o, txt: o.TXT}
}

// sign returns msg with OpenDKIM's signature over signHeaders prepended,
// and the signature's h= tag.
func (o *openDKIM) sign(t *testing.T, msg, signHeaders string, overSign bool) (signed, h string) {
	t.Helper()
	conf := "Domain example.org\nSelector sel\nKeyFile " + o.KeyFile + "\n" +
		"Mode s\nSignatureAlgorithm rsa-sha256\nCanonicalization relaxed/simple\n" +
		"SignHeaders " + signHeaders + "\n"
	if overSign {
		conf += "OversignHeaders OPES-Bypass\n"
	}
	outs, err := o.Filter(conf, msg)
	if err != nil {
		t.Fatal(err)
	}
	out := []byte(outs)
	// ### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='v=1; ...\n\t...'
	m := regexp.MustCompile(`(?s)### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='([^']*)'`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no signature in opendkim output:\n%s", out)
	}
	sig := string(m[1])
	if hm := regexp.MustCompile(`[;\s]h=([^;]*);`).FindStringSubmatch(sig); hm != nil {
		h = strings.Join(strings.Fields(hm[1]), "")
	}
	return "DKIM-Signature: " + strings.ReplaceAll(sig, "\n", "\r\n") + "\r\n" + msg, h
}

// Interoperability: signatures made by OpenDKIM, verified by SignedBy.
func TestSignedByOpenDKIM(t *testing.T) {
	lookup := func(txt string) LookupTXTFunc {
		return func(_ context.Context, name string) ([]string, error) {
			if name != "sel._domainkey.example.org" {
				t.Errorf("lookup of %q", name)
			}
			return []string{txt}, nil
		}
	}
	check := func(name, msg, txt string, want []string) {
		t.Helper()
		got, err := SignedBy(context.Background(), strings.NewReader(msg), lookup(txt))
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: SignedBy = %q, %v; want %q", name, got, err, want)
		}
	}

	o := newOpenDKIM(t)
	signed, h := o.sign(t, baseMsg, "From,To,Subject,Date,OPES-Bypass", true)
	if strings.Count(strings.ToLower(h), "opes-bypass") != 2 {
		t.Errorf("over-signed h=%s", h)
	}
	check("over-signed by opendkim", signed, o.txt, []string{"example.org"})
	check("over-signed by opendkim, field added", "OPES-Bypass: *\r\n"+signed, o.txt, nil)
	check("over-signed by opendkim, field altered", strings.Replace(signed, "translate-de", "av", 1), o.txt, nil)

	signed, h = o.sign(t, baseMsg, "From,To,Subject,Date,OPES-Bypass", false)
	if strings.Count(strings.ToLower(h), "opes-bypass") != 1 {
		t.Errorf("h=%s", h)
	}
	check("signed once by opendkim", signed, o.txt, []string{"example.org"})
	check("signed once by opendkim, field added above", "OPES-Bypass: *\r\n"+signed, o.txt, nil)

	signed, h = o.sign(t, baseMsg, "From,To,Subject,Date", false)
	if strings.Contains(strings.ToLower(h), "opes-bypass") {
		t.Errorf("h=%s", h)
	}
	check("opendkim signature without OPES-Bypass", signed, o.txt, nil)
}
