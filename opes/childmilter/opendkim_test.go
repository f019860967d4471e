package childmilter

import (
	"bytes"
	"crypto/rsa"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/opesmilter/opes-milter/internal/enginetest"
	"github.com/opesmilter/opes-milter/opes"
)

// The tests run a real OpenDKIM (Debian's opendkim package), started in
// the foreground from a directory of its own with a key made by the test,
// on a unix socket or a free loopback port. It needs no DNS to sign, nor
// to judge a message that has no signature at all.

// openDKIM is one started opendkim (internal/enginetest).
type openDKIM struct {
	*enginetest.OpenDKIM
	socket string // our socket option for it
}

// dkimKey is a signing key and the TXT record that publishes it.
type dkimKey struct {
	key     *rsa.PrivateKey
	pemFile string
	txt     string
}

// newDKIMKey writes a fresh 2048-bit RSA key as PEM, the way
// opendkim-genkey does, and returns the matching DNS record.
func newDKIMKey(t *testing.T, dir string) dkimKey {
	t.Helper()
	k, err := enginetest.NewDKIMKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dkimKey{key: k.Key, pemFile: k.PEMFile, txt: k.TXT}
}

// startOpenDKIM runs opendkim with conf (lines without Socket and the
// process settings) on a unix socket, or on TCP when inet is set.
func startOpenDKIM(t *testing.T, dir string, conf []string, inet bool) *openDKIM {
	t.Helper()
	if _, err := enginetest.LookBin("opendkim", enginetest.OpenDKIMAptHint); err != nil {
		t.Skip(err)
	}
	began := time.Now()
	d, err := enginetest.StartOpenDKIM(enginetest.OpenDKIMOptions{Dir: dir, Conf: conf, Inet: inet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	t.Logf("opendkim ready on %s after %s", d.Socket, time.Since(began).Round(time.Millisecond))
	return &openDKIM{OpenDKIM: d, socket: d.Socket}
}

// shortTempDir is a new directory with a path short enough for a unix
// socket (108 octets), removed after the test.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "odkim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// rawMessage renders the delivered message for a DKIM verifier.
func rawMessage(fields []opes.HeaderField, body string) []byte {
	var b bytes.Buffer
	b.WriteString(opes.FormatHeader(fields))
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.Bytes()
}

func TestOpenDKIMSigns(t *testing.T) {
	for _, tc := range []struct {
		name      string
		inet      bool
		emptyBody bool
	}{{"unix", false, false}, {"inet", true, false}, {"empty body", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			key := newDKIMKey(t, dir)
			d := startOpenDKIM(t, dir, []string{
				"Mode s",
				"Domain example.org",
				"Selector test",
				"KeyFile " + key.pemFile,
				"Canonicalization relaxed/simple",
			}, tc.inet)
			proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q\ncommand_timeout = \"5s\"\neom_timeout = \"10s\"", d.socket)), opes.OnErrorDefault)

			m := testMessage()
			if tc.emptyBody {
				m.body = ""
			}
			r := drive(t, proc, m)
			if r.stage != "eom" || r.outcome.Kind != opes.Continue {
				t.Fatalf("outcome at %s: %+v\nopendkim:\n%s", r.stage, r.outcome, d.Logs())
			}
			var sig *opes.HeaderChange
			for i, c := range r.outcome.HeaderChanges {
				if strings.EqualFold(c.Name, "DKIM-Signature") {
					sig = &r.outcome.HeaderChanges[i]
				}
			}
			if sig == nil {
				t.Fatalf("no DKIM-Signature among the header changes %+v\nopendkim:\n%s", r.outcome.HeaderChanges, d.Logs())
			}
			if sig.Kind != opes.AppendField {
				t.Errorf("DKIM-Signature change kind %v, want an append", sig.Kind)
			}
			if !strings.Contains(sig.Value, "d=example.org") || !strings.Contains(sig.Value, "s=test") {
				t.Errorf("DKIM-Signature %q lacks d=example.org; s=test", sig.Value)
			}
			wantTrace(t, via(t, r.outcome), "header-added")

			// The delivered message, our trace on top, verifies with the
			// published key.
			fields := delivered(m, r.outcome)
			if fields[0].Name != opes.FieldSystem || fields[1].Name != opes.FieldVia {
				t.Errorf("trace block not on top: %s, %s", fields[0].Name, fields[1].Name)
			}
			raw := rawMessage(fields, m.body)
			verifs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{
				LookupTXT: func(domain string) ([]string, error) {
					if domain != "test._domainkey.example.org" {
						return nil, fmt.Errorf("unexpected lookup of %s", domain)
					}
					return []string{key.txt}, nil
				},
			})
			if err != nil {
				t.Fatalf("verify: %v\n%s", err, raw)
			}
			if len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "example.org" {
				t.Fatalf("verifications %+v (err %v)\n%s", verifs, verifs[0].Err, raw)
			}

			// A changed body no longer verifies: the signature covers it.
			tampered := rawMessage(fields, m.body+"P.S.\r\n")
			verifs, err = dkim.VerifyWithOptions(bytes.NewReader(tampered), &dkim.VerifyOptions{
				LookupTXT: func(string) ([]string, error) { return []string{key.txt}, nil },
			})
			if err != nil || len(verifs) != 1 || verifs[0].Err == nil {
				t.Errorf("tampered message verified: %v %+v", err, verifs)
			}
		})
	}
}

