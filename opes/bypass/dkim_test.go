package bypass

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"

	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// testKey is a signing key with its DNS TXT record.
type testKey struct {
	domain, selector string
	signer           crypto.Signer
	txt              string
}

func (k testKey) name() string { return k.selector + "._domainkey." + k.domain }

var (
	rsaKeyOnce sync.Once
	rsaKey     *rsa.PrivateKey
)

// newRSAKey returns one RSA-2048 key per test binary: generating one takes
// long enough to matter in a test run.
func newRSAKey(t *testing.T, domain, selector string) testKey {
	t.Helper()
	rsaKeyOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{domain, selector, rsaKey, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)}
}

func newEd25519Key(t *testing.T, domain, selector string) testKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{domain, selector, priv, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}
}

// sign returns msg with a DKIM-Signature by k over the header fields keys.
func sign(t *testing.T, msg string, k testKey, keys ...string) string {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain:                 k.domain,
		Selector:               k.selector,
		Signer:                 k.signer,
		HeaderKeys:             keys,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// dns is a fake resolver over a fixed zone; it counts lookups.
type dns struct {
	zone    map[string]string
	err     error // returned for every name when set
	lookups atomic.Int32
}

func newDNS(keys ...testKey) *dns {
	d := &dns{zone: map[string]string{}}
	for _, k := range keys {
		d.zone[k.name()] = k.txt
	}
	return d
}

func (d *dns) LookupTXT(ctx context.Context, name string) ([]string, error) {
	d.lookups.Add(1)
	if d.err != nil {
		return nil, d.err
	}
	if txt, ok := d.zone[name]; ok {
		return []string{txt}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

const baseMsg = "From: Alice <alice@example.org>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: please deliver the original\r\n" +
	"OPES-Bypass: https://mx1.example.net/opes/svc/translate-de\r\n" +
	"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n" +
	"\r\n" +
	"Hallo Bob,\r\nbitte nicht übersetzen.\r\n"

var signedKeys = []string{"From", "To", "Subject", "Date", "OPES-Bypass"}

func TestSignedBy(t *testing.T) {
	rsaK := newRSAKey(t, "example.org", "rsa1")
	edK := newEd25519Key(t, "Example.ORG", "ed1")
	otherK := newEd25519Key(t, "other.example", "s")
	zone := newDNS(rsaK, edK, otherK)

	rsaSigned := sign(t, baseMsg, rsaK, signedKeys...)
	edSigned := sign(t, baseMsg, edK, signedKeys...)
	notCovering := sign(t, baseMsg, rsaK, "From", "To", "Subject", "Date")
	unknownKey := sign(t, baseMsg, newEd25519Key(t, "example.org", "gone"), signedKeys...)

	// Two fields, h= names OPES-Bypass once: the bottom one is signed,
	// the top one added after signing.
	twoFieldsOneSigned := "OPES-Bypass: *\r\n" + rsaSigned
	// Two fields both signed: h= names the field twice.
	twoFields := strings.Replace(baseMsg, "Date:", "OPES-Bypass: https://mx1.example.net/opes/\r\nDate:", 1)
	twoFieldsSigned := sign(t, twoFields, rsaK, append(signedKeys, "OPES-Bypass")...)
	// Over-signed (named twice, present once): adding a field breaks it.
	overSigned := sign(t, baseMsg, edK, append(signedKeys, "OPES-Bypass")...)
	overSignedAdded := "OPES-Bypass: *\r\n" + overSigned

	cases := []struct {
		name string
		msg  string
		want []string
	}{
		{"rsa covered", rsaSigned, []string{"example.org"}},
		{"ed25519 covered, domain lower-cased", edSigned, []string{"example.org"}},
		{"valid but not covering OPES-Bypass", notCovering, nil},
		{"body altered", strings.Replace(rsaSigned, "nicht", "doch", 1), nil},
		{"field altered after signing", strings.Replace(rsaSigned, "svc/translate-de", "svc/av", 1), nil},
		{"field widened to * after signing", strings.Replace(edSigned, "https://mx1.example.net/opes/svc/translate-de", "*", 1), nil},
		{"field removed after signing", strings.Replace(rsaSigned, "OPES-Bypass: https://mx1.example.net/opes/svc/translate-de\r\n", "", 1), nil},
		{"second field added above a signed one", twoFieldsOneSigned, nil},
		{"two fields both signed", twoFieldsSigned, []string{"example.org"}},
		{"over-signed", overSigned, []string{"example.org"}},
		{"over-signed, field added", overSignedAdded, nil},
		{"unknown key", unknownKey, nil},
		{"two signers, one covering", sign(t, notCovering, otherK, signedKeys...), []string{"other.example"}},
		{"two signers, both covering", sign(t, rsaSigned, otherK, signedKeys...), []string{"other.example", "example.org"}},
		{"same domain twice", sign(t, rsaSigned, edK, signedKeys...), []string{"example.org"}},
		{"LF line ends", strings.ReplaceAll(rsaSigned, "\r\n", "\n"), []string{"example.org"}},
		{"no signature", baseMsg, nil},
		{"no OPES-Bypass field", sign(t, strings.Replace(baseMsg, "OPES-Bypass: https://mx1.example.net/opes/svc/translate-de\r\n", "", 1), rsaK, signedKeys...), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := SignedBy(context.Background(), strings.NewReader(c.msg), zone.LookupTXT)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("SignedBy = %q, want %q", got, c.want)
			}
		})
	}

	// The case that makes the count rule necessary: go-msgauth itself
	// calls the signature valid, since the field it covers is intact.
	if err := msgauthResult(t, twoFieldsOneSigned, zone); err != nil {
		t.Fatalf("go-msgauth on the prepended field: %v", err)
	}
	// With over-signing the added field breaks the signature itself.
	if err := msgauthResult(t, overSignedAdded, zone); err == nil {
		t.Fatal("go-msgauth accepts a field added to an over-signed message")
	}
}

// msgauthResult is go-msgauth's own verdict on the only signature of msg.
func msgauthResult(t *testing.T, msg string, zone *dns) error {
	t.Helper()
	verifs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return zone.LookupTXT(context.Background(), name) },
	})
	if err != nil || len(verifs) != 1 {
		t.Fatalf("go-msgauth: %v, %d verifications", err, len(verifs))
	}
	return verifs[0].Err
}

