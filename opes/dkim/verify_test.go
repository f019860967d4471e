package dkim

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// signedFixture signs baseMsg with the sign service for example.org and
// returns the delivered text and the zone publishing the key.
func signedFixture(t *testing.T) (string, *dnsZone) {
	t.Helper()
	k := newKey(t, t.TempDir(), "rsa")
	_, delivered := run(t, baseMsg, newService(t, signOptions(k, ""), nil))
	return delivered, &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
}

func verifyOptions(extra string) string {
	return "[options]\nmode = \"verify\"\nauthserv_id = \"" + authserv + "\"\n" + extra
}

func TestVerify(t *testing.T) {
	signed, zone := signedFixture(t)
	b := tagValue(fieldValues(signed, "DKIM-Signature")[0], "b")[:8]
	pass := "dkim=pass header.b=" + b + " header.d=example.org header.s=sel"
	tamper := func(old, new string) string { return strings.Replace(signed, old, new, 1) }
	tempZone := &dnsZone{records: zone.records, fail: map[string]error{
		"sel._domainkey.example.org": &net.DNSError{Err: "server misbehaving", Name: "sel._domainkey.example.org", IsTemporary: true}}}
	plainErrZone := &dnsZone{fail: map[string]error{"sel._domainkey.example.org": errors.New("connection refused")}}

	tests := []struct {
		name    string
		raw     string
		zone    *dnsZone
		opts    string
		kind    opes.VerdictKind
		ar      []string // Authentication-Results after processing (our own last)
		action  string   // in OPES-Via
		enhance string   // refusal's enhanced code
	}{
		{name: "pass", raw: signed, zone: zone, kind: opes.Continue,
			ar: []string{authserv + "; " + pass}, action: "header-added"},
		{name: "body altered", raw: tamper("numbers are", "numbers were"), zone: zone, kind: opes.Continue,
			ar:     []string{authserv + `; dkim=fail reason="body hash did not verify" header.b=` + b + " header.d=example.org header.s=sel"},
			action: "header-added"},
		{name: "header altered", raw: tamper("Quarterly", "Urgent"), zone: zone, kind: opes.Continue,
			ar: []string{authserv + `; dkim=fail reason="signature did not verify: crypto/rsa: verification error" header.b=` + b + " header.d=example.org header.s=sel"}, action: "header-added"},
		{name: "unsigned", raw: baseMsg.raw(), zone: zone, kind: opes.Continue,
			ar: []string{authserv + "; dkim=none"}, action: "header-added"},
		{name: "no key: permerror", raw: signed, zone: &dnsZone{}, kind: opes.Continue,
			ar:     []string{authserv + `; dkim=permerror reason="no key for signature: lookup sel._domainkey.example.org: no key record" header.b=` + b + " header.d=example.org header.s=sel"},
			action: "header-added"},
		{name: "DNS failure: temperror", raw: signed, zone: tempZone, kind: opes.Continue,
			ar:     []string{authserv + `; dkim=temperror reason="key unavailable: lookup sel._domainkey.example.org: server misbehaving" header.b=` + b + " header.d=example.org header.s=sel"},
			action: "header-added"},
		{name: "any lookup error but NXDOMAIN is temporary", raw: signed, zone: plainErrZone, kind: opes.Continue,
			ar:     []string{authserv + `; dkim=temperror reason="key unavailable: lookup sel._domainkey.example.org: connection refused" header.b=` + b + " header.d=example.org header.s=sel"},
			action: "header-added"},

		{name: "on_fail reject", raw: tamper("numbers are", "numbers were"), zone: zone, opts: `on_fail = "reject"`,
			kind: opes.Reject, action: "rejected", enhance: "5.7.20"},
		{name: "on_fail reject, permerror counts as fail", raw: signed, zone: &dnsZone{}, opts: `on_fail = "reject"`,
			kind: opes.Reject, action: "rejected", enhance: "5.7.20"},
		{name: "on_fail reject, pass", raw: signed, zone: zone, opts: `on_fail = "reject"`, kind: opes.Continue,
			ar: []string{authserv + "; " + pass}, action: "header-added"},
		{name: "on_fail reject, unsigned", raw: baseMsg.raw(), zone: zone, opts: `on_fail = "reject"`, kind: opes.Continue,
			ar: []string{authserv + "; dkim=none"}, action: "header-added"},
		{name: "on_fail reject, temperror", raw: signed, zone: tempZone, opts: `on_fail = "reject"`, kind: opes.Continue,
			ar:     []string{authserv + `; dkim=temperror reason="key unavailable: lookup sel._domainkey.example.org: server misbehaving" header.b=` + b + " header.d=example.org header.s=sel"},
			action: "header-added"},
		{name: "on_fail quarantine", raw: tamper("numbers are", "numbers were"), zone: zone, opts: `on_fail = "quarantine"`,
			kind: opes.Quarantine, action: "quarantined",
			ar: []string{authserv + `; dkim=fail reason="body hash did not verify" header.b=` + b + " header.d=example.org header.s=sel"}},
		{name: "on_none reject", raw: baseMsg.raw(), zone: zone, opts: `on_none = "reject"`,
			kind: opes.Reject, action: "rejected", enhance: "5.7.20"},
		{name: "on_none reject, signed", raw: signed, zone: zone, opts: `on_none = "reject"`, kind: opes.Continue,
			ar: []string{authserv + "; " + pass}, action: "header-added"},
		{name: "on_temperror tempfail", raw: signed, zone: tempZone, opts: `on_temperror = "tempfail"`,
			kind: opes.TempFail, action: "rejected", enhance: "4.7.1"},

		{name: "forged results with our authserv-id removed, others kept",
			raw: "Authentication-Results: " + authserv + "; dkim=pass header.d=example.org\r\n" +
				"Authentication-Results: MX1.EXAMPLE.NET (forged);\r\n\tdkim=pass\r\n" +
				"Authentication-Results: (a comment) \"mx1.example.net\"; spf=pass\r\n" +
				"Authentication-Results: relay.example.org; dkim=pass header.d=example.org\r\n" +
				"Authentication-Results: mx1.example.net.evil.example; dkim=pass\r\n" +
				baseMsg.raw(),
			zone: zone, kind: opes.Continue, action: "header-added",
			// ours prepended, above the results of earlier hops (RFC 8601 §5)
			ar: []string{authserv + "; dkim=none", "relay.example.org; dkim=pass header.d=example.org",
				"mx1.example.net.evil.example; dkim=pass"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := parseMessage(t, tt.raw, "alice@example.org", "bob@example.net")
			o, delivered := run(t, m, newService(t, verifyOptions(tt.opts), tt.zone))
			if o.Kind != tt.kind && !(tt.kind == opes.Quarantine && o.Kind == opes.Continue) {
				t.Fatalf("outcome %v, want %v (%v)", o.Kind, tt.kind, o.Reply)
			}
			if tt.enhance != "" {
				checkRefusal(t, o, tt.enhance, tt.action)
				return
			}
			if tt.kind == opes.Quarantine && o.Quarantine != "DKIM signature invalid" {
				t.Errorf("quarantine reason %q", o.Quarantine)
			}
			if ar := fieldValues(delivered, FieldAuthResults); !slices.Equal(ar, tt.ar) {
				t.Errorf("Authentication-Results:\n got %q\nwant %q", ar, tt.ar)
			}
			// Ours is the first; a signed message carries the signer's too.
			if via := fieldValues(delivered, opes.FieldVia); len(via) == 0 || !strings.Contains(via[0], "svc/dkim; action="+tt.action) {
				t.Errorf("OPES-Via %q, want action=%s", via, tt.action)
			}
			// Nothing else changed: the received header minus forged
			// fields plus ours, the body as it came.
			if o.Body != nil {
				t.Error("body replaced")
			}
			for _, c := range o.HeaderChanges {
				if c.Name != FieldAuthResults && c.Name != opes.FieldSystem && c.Name != opes.FieldVia {
					t.Errorf("unexpected change %+v", c)
				}
			}
		})
	}
}

