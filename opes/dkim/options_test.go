package dkim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	good := newKey(t, dir, "ed25519").file
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecFile := writePEM(t, dir, "ec.pem", "PRIVATE KEY", ecDER)
	encFile := writePEM(t, dir, "enc.pem", "ENCRYPTED PRIVATE KEY", []byte("opaque"))
	certFile := writePEM(t, dir, "cert.pem", "CERTIFICATE", []byte("opaque"))
	garbled := writePEM(t, dir, "garbled.pem", "RSA PRIVATE KEY", []byte("not DER"))
	notPEM := filepath.Join(dir, "key.txt")
	if err := os.WriteFile(notPEM, []byte("v=DKIM1; k=rsa; p=MIIB"), 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.pem")
	if err := os.WriteFile(huge, make([]byte, maxKeyFile+1), 0o600); err != nil {
		t.Fatal(err)
	}

	sign := func(domain string) string {
		return "[options]\nmode = \"sign\"\n[[options.domains]]\n" + domain
	}
	entry := func(keyFile, extra string) string {
		return sign("domain = \"example.org\"\nselector = \"sel\"\nkey_file = \"" + keyFile + "\"\n" + extra)
	}
	verify := "[options]\nmode = \"verify\"\nauthserv_id = \"mx1.example.net\"\n"
	tests := []struct {
		name, src, field, msg string
	}{
		{"no mode", "[options]\n", "mode", "is required"},
		{"bad mode", "[options]\nmode = \"both\"", "mode", `"both" is not "sign" or "verify"`},
		{"sign with authserv_id", "[options]\nmode = \"sign\"\nauthserv_id = \"mx\"", "authserv_id", `of mode = "verify"`},
		{"sign without domains", "[options]\nmode = \"sign\"", "domains", "at least one"},
		{"sign with a verify option", "[options]\nmode = \"sign\"\non_fail = \"reject\"", "on_fail", `of mode = "verify"`},
		{"verify with a sign option", verify + "expiration = \"1h\"", "expiration", `of mode = "sign"`},
		{"bad canonicalization", "[options]\nmode = \"sign\"\ncanonicalization = \"simple/simple\"", "canonicalization", "relaxed/relaxed"},
		{"bad expiration", "[options]\nmode = \"sign\"\nexpiration = \"10s\"", "expiration", "between 1m"},
		{"no domain", sign("selector = \"sel\"\nkey_file = \"" + good + "\""), "domains[1].domain", "is empty"},
		{"bad domain", sign("domain = \"exa mple.org\"\nselector = \"s\"\nkey_file = \"" + good + "\""), "domains[1].domain", "byte 0x20"},
		{"bad selector", sign("domain = \"example.org\"\nselector = \"-s\"\nkey_file = \"" + good + "\""), "domains[1].selector", "not a domain name"},
		{"no key_file", sign("domain = \"example.org\"\nselector = \"sel\""), "domains[1].key_file", "is required"},
		{"missing key file", entry(filepath.Join(dir, "nope.pem"), ""), "domains[1].key_file", "no such file"},
		{"not PEM", entry(notPEM, ""), "domains[1].key_file", "holds no PEM private key"},
		{"certificate", entry(certFile, ""), "domains[1].key_file", "holds no PEM private key"},
		{"encrypted key", entry(encFile, ""), "domains[1].key_file", "encrypted"},
		{"garbled key", entry(garbled, ""), "domains[1].key_file", "parse RSA PRIVATE KEY"},
		{"EC key", entry(ecFile, ""), "domains[1].key_file", "not supported for DKIM"},
		{"huge file", entry(huge, ""), "domains[1].key_file", "not a key file"},
		{"headers without From", entry(good, "headers = [\"Subject\"]"), "domains[1].headers", "must include From"},
		{"headers with a trace field", entry(good, "headers = [\"From\", \"OPES-Via\"]"), "domains[1].headers", "inserted by the processor"},
		{"headers with a colon", entry(good, "headers = [\"From:\"]"), "domains[1].headers", "0x3a"},
		{"oversign DKIM-Signature", entry(good, "oversign = [\"DKIM-Signature\"]"), "domains[1].oversign", "covers itself"},
		{"duplicate domain", entry(good, "") + "\n[[options.domains]]\ndomain = \"EXAMPLE.org.\"\nselector = \"b\"\nkey_file = \"" + good + "\"",
			"domains[2].domain", "listed twice"},
		{"verify without authserv_id", "[options]\nmode = \"verify\"", "authserv_id", "is required"},
		{"authserv_id with a semicolon", "[options]\nmode = \"verify\"\nauthserv_id = \"mx;dkim=pass\"", "authserv_id", "use a host name"},
		{"on_fail tempfail", verify + "on_fail = \"tempfail\"", "on_fail", "continue, reject, quarantine"},
		{"on_none discard", verify + "on_none = \"discard\"", "on_none", "continue, reject, quarantine"},
		{"on_temperror reject", verify + "on_temperror = \"reject\"", "on_temperror", "continue, tempfail"},
		{"max_signatures", verify + "max_signatures = 21", "max_signatures", "between 1 and 20"},
		{"negative max_signatures", verify + "max_signatures = -1", "max_signatures", "between 1 and 20"},
		{"timeout", verify + "timeout = \"forever\"", "timeout", "not a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			servicetest.WantFieldError(t, New, tt.src, tt.field, tt.msg)
		})
	}
	servicetest.WantDecodeError(t, New, "[options]\nmode = 5\n", "dkim")
}