func TestSignedByLookupFailure(t *testing.T) {
	k := newEd25519Key(t, "example.org", "s")
	msg := sign(t, baseMsg, k, signedKeys...)
	for _, lookupErr := range []error{
		&net.DNSError{Err: "server misbehaving", Name: k.name(), IsTemporary: true},
		&net.DNSError{Err: "i/o timeout", Name: k.name(), IsTimeout: true},
		errors.New("resolver on fire"),
	} {
		zone := newDNS(k)
		zone.err = lookupErr
		got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT)
		if err != nil || got != nil {
			t.Errorf("lookup error %v: SignedBy = %q, %v; want no signer and no error", lookupErr, got, err)
		}
		if zone.lookups.Load() != 1 {
			t.Errorf("%d lookups", zone.lookups.Load())
		}
	}
	// A key record that is not a key, or a revoked key.
	for _, txt := range []string{"v=DKIM1; k=ed25519; p=", "v=DKIM1; k=ed25519; p=!!!", "hello"} {
		zone := &dns{zone: map[string]string{k.name(): txt}}
		if got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT); err != nil || got != nil {
			t.Errorf("TXT %q: SignedBy = %q, %v", txt, got, err)
		}
	}
}

// Only MaxSignatures signatures are verified, whatever the message holds.
func TestSignedByBound(t *testing.T) {
	k := newEd25519Key(t, "example.org", "s")
	msg := baseMsg
	for range MaxSignatures + 5 {
		msg = sign(t, msg, k, signedKeys...)
	}
	zone := newDNS(k)
	got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT)
	if err != nil || !slices.Equal(got, []string{"example.org"}) {
		t.Fatalf("SignedBy = %q, %v", got, err)
	}
	if n := zone.lookups.Load(); n != MaxSignatures {
		t.Fatalf("%d lookups, want %d", n, MaxSignatures)
	}
}