// checkRefusal asserts a refusal at the end of data with the trace in the
// reply (PROFILE §3).
func checkRefusal(t *testing.T, o *opes.Outcome, enhanced, action string) {
	t.Helper()
	if o.Reply == nil {
		t.Fatal("refusal without reply")
	}
	text := o.Reply.String()
	lines := strings.Split(text, "\r\n")
	code := map[byte]string{'5': "554", '4': "451"}[enhanced[0]]
	if len(lines) < 4 {
		t.Fatalf("reply:\n%s", text)
	}
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		if !strings.HasPrefix(l, code+sep+enhanced+" ") {
			t.Errorf("line %d %q: want %s%s%s", i, l, code, sep, enhanced)
		}
	}
	if !strings.Contains(lines[1], "OPES-System: "+sysURI+"; id=") {
		t.Errorf("no OPES-System line:\n%s", text)
	}
	if !strings.Contains(text, "OPES-Via: "+sysURI+"svc/dkim; action="+action) {
		t.Errorf("no OPES-Via line naming the service with action=%s:\n%s", action, text)
	}
	want := map[byte]string{'5': "DKIM signature invalid", '4': "DKIM key lookup failed"}[enhanced[0]]
	if enhanced[0] == '5' && strings.Contains(lines[0], "no DKIM signature") {
		want = "no DKIM signature"
	}
	if !strings.Contains(lines[0], want) {
		t.Errorf("first line %q lacks %q", lines[0], want)
	}
}