// A key below RFC 8301's 1024 bits is refused. Go refuses to make one
// unless GODEBUG allows it.
func TestNewSmallRSAKey(t *testing.T) {
	t.Setenv("GODEBUG", "rsa1024min=0")
	k, err := rsa.GenerateKey(rand.Reader, 768)
	if err != nil {
		t.Skipf("cannot make a 768-bit key here: %v", err)
	}
	path := writePEM(t, t.TempDir(), "small.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
	_, err = New(optiontest.Decoder(t, "[options]\nmode = \"sign\"\n[[options.domains]]\ndomain = \"example.org\"\nselector = \"s\"\nkey_file = \""+path+"\""))
	var fe *opes.FieldError
	if !errors.As(err, &fe) || fe.Field != "domains[1].key_file" || !strings.Contains(fe.Err.Error(), "768 bits") {
		t.Errorf("New = %v", err)
	}
}

func TestDefaults(t *testing.T) {
	s := newService(t, "[options]\nmode = \"verify\"\nauthserv_id = \"mx1.example.net\"", nil)
	if s.sign || s.maxSignatures != DefaultMaxSignatures || s.timeout != DefaultTimeout ||
		s.onFail != actContinue || s.onNone != actContinue || s.onTempError != actContinue {
		t.Errorf("verify defaults: %+v", s)
	}
	k := newKey(t, t.TempDir(), "ed25519")
	s = newService(t, signOptions(k, ""), nil)
	key := s.keys["example.org"]
	if !s.sign || s.bodyCanon != "relaxed" || s.expiration != 0 || key == nil || key.selector != "sel" ||
		len(key.headers) != len(DefaultHeaders) || len(key.oversign) != len(DefaultOversign) {
		t.Errorf("sign defaults: %+v %+v", s, key)
	}
	want := opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
	if s.Needs() != want {
		t.Errorf("Needs = %+v", s.Needs())
	}
	s = newService(t, signOptions(k, "expiration = \"720h\"\ncanonicalization = \"Relaxed/Simple\""), nil)
	if s.expiration != 720*time.Hour || s.bodyCanon != "simple" {
		t.Errorf("expiration %v, body canonicalization %q", s.expiration, s.bodyCanon)
	}
}
