package pgp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx1.example.net/opes/"

var ctx = context.Background()

// keyPair is a generated OpenPGP key, its armored files and the entity
// (with its secret part) for checking what the service produced.
type keyPair struct {
	entity  *openpgp.Entity
	pubFile string
	secFile string
	public  openpgp.EntityList // read back from pubFile: what a correspondent has
}

// newKeyPair makes an Ed25519/Curve25519 key for email and writes it to
// dir. With pass, the secret file is protected by it.
func newKeyPair(t *testing.T, dir, name, email string, pass ...string) keyPair {
	t.Helper()
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	e, err := openpgp.NewEntity(name, "", email, cfg)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, strings.ReplaceAll(email, "@", "_at_"))
	var pub, sec bytes.Buffer
	w, _ := armor.Encode(&pub, openpgp.PublicKeyType, nil)
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w, _ = armor.Encode(&sec, openpgp.PrivateKeyType, nil)
	if err := e.SerializePrivate(w, nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if len(pass) > 0 {
		// Re-read the secret key, protect it and write it again.
		el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(sec.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		if err := el[0].EncryptPrivateKeys([]byte(pass[0]), nil); err != nil {
			t.Fatal(err)
		}
		sec.Reset()
		w, _ = armor.Encode(&sec, openpgp.PrivateKeyType, nil)
		if err := el[0].SerializePrivateWithoutSigning(w, nil); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	kp := keyPair{entity: e, pubFile: base + ".pub.asc", secFile: base + ".sec.asc"}
	if err := os.WriteFile(kp.pubFile, pub.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kp.secFile, sec.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if kp.public, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(pub.Bytes())); err != nil {
		t.Fatal(err)
	}
	return kp
}

func newService(t *testing.T, src string) opes.Service {
	t.Helper()
	s, err := New(optiontest.Decoder(t, src))
	if err != nil {
		t.Fatalf("New: %v\n%s", err, src)
	}
	return s
}

func newError(t *testing.T, src string) error {
	t.Helper()
	_, err := New(optiontest.Decoder(t, src))
	if err == nil {
		t.Fatalf("New accepted\n%s", src)
	}
	return err
}

// message is one SMTP transaction's content; header values as the milter
// bridge hands them over, with their leading space.
type message struct {
	from   string
	rcpts  []string
	header [][2]string
	body   string
}

func (m message) fields() []opes.HeaderField {
	var out []opes.HeaderField
	for _, h := range m.header {
		out = append(out, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	return out
}

// result is what one transaction through the processor gave.
type result struct {
	rcpt []*opes.Outcome // RCPT outcomes, in order
	eom  *opes.Outcome   // nil when refused before
	raw  string          // the message as delivered (when eom continues)
}

// via returns the delivered OPES-Via value, unfolded.
func (r result) via() string {
	head, _, _ := strings.Cut(r.raw, "\r\n\r\n")
	head = strings.NewReplacer("\r\n ", " ", "\r\n\t", " ").Replace(head)
	for _, l := range strings.Split(head, "\r\n") {
		if n, v, _ := strings.Cut(l, ":"); strings.EqualFold(n, "OPES-Via") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// run drives one SMTP transaction through a processor running the
// service, in the order the milter bridge calls the session.
func run(t *testing.T, svc opes.Service, modifySigned bool, m message) result {
	t.Helper()
	spec := &opes.ServiceSpec{Name: "pgp", Kind: "pgp", URI: sysURI + "svc/pgp", Impl: svc, ModifySigned: modifySigned}
	p := &opes.Policy{System: opes.System{URI: sysURI}, Services: []*opes.ServiceSpec{spec},
		Rules: []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: []*opes.ServiceSpec{spec}}}}
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	sess := proc.NewSession()
	defer sess.Close()
	var r result
	for _, o := range []*opes.Outcome{sess.Connect(ctx), sess.Helo(ctx, "client.example.org"), sess.Mail(ctx, opes.Address{Addr: m.from})} {
		if o.Kind != opes.Continue {
			t.Fatalf("refused before RCPT: %v", o.Reply)
		}
	}
	accepted := 0
	for _, rc := range m.rcpts {
		o := sess.Rcpt(ctx, opes.Address{Addr: rc})
		r.rcpt = append(r.rcpt, o)
		if o.Kind == opes.Continue {
			accepted++
		}
	}
	if accepted == 0 {
		return r
	}
	if o := sess.Data(ctx); o.Kind != opes.Continue {
		t.Fatalf("DATA refused: %v", o.Reply)
	}
	for _, h := range m.header {
		sess.Header(h[0], h[1])
	}
	if o := sess.EndOfHeaders(ctx); o.Kind != opes.Continue {
		t.Fatalf("header refused: %v", o.Reply)
	}
	if o := sess.BodyChunk([]byte(m.body)); o != nil {
		t.Fatalf("body refused: %v", o.Reply)
	}
	r.eom = sess.EndOfMessage(ctx, "4ABCD12")
	if r.eom.Kind != opes.Continue {
		return r
	}
	body := m.body
	if r.eom.Body != nil {
		b, err := io.ReadAll(r.eom.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = string(b)
	}
	r.raw = opes.FormatHeader(opes.ApplyChanges(m.fields(), r.eom.HeaderChanges)) + "\r\n" + body
	sess.Finish()
	return r
}

// parseDelivered splits delivered wire text into a message for the next
// processor (a second hop).
func parseDelivered(t *testing.T, raw, from string, rcpts ...string) message {
	t.Helper()
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of header in %q", raw)
	}
	m := message{from: from, rcpts: rcpts, body: body}
	skip := false
	for _, line := range strings.Split(head, "\r\n") {
		if line[0] == ' ' || line[0] == '\t' {
			if !skip {
				m.header[len(m.header)-1][1] += "\r\n" + line
			}
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		if skip = strings.HasPrefix(strings.ToUpper(name), "OPES-"); skip {
			continue // the next hop's processor adds its own
		}
		m.header = append(m.header, [2]string{name, value})
	}
	return m
}

// partsOf returns the raw parts of a delivered multipart message (the
// bytes between the delimiters, RFC 2046 §5.1.1) and its Content-Type
// parameters, checking the media type.
func partsOf(t *testing.T, raw, wantType string) ([][]byte, map[string]string) {
	t.Helper()
	fs, body, err := splitEntity([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params := mediaType(getField(fs, "Content-Type"))
	if mt != wantType {
		t.Fatalf("delivered Content-Type %q, want %s\n%s", mt, wantType, raw)
	}
	_, parts, _, err := multipartParts(body, params["boundary"])
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	return parts, params
}

var errNoField = errors.New("no such field")

// headerValue is the unfolded value of the first field named name.
func headerValue(raw, name string) (string, error) {
	fs, _, err := splitEntity([]byte(raw))
	if err != nil {
		return "", err
	}
	for _, f := range fs {
		if strings.EqualFold(f.name, name) {
			return getField([]field{f}, name), nil
		}
	}
	return "", errNoField
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