func TestSignedByBadInput(t *testing.T) {
	k := newEd25519Key(t, "example.org", "s")
	zone := newDNS(k)
	signed := sign(t, baseMsg, k, signedKeys...)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := SignedBy(ctx, strings.NewReader(signed), zone.LookupTXT); !errors.Is(err, context.Canceled) || got != nil {
		t.Errorf("cancelled: %q, %v", got, err)
	}

	huge := "OPES-Bypass: *\r\nX-Pad: " + strings.Repeat("x", MaxHeaderBytes) + "\r\n\r\n"
	if got, err := SignedBy(context.Background(), strings.NewReader(huge), zone.LookupTXT); err == nil || got != nil {
		t.Errorf("huge header: %q, %v", got, err)
	}
	// Header-only messages (RFC 5322 §3.5: the body is optional), with or
	// without a final line end, have an empty body.
	headerOnly := sign(t, baseMsg[:strings.Index(baseMsg, "\r\n\r\n")+4], k, signedKeys...)
	for _, msg := range []string{headerOnly, strings.TrimSuffix(headerOnly, "\r\n"), strings.TrimSuffix(headerOnly, "\r\n\r\n")} {
		if got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT); err != nil || !slices.Equal(got, []string{"example.org"}) {
			t.Errorf("header-only message %q: %q, %v", msg[len(msg)-20:], got, err)
		}
	}
	for _, msg := range []string{"", "OPES-Bypass: *", "\r\n"} {
		if got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT); err != nil || got != nil {
			t.Errorf("message %q: %q, %v", msg, got, err)
		}
	}

	// A read error in the body of a message with several signatures:
	// the error comes back and no goroutine is left blocked.
	two := sign(t, signed, newEd25519Key(t, "other.example", "s"), signedKeys...)
	hdrEnd := strings.Index(two, "\r\n\r\n") + 4
	before := runtime.NumGoroutine()
	failing := io.MultiReader(strings.NewReader(two[:hdrEnd+5]), errReader{errors.New("connection reset")})
	if got, err := SignedBy(context.Background(), failing, zone.LookupTXT); err == nil || !strings.Contains(err.Error(), "connection reset") || got != nil {
		t.Errorf("read error: %q, %v", got, err)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("%d goroutines before, %d after", before, after)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// The count follows go-msgauth's header split: a field name with space
// before the colon, and the case of the name, still count.
func TestSignedByFieldCount(t *testing.T) {
	k := newEd25519Key(t, "example.org", "s")
	zone := newDNS(k)
	signed := sign(t, baseMsg, k, signedKeys...)
	for _, extra := range []string{"OPES-Bypass : *\r\n", "opes-bypass: *\r\n", "OPES-BYPASS:*\r\n"} {
		msg := extra + signed
		if got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT); err != nil || got != nil {
			t.Errorf("extra field %q: %q, %v", extra, got, err)
		}
		if err := msgauthResult(t, msg, zone); err != nil {
			t.Errorf("extra field %q: go-msgauth: %v (the count, not the signature, must reject)", extra, err)
		}
	}
}

func BenchmarkSignedBy(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := testKey{"example.org", "s", priv, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}
	var out bytes.Buffer
	body := strings.Repeat("a line of body text that is not very long\r\n", 2000)
	if err := dkim.Sign(&out, strings.NewReader(baseMsg+body), &dkim.SignOptions{Domain: k.domain, Selector: k.selector, Signer: k.signer, HeaderKeys: signedKeys}); err != nil {
		b.Fatal(err)
	}
	msg := out.String()
	zone := newDNS(k)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if got, err := SignedBy(context.Background(), strings.NewReader(msg), zone.LookupTXT); err != nil || len(got) != 1 {
			b.Fatal(got, err)
		}
	}
}