// Several signatures: one result each, in header order; one that passes
// makes the message pass; only max_signatures are verified.
func TestVerifyMultipleSignatures(t *testing.T) {
	dir := t.TempDir()
	kr, ke := newKey(t, dir, "rsa"), newKey(t, dir, "ed25519")
	// Both signers sign the same message, as two hops would.
	_, once := run(t, baseMsg, newService(t, signOptions(ke, ""), nil))
	m := parseMessage(t, once, "alice@example.org", "bob@example.net")
	rsaSvc := newService(t, "[options]\nmode = \"sign\"\n[[options.domains]]\ndomain = \"example.org\"\nselector = \"rsa\"\nkey_file = \""+kr.file+"\"\n", nil)
	_, twice := run(t, m, rsaSvc)
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {ke.txt}, "rsa._domainkey.example.org": {kr.txt}}}
	sigs := fieldValues(twice, "DKIM-Signature")
	if len(sigs) != 2 {
		t.Fatalf("%d signatures", len(sigs))
	}
	// The second hop's trace fields are above the first's signature now;
	// both still verify.
	for i, v := range goVerify(t, twice, zone) {
		if v.Err != nil {
			t.Errorf("signature %d: %v", i+1, v.Err)
		}
	}
	// The second signer prepended its signature: the RSA one is on top.
	if tagValue(sigs[0], "s") != "rsa" || tagValue(sigs[1], "s") != "sel" {
		t.Fatalf("signatures in header order: s=%s, s=%s; want the later (rsa) on top", tagValue(sigs[0], "s"), tagValue(sigs[1], "s"))
	}
	bR, bE := tagValue(sigs[0], "b")[:8], tagValue(sigs[1], "b")[:8]

	// Break the RSA key record: that signature fails, the other passes.
	bad := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {ke.txt}, "rsa._domainkey.example.org": {ke.txt}}}
	next := parseMessage(t, twice, "alice@example.org", "bob@example.net")
	o, got := run(t, next, newService(t, verifyOptions(`on_fail = "reject"`), bad))
	if o.Kind != opes.Continue {
		t.Fatalf("one passing signature is enough; got %v %v", o.Kind, o.Reply)
	}
	want := authserv + `; dkim=permerror reason="inappropriate key algorithm" header.b=` + bR + " header.d=example.org header.s=rsa; " +
		"dkim=pass header.b=" + bE + " header.d=example.org header.s=sel"
	if ar := fieldValues(got, FieldAuthResults); !slices.Equal(ar, []string{want}) {
		t.Errorf("Authentication-Results:\n got %q\nwant %q", ar, []string{want})
	}

	// max_signatures = 1: only the first (top) signature is verified.
	o, got = run(t, next, newService(t, verifyOptions("max_signatures = 1"), zone))
	if ar := fieldValues(got, FieldAuthResults); o.Kind != opes.Continue || len(ar) != 1 || strings.Count(ar[0], "dkim=") != 1 || !strings.Contains(ar[0], "header.b="+bR) {
		t.Errorf("max_signatures = 1: %v %q", o.Kind, ar)
	}
}

