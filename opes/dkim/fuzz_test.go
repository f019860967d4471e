package dkim

import (
	"context"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

// FuzzVerifyFields feeds hostile DKIM-Signature and Authentication-Results
// values through the verify service: it must never panic, always add one
// Authentication-Results field that the header accepts (no injected
// fields, printable ASCII), and remove exactly the fields claiming our
// authserv-id.
func FuzzVerifyFields(f *testing.F) {
	f.Add("v=1; a=rsa-sha256; d=example.org; s=sel; h=From; bh=AAAA; b=AAAAAAAAAAAA", "mx1.example.net; dkim=pass")
	f.Add("v=1; d=\"x\r\n\tInjected: yes\"; s=(; b=\";\\", "(comment (nested)) \"mx1.example.net\"; none")
	f.Add("v=1; a=ed25519-sha256; d=exa\tmple.org; s=s\x00el; h=from:from; bh=; b=", "MX1.EXAMPLE.NET")
	f.Add("", "(unclosed")
	svc, err := New(func(v any) error {
		o := v.(*options)
		o.Mode, o.AuthservID, o.Timeout = "verify", authserv, "1s"
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	s := svc.(*service)
	s.lookupTXT = (&dnsZone{records: map[string][]string{"sel._domainkey.example.org": {"v=DKIM1; k=rsa; p="}}}).LookupTXT
	f.Fuzz(func(t *testing.T, sig, ar string) {
		rt := opes.NewRemoteTransaction(nil, opes.BodyOptions{})
		defer rt.Close()
		rt.ReceivedField("From", " a@example.org")
		rt.ReceivedField("DKIM-Signature", " "+sig)
		rt.ReceivedField(FieldAuthResults, " "+ar)
		if _, err := rt.Tx.Body.Write([]byte("body\r\n")); err != nil {
			t.Fatal(err)
		}
		rt.SetStage(opes.StageEOM)
		_, err := s.Begin(rt.Tx).EndOfMessage(context.Background())
		if err != nil {
			t.Fatalf("EndOfMessage: %v", err)
		}
		values := rt.Tx.Header.Values(FieldAuthResults)
		forged := strings.EqualFold(authservIDOf(ar), authserv)
		if want := map[bool]int{true: 1, false: 2}[forged]; len(values) != want {
			t.Fatalf("%d Authentication-Results fields, want %d (forged=%v): %q", len(values), want, forged, values)
		}
		ours := values[0] // prepended: the topmost
		if !strings.HasPrefix(ours, authserv+";") {
			t.Fatalf("our field %q", ours)
		}
		fields := rt.Tx.Header.Fields()
		raw := fields[0].Value
		for i, line := range strings.Split(raw, "\r\n") {
			if i > 0 && !strings.HasPrefix(line, "\t") {
				t.Fatalf("line %d of %q is not a continuation", i, raw)
			}
			if err := opes.CheckPrintable(strings.ReplaceAll(line, "\t", " "), 998); err != nil {
				t.Fatalf("line %d of %q: %v", i, raw, err)
			}
		}
	})
}