// signed returns m with a DKIM-Signature made with key over its header
// and body, placed on top as a signer upstream would.
func signed(t *testing.T, m message, key dkimKey) message {
	t.Helper()
	var fields []opes.HeaderField
	for _, h := range m.header {
		fields = append(fields, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(rawMessage(fields, m.body)), &dkim.SignOptions{
		Domain: "example.org", Selector: "test", Signer: key.key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationSimple,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The signature is the first field: up to the first line that does
	// not continue it.
	sig, _, _ := strings.Cut(out.String(), "\r\n"+m.header[0][0]+":")
	name, value, ok := strings.Cut(sig, ":")
	if !ok || !strings.EqualFold(name, "DKIM-Signature") {
		t.Fatalf("signed message starts with %q", sig)
	}
	m.header = append([][2]string{{name, value}}, m.header...)
	return m
}

// TestOpenDKIMVerifierActions runs OpenDKIM as a verifier of messages
// signed upstream, with the public key given as test DNS data: an intact
// signature passes (which also shows that the child gets the header and
// body byte for byte), and a body changed after signing meets
// On-BadSignature: accept, reject and tempfail with opendkim's own reply,
// and discard. (opendkim's quarantine never reaches the MTA here; the
// quarantine mapping is tested with a go-milter child. On-NoSignature
// would need no signing, but OpenDKIM 2.11 does not apply it:
// trusteddomainproject/OpenDKIM#106.)
func TestOpenDKIMVerifierActions(t *testing.T) {
	tests := []struct {
		name     string
		onBad    string
		tamper   bool
		kind     opes.VerdictKind // outcome at the end of data
		trace    string
		result   string // dkim= in Authentication-Results, when delivered
		code     int    // the reply, for refusals
		enhanced string
		text     string
	}{
		{name: "intact", onBad: "reject", kind: opes.Continue, trace: "header-added", result: "dkim=pass"},
		{name: "accept", onBad: "accept", tamper: true, kind: opes.Continue, trace: "header-added", result: "dkim=fail"},
		{name: "reject", onBad: "reject", tamper: true, kind: opes.Reject, trace: "rejected", code: 550, enhanced: "5.7.0", text: "bad DKIM signature data"},
		{name: "tempfail", onBad: "tempfail", tamper: true, kind: opes.TempFail, trace: "rejected", code: 451, enhanced: "4.7.0", text: "bad DKIM signature data"},
		// Discard is refused until the processor can send NDRs.
		{name: "discard", onBad: "discard", tamper: true, kind: opes.Reject, trace: "rejected", code: 554, enhanced: "5.7.1", text: "discarded by the child milter"},
	}
	dir := shortTempDir(t)
	key := newDKIMKey(t, dir)
	dns := filepath.Join(dir, "dns")
	if err := os.WriteFile(dns, []byte("test._domainkey.example.org "+key.txt+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := startOpenDKIM(t, shortTempDir(t), []string{
				"Mode v",
				"On-BadSignature " + tc.onBad,
				"TestDNSData file:" + dns,
				"AuthservID mx1.example.net",
			}, false)
			proc := newProcessor(t, newService(t, fmt.Sprintf("socket = %q", d.socket)), opes.OnErrorDefault)
			m := signed(t, testMessage(), key)
			if tc.tamper {
				m.body = strings.Replace(m.body, "figures", "f1gures", 1)
			}
			r := drive(t, proc, m)
			if r.stage != "eom" {
				t.Fatalf("refused at %s: %+v\nopendkim:\n%s", r.stage, r.outcome, d.Logs())
			}
			o := r.outcome
			if o.Kind != tc.kind {
				t.Fatalf("outcome %v, want %v (reply %v, changes %+v)\nopendkim:\n%s", o.Kind, tc.kind, o.Reply, o.HeaderChanges, d.Logs())
			}
			if tc.code != 0 {
				// opendkim's own reply (smfi_setreply), with our trace.
				if o.Reply == nil || o.Reply.Code != tc.code || o.Reply.Enhanced != tc.enhanced || !strings.Contains(o.Reply.Lines[0], tc.text) {
					t.Fatalf("reply %+v, want %d %s %q", o.Reply, tc.code, tc.enhanced, tc.text)
				}
				text := o.Reply.String()
				wantTrace(t, strings.Join(strings.Fields(text), " "), tc.trace)
				t.Logf("reply:\n%s", text)
				return
			}
			wantTrace(t, via(t, o), tc.trace)
			// The verifier says what it found in Authentication-Results.
			var ar []string
			for _, f := range delivered(m, o) {
				if strings.EqualFold(f.Name, "Authentication-Results") {
					ar = append(ar, f.Value)
				}
			}
			if len(ar) != 1 || !strings.Contains(ar[0], "mx1.example.net") || !strings.Contains(ar[0], tc.result) {
				t.Errorf("Authentication-Results %q, want one by mx1.example.net with %s", ar, tc.result)
			}
		})
	}
}
