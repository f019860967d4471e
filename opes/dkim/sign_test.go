package dkim

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// hTag returns the h= list of a DKIM-Signature value, lower-cased.
func hTag(t *testing.T, sig string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?:^|;)\s*h=([^;]*)`).FindStringSubmatch(sig)
	if m == nil {
		t.Fatalf("no h= in %q", sig)
	}
	var out []string
	for _, n := range strings.Split(m[1], ":") {
		out = append(out, strings.ToLower(strings.Join(strings.Fields(n), "")))
	}
	return out
}

func count(list []string, v string) int {
	n := 0
	for _, x := range list {
		if x == v {
			n++
		}
	}
	return n
}

// The delivered message — received header with the processor's changes,
// OPES trace fields on top — verifies with go-msgauth, and then with the
// verify service in a second processor.
func TestSignRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ alg, canon string }{
		{"rsa", ""}, {"rsa", "relaxed/simple"}, {"ed25519", ""}, {"ed25519", "relaxed/simple"},
	} {
		t.Run(tc.alg+"/"+tc.canon, func(t *testing.T) {
			k := newKey(t, dir, tc.alg)
			zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
			extra := ""
			if tc.canon != "" {
				extra = "canonicalization = \"" + tc.canon + "\""
			}
			o, delivered := run(t, baseMsg, newService(t, signOptions(k, extra), nil))
			if o.Kind != opes.Continue {
				t.Fatalf("outcome %v %v", o.Kind, o.Reply)
			}
			if got := firstFieldNames(delivered, 2); !slices.Equal(got, []string{opes.FieldSystem, opes.FieldVia}) {
				t.Errorf("delivered header starts with %q, want the OPES trace fields", got)
			}
			if via := fieldValues(delivered, opes.FieldVia); len(via) != 1 || !strings.Contains(via[0], sysURI+"svc/dkim; action=header-added") {
				t.Errorf("OPES-Via = %q", via)
			}
			sigs := fieldValues(delivered, "DKIM-Signature")
			if len(sigs) != 1 {
				t.Fatalf("%d DKIM-Signature fields in\n%s", len(sigs), delivered)
			}
			wantC := "c=relaxed/relaxed"
			if tc.canon != "" {
				wantC = "c=" + tc.canon
			}
			for _, want := range []string{"d=example.org", "s=sel", wantC, "a=" + tc.alg + "-sha256"} {
				if !strings.Contains(sigs[0], want) {
					t.Errorf("signature lacks %s: %s", want, sigs[0])
				}
			}
			h := hTag(t, sigs[0])
			for name, want := range map[string]int{
				"from": 2, "subject": 2, "to": 2, "date": 2, // present and over-signed
				"cc": 1, "reply-to": 1, // absent, over-signed: none may be added
				"message-id": 1, "mime-version": 1, "content-type": 1, // present
				"list-id": 0, "in-reply-to": 0, // absent, not over-signed: a list may add them
				"opes-system": 0, "opes-via": 0,
			} {
				if got := count(h, name); got != want {
					t.Errorf("h= names %s %d times, want %d (h=%s)", name, got, want, strings.Join(h, ":"))
				}
			}

			vs := goVerify(t, delivered, zone)
			if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.org" {
				t.Fatalf("go-msgauth: %+v", vs[0])
			}
			for name, tampered := range map[string]string{
				"From added on top":  "From: mallory@example.com\r\n" + delivered,
				"Cc added":           strings.Replace(delivered, "\r\n\r\n", "\r\nCc: eve@example.com\r\n\r\n", 1),
				"Subject changed":    strings.Replace(delivered, "Quarterly", "Urgent", 1),
				"body changed":       strings.Replace(delivered, "numbers are", "numbers were", 1),
				"trace field edited": strings.Replace(delivered, "OPES-System: ", "OPES-System: x", 1), // not signed: still passes
			} {
				vs := goVerify(t, tampered, zone)
				if pass := vs[0].Err == nil; pass != (name == "trace field edited") {
					t.Errorf("%s: verification error %v", name, vs[0].Err)
				}
			}
			// A mailing list adds its fields below: not signed, not over-signed.
			listed := strings.Replace(delivered, "\r\n\r\n", "\r\nList-Id: <l.example.net>\r\n\r\n", 1)
			if vs := goVerify(t, listed, zone); vs[0].Err != nil {
				t.Errorf("List-Id added: %v", vs[0].Err)
			}

			// The next hop runs the verify service on what we delivered.
			next := parseMessage(t, delivered, "alice@example.org", "bob@example.net")
			o, got := run(t, next, newService(t, "[options]\nmode = \"verify\"\nauthserv_id = \""+authserv+"\"", zone))
			if o.Kind != opes.Continue {
				t.Fatalf("verify outcome %v %v", o.Kind, o.Reply)
			}
			b := tagValue(sigs[0], "b")[:8]
			want := authserv + "; dkim=pass header.b=" + b + " header.d=example.org header.s=sel"
			if ar := fieldValues(got, FieldAuthResults); !slices.Equal(ar, []string{want}) {
				t.Errorf("Authentication-Results = %q, want %q", ar, want)
			}
		})
	}
}

func tagValue(sig, tag string) string {
	return parseTags(sig)[tag]
}

// Keys are chosen by the envelope sender's domain, never by From.
func TestSignChoosesKeyByEnvelope(t *testing.T) {
	k := newKey(t, t.TempDir(), "ed25519")
	svc := newService(t, signOptions(k, ""), nil)
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
	withFrom := func(from string) [][2]string {
		h := slices.Clone(baseMsg.header)
		h[0] = [2]string{"From", " " + from}
		return h
	}
	tests := []struct {
		name, sender, from string
		signed             bool
	}{
		{"envelope and From in the domain", "alice@example.org", "alice@example.org", true},
		{"envelope domain, other From", "alice@example.org", "someone@example.com", true},
		{"envelope domain in capitals", "Alice@EXAMPLE.ORG", "alice@example.org", true},
		{"From in the domain, envelope not", "mallory@example.com", "alice@example.org", false},
		{"subdomain of a configured domain", "alice@mail.example.org", "alice@example.org", false},
		{"null reverse-path", "", "MAILER-DAEMON@example.org", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := baseMsg
			m.from, m.header = tt.sender, withFrom(tt.from)
			o, delivered := run(t, m, svc)
			if o.Kind != opes.Continue {
				t.Fatalf("outcome %v", o.Kind)
			}
			sigs := fieldValues(delivered, "DKIM-Signature")
			if (len(sigs) == 1) != tt.signed || len(sigs) > 1 {
				t.Fatalf("%d signatures, want signed=%v", len(sigs), tt.signed)
			}
			via := fieldValues(delivered, opes.FieldVia)[0]
			wantAction := "action=analyzed"
			if tt.signed {
				wantAction = "action=header-added"
				if vs := goVerify(t, delivered, zone); vs[0].Err != nil {
					t.Errorf("verify: %v", vs[0].Err)
				}
			}
			if !strings.Contains(via, "svc/dkim; "+wantAction) {
				t.Errorf("OPES-Via %q lacks %s", via, wantAction)
			}
		})
	}
}

// The signature covers what services before it changed in the header.
func TestSignCoversEarlierChanges(t *testing.T) {
	k := newKey(t, t.TempDir(), "rsa")
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
	tagger := &extraService{eom: func(tx *opes.Transaction) error {
		if _, err := tx.Header.MarkSubject("[EXT]"); err != nil {
			return err
		}
		return tx.Header.Add("X-Scanned", "yes")
	}}
	o, delivered := run(t, baseMsg, tagger, newService(t, signOptions(k, "", "headers = [\"From\", \"Subject\", \"X-Scanned\"]\noversign = []"), nil))
	if o.Kind != opes.Continue {
		t.Fatalf("outcome %v", o.Kind)
	}
	if subj := fieldValues(delivered, "Subject"); len(subj) != 1 || !strings.HasPrefix(subj[0], "[EXT] Quarterly") {
		t.Fatalf("Subject = %q", subj)
	}
	sig := fieldValues(delivered, "DKIM-Signature")[0]
	if h := hTag(t, sig); !slices.Equal(h, []string{"from", "subject", "x-scanned"}) {
		t.Errorf("h=%q, want the configured fields present, nothing over-signed", h)
	}
	if vs := goVerify(t, delivered, zone); vs[0].Err != nil {
		t.Errorf("verify: %v\n%s", vs[0].Err, delivered)
	}
}

// A body replaced by an earlier service is the one signed.
func TestSignReplacedBody(t *testing.T) {
	k := newKey(t, t.TempDir(), "ed25519")
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
	replacer := &extraService{eom: func(tx *opes.Transaction) error {
		return tx.ReplaceBody(func(w *opes.Body) error {
			_, err := w.Write([]byte("The attachment was removed.\r\n"))
			return err
		})
	}}
	_, delivered := run(t, baseMsg, replacer, newService(t, signOptions(k, ""), nil))
	if !strings.HasSuffix(delivered, "\r\n\r\nThe attachment was removed.\r\n") {
		t.Fatalf("delivered body not replaced:\n%s", delivered)
	}
	if vs := goVerify(t, delivered, zone); vs[0].Err != nil {
		t.Errorf("verify: %v", vs[0].Err)
	}
}

func TestSignExpirationAndSpooledBody(t *testing.T) {
	k := newKey(t, t.TempDir(), "rsa")
	zone := &dnsZone{records: map[string][]string{"sel._domainkey.example.org": {k.txt}}}
	svc := newService(t, signOptions(k, "expiration = \"168h\""), nil)
	now := time.Now().Truncate(time.Second)
	svc.now = func() time.Time { return now }
	m := baseMsg
	// Above the 256 KiB the processor keeps in memory: read from the spool.
	m.body = strings.Repeat("A line of the body that goes on for a while.\r\n", 8000)
	_, delivered := run(t, m, svc)
	sig := fieldValues(delivered, "DKIM-Signature")[0]
	x, err := strconv.ParseInt(tagValue(sig, "x"), 10, 64)
	if err != nil || x != now.Add(168*time.Hour).Unix() {
		t.Errorf("x=%q, want %d", tagValue(sig, "x"), now.Add(168*time.Hour).Unix())
	}
	if vs := goVerify(t, delivered, zone); vs[0].Err != nil {
		t.Errorf("verify: %v", vs[0].Err)
	}
}

func TestHeaderKeys(t *testing.T) {
	k := &signKey{headers: []string{"From", "To", "Subject", "List-Id"}, oversign: []string{"From", "Cc"}}
	fields := []opes.HeaderField{{Name: "from"}, {Name: "To"}, {Name: "to"}, {Name: "Subject"}, {Name: "X-Other"}}
	want := []string{"From", "To", "To", "Subject", "From", "Cc"}
	if got := k.headerKeys(fields); !slices.Equal(got, want) {
		t.Errorf("headerKeys = %q, want %q", got, want)
	}
	// From is listed even when absent and not over-signed.
	k = &signKey{headers: []string{"From", "Subject"}}
	if got := k.headerKeys([]opes.HeaderField{{Name: "Subject"}}); !slices.Equal(got, []string{"Subject", "From"}) {
		t.Errorf("headerKeys without From = %q", got)
	}
}