// A key lookup that hangs ends at the timeout with temperror.
func TestVerifyLookupTimeout(t *testing.T) {
	signed, _ := signedFixture(t)
	svc := newService(t, verifyOptions(`timeout = "50ms"`+"\n"+`on_temperror = "tempfail"`), nil)
	var seen time.Duration
	svc.lookupTXT = func(ctx context.Context, name string) ([]string, error) {
		began := time.Now()
		select {
		case <-ctx.Done():
			seen = time.Since(began)
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, errors.New("lookup was not bounded")
		}
	}
	o, _ := run(t, parseMessage(t, signed, "alice@example.org", "bob@example.net"), svc)
	if o.Kind != opes.TempFail {
		t.Fatalf("outcome %v %v", o.Kind, o.Reply)
	}
	if seen == 0 || seen > 5*time.Second {
		t.Errorf("lookup ran %v", seen)
	}
	checkRefusal(t, o, "4.7.1", "rejected")
}

func TestAuthservIDOf(t *testing.T) {
	for in, want := range map[string]string{
		" mx1.example.net; dkim=pass":              "mx1.example.net",
		"mx1.example.net 1; dkim=pass":             "mx1.example.net",
		"\r\n\tmx1.example.net;\r\n\tdkim=pass":    "mx1.example.net",
		"(c (nested) \\) x) mx1.example.net; none": "mx1.example.net",
		` "mx1.example.net"; none`:                 "mx1.example.net",
		`"mx1.exa\"mple"; none`:                    `mx1.exa"mple`,
		"mx1.example.net(comment); none":           "mx1.example.net",
		"(unclosed mx1.example.net; none":          "",
		`"unclosed`:                                "",
		"":                                         "",
	} {
		if got := authservIDOf(in); got != want {
			t.Errorf("authservIDOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// Values from the signature go into our header only when they are what
// they claim to be.
func TestResultParamsFromTheWire(t *testing.T) {
	tags := parseTags(" v=1; d=exa mple.org;\r\n\ts=sel\"; injected=1; b=ab/+\r\n\tCD12xyz; d=second")
	if got := domainParam(tags["d"]); got != "example.org" {
		t.Errorf("d = %q (white space is removed as RFC 6376 §3.2 says; the first d= counts)", got)
	}
	if got := domainParam(tags["s"]); got != "" {
		t.Errorf("s %q should be dropped", got)
	}
	if got := bPrefix(tags["b"]); got != "ab/+CD12" {
		t.Errorf("b prefix %q", got)
	}
	if got := bPrefix("ab\"cdefgh"); got != "" {
		t.Errorf("b prefix with a quote: %q", got)
	}
	got := formatResults(authserv, []sigResult{{value: "fail", reason: reasonText(errors.New(`dkim: a "quoted" \ reason`))}})
	if want := authserv + ";\r\n\tdkim=fail reason=\"a 'quoted' / reason\""; got != want {
		t.Errorf("formatResults = %q, want %q", got, want)
	}
}
