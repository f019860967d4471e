package pgp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"os"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	gomessage "github.com/emersion/go-message"

	"github.com/opesmilter/opes-milter/opes"
)

func mediaType(v string) (string, map[string]string) {
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		return "", nil
	}
	return mt, params
}

// plainMsg is an 8-bit text message from alice@example.org to bob.
func plainMsg(from string, rcpts ...string) message {
	return message{
		from:  from,
		rcpts: rcpts,
		header: [][2]string{
			{"From", " Alice <alice@example.org>"},
			{"To", " Bob <bob@example.net>"},
			{"Subject", " Quarterly numbers"},
			{"MIME-Version", " 1.0"},
			{"Content-Type", " text/plain; charset=utf-8"},
			{"Content-Transfer-Encoding", " 8bit"},
		},
		body: "Grüße, Bob,\r\n\r\nthe numbers are in.   \r\nFrom here on it gets better.\r\n-- \r\nAlice\r\n",
	}
}

// originalEntity is the MIME entity of plainMsg: what gets encrypted.
const originalEntity = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
	"Grüße, Bob,\r\n\r\nthe numbers are in.   \r\nFrom here on it gets better.\r\n-- \r\nAlice\r\n"

func encryptOptions(extra string, keys ...[2]string) string {
	s := "[options]\nmode = \"encrypt\"\n" + extra + "\n"
	for _, k := range keys {
		s += fmt.Sprintf("[[options.keys]]\nrecipient = %q\npublic_key_file = %q\n", k[0], k[1])
	}
	return s
}

// decryptWith opens the armored OpenPGP message of a delivered
// multipart/encrypted message with key, checked through go-message.
func decryptWith(t *testing.T, raw string, key *openpgp.Entity) []byte {
	t.Helper()
	ent, err := gomessage.Read(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("go-message: %v", err)
	}
	mt, params, err := ent.Header.ContentType()
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("Content-Type %q %v (%v), want multipart/encrypted; protocol=application/pgp-encrypted", mt, params, err)
	}
	mr := ent.MultipartReader()
	var parts [][]byte
	var types []string
	for range 3 {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		pt, _, _ := p.Header.ContentType()
		parts, types = append(parts, b), append(types, pt)
	}
	if len(parts) != 2 || types[0] != "application/pgp-encrypted" || types[1] != "application/octet-stream" {
		t.Fatalf("parts %v, want application/pgp-encrypted and application/octet-stream", types)
	}
	if !strings.Contains(string(parts[0]), "Version: 1") {
		t.Errorf("version part %q", parts[0])
	}
	block, err := armor.Decode(bytes.NewReader(parts[1]))
	if err != nil {
		t.Fatal(err)
	}
	md, err := openpgp.ReadMessage(block.Body, openpgp.EntityList{key}, nil, nil)
	if err != nil {
		t.Fatalf("decrypt with %s's key: %v", key.PrimaryIdentity().UserId.Email, err)
	}
	plain, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatal(err)
	}
	return plain
}

func TestEncrypt(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	joe := newKeyPair(t, dir, "Joe", "joe@example.net")
	svc := newService(t, encryptOptions("", [2]string{"bob@example.net", bob.pubFile}, [2]string{"@example.net", joe.pubFile}))

	r := run(t, svc, false, plainMsg("alice@example.org", "bob@example.net", "zed@example.net"))
	if r.eom.Kind != opes.Continue || r.eom.Body == nil {
		t.Fatalf("not encrypted: %+v", r.eom)
	}
	// Each recipient opens it with its own key (zed's by the domain entry).
	for _, k := range []keyPair{bob, joe} {
		if got := string(decryptWith(t, r.raw, k.entity)); got != originalEntity {
			t.Errorf("decrypted entity differs:\n got %q\nwant %q", got, originalEntity)
		}
	}
	if v, err := headerValue(r.raw, "Content-Transfer-Encoding"); err == nil {
		t.Errorf("old Content-Transfer-Encoding %q left in the header", v)
	}
	for _, f := range []string{"From", "To", "Subject", "MIME-Version"} {
		if _, err := headerValue(r.raw, f); err != nil {
			t.Errorf("%s lost", f)
		}
	}
	if !strings.Contains(r.via(), "svc/pgp; action=modified") {
		t.Errorf("OPES-Via %q, want action=modified", r.via())
	}
}

// Keys follow the envelope, never To: a message whose To names a keyed
// address but whose envelope recipient has no key stays clear, and the
// other way round it is encrypted.
func TestEncryptByEnvelopeNotHeader(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	svc := newService(t, encryptOptions("", [2]string{"bob@example.net", bob.pubFile}))

	r := run(t, svc, false, plainMsg("alice@example.org", "carol@example.com")) // To: bob
	if ct, _ := headerValue(r.raw, "Content-Type"); r.eom.Body != nil || ct != "text/plain; charset=utf-8" {
		t.Errorf("encrypted for an envelope recipient without a key: %q", ct)
	}
	if !strings.Contains(r.via(), "svc/pgp; action=analyzed") {
		t.Errorf("OPES-Via %q", r.via())
	}
	m := plainMsg("alice@example.org", "bob@example.net")
	m.header[1][1] = " Carol <carol@example.com>"
	r = run(t, svc, false, m)
	if got := string(decryptWith(t, r.raw, bob.entity)); got != originalEntity {
		t.Errorf("decrypted %q", got)
	}
}

func TestEncryptPartial(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")

	t.Run("skip", func(t *testing.T) {
		svc := newService(t, encryptOptions(`partial = "skip"`, [2]string{"bob@example.net", bob.pubFile}))
		r := run(t, svc, false, plainMsg("alice@example.org", "bob@example.net", "carol@example.com"))
		if r.eom.Body != nil {
			t.Error("encrypted although carol has no key")
		}
		if !strings.Contains(r.via(), "svc/pgp; action=analyzed; status=skipped; reason=no-key") {
			t.Errorf("OPES-Via %q", r.via())
		}
	})
	t.Run("tempfail-split", func(t *testing.T) {
		svc := newService(t, encryptOptions(`partial = "tempfail-split"`, [2]string{"bob@example.net", bob.pubFile}))
		if !svc.Needs().Stages.Has(opes.StageRcpt) {
			t.Fatal("split needs the RCPT stage")
		}
		r := run(t, svc, false, plainMsg("alice@example.org", "bob@example.net", "carol@example.com", "BOB@example.net"))
		if r.rcpt[0].Kind != opes.Continue || r.rcpt[2].Kind != opes.Continue {
			t.Fatalf("keyed recipients refused: %v %v", r.rcpt[0].Reply, r.rcpt[2].Reply)
		}
		o := r.rcpt[1]
		if o.Kind != opes.TempFail || o.Reply == nil || o.Reply.Code != 452 || o.Reply.Enhanced != "4.5.3" {
			t.Fatalf("unkeyed second recipient: %+v %v, want 452 4.5.3", o, o.Reply)
		}
		if got := string(decryptWith(t, r.raw, bob.entity)); got != originalEntity {
			t.Errorf("decrypted %q", got)
		}
		// The deferred recipient comes back alone and gets it in clear.
		r = run(t, svc, false, plainMsg("alice@example.org", "carol@example.com", "dave@example.com"))
		if r.rcpt[1].Kind != opes.Continue || r.eom.Body != nil {
			t.Errorf("unkeyed transaction: rcpt %v, body changed %v", r.rcpt[1].Reply, r.eom.Body != nil)
		}
		r = run(t, svc, false, plainMsg("alice@example.org", "carol@example.com", "bob@example.net"))
		if r.rcpt[1].Kind != opes.TempFail {
			t.Errorf("keyed recipient after an unkeyed one: %v", r.rcpt[1].Reply)
		}
	})
}

func TestProtectedInputLeftAlone(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	alice := newKeyPair(t, dir, "Alice", "alice@example.org")
	enc := newService(t, encryptOptions("", [2]string{"@example.net", bob.pubFile}))
	sign := newService(t, fmt.Sprintf("[options]\nmode = \"sign\"\n[[options.keys]]\nsender = \"@example.org\"\nprivate_key_file = %q\n", alice.secFile))
	for _, ct := range []string{
		` multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; boundary="b"`,
		` multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"`,
		` application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m`,
	} {
		for name, svc := range map[string]opes.Service{"encrypt": enc, "sign": sign} {
			m := plainMsg("alice@example.org", "bob@example.net")
			m.header[4][1] = ct
			m.body = "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\nxx\r\n--b--\r\n"
			r := run(t, svc, false, m)
			if r.eom.Body != nil {
				t.Errorf("%s changed a %s message", name, ct)
			}
			if !strings.Contains(r.via(), "svc/pgp; action=analyzed; status=skipped; reason=signed") {
				t.Errorf("%s, %s: OPES-Via %q", name, ct, r.via())
			}
		}
	}
}

func signOptions(k keyPair, pattern string, extra ...string) string {
	return fmt.Sprintf("[options]\nmode = \"sign\"\n[[options.keys]]\nsender = %q\nprivate_key_file = %q\n%s", pattern, k.secFile, strings.Join(extra, "\n"))
}

// verifySigned checks a delivered multipart/signed message against the
// signer's public key over the exact bytes of the first part, and
// returns that part.
func verifySigned(t *testing.T, raw string, pub openpgp.EntityList) []byte {
	t.Helper()
	parts, params := partsOf(t, raw, "multipart/signed")
	if params["micalg"] != "pgp-sha256" || params["protocol"] != "application/pgp-signature" || len(parts) != 2 {
		t.Fatalf("params %v, %d parts", params, len(parts))
	}
	sfs, sig, err := splitEntity(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := mediaType(getField(sfs, "Content-Type")); mt != "application/pgp-signature" {
		t.Fatalf("signature part %q", mt)
	}
	block, err := armor.Decode(bytes.NewReader(sig))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openpgp.CheckDetachedSignature(pub, bytes.NewReader(parts[0]), block.Body, nil); err != nil {
		t.Fatalf("signature does not verify: %v\n%s", err, raw)
	}
	if !is7bit(parts[0]) {
		t.Errorf("signed part is not 7bit:\n%s", parts[0])
	}
	return parts[0]
}

func TestSign(t *testing.T) {
	dir := t.TempDir()
	alice := newKeyPair(t, dir, "Alice", "alice@example.org")
	svc := newService(t, signOptions(alice, "@example.org"))

	r := run(t, svc, false, plainMsg("alice@example.org", "bob@example.net"))
	signed := verifySigned(t, r.raw, alice.public)
	fs, body, err := splitEntity(signed)
	if err != nil {
		t.Fatal(err)
	}
	if cte := getField(fs, "Content-Transfer-Encoding"); cte != "quoted-printable" {
		t.Fatalf("8-bit text signed with Content-Transfer-Encoding %q", cte)
	}
	for _, bad := range []string{"\r\nFrom ", "   \r\n", "-- \r\n"} {
		if bytes.Contains(body, []byte(bad)) {
			t.Errorf("signed body still has %q", bad)
		}
	}
	dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	_, want, _ := strings.Cut(originalEntity, "\r\n\r\n")
	if string(dec) != want {
		t.Errorf("signed text decodes to %q, want %q", dec, want)
	}
	if !strings.Contains(r.via(), "svc/pgp; action=modified") {
		t.Errorf("OPES-Via %q", r.via())
	}

	// A signed part tampered with in transit does not verify.
	parts, _ := partsOf(t, r.raw, "multipart/signed")
	tampered := strings.Replace(r.raw, string(parts[0]), strings.Replace(string(parts[0]), "Alice", "Mallory", 1), 1)
	tp, _ := partsOf(t, tampered, "multipart/signed")
	_, sig, _ := splitEntity(tp[1])
	block, _ := armor.Decode(bytes.NewReader(sig))
	if _, err := openpgp.CheckDetachedSignature(alice.public, bytes.NewReader(tp[0]), block.Body, nil); err == nil {
		t.Error("a changed part still verifies")
	}
}

func TestSignMultipart(t *testing.T) {
	dir := t.TempDir()
	alice := newKeyPair(t, dir, "Alice", "alice@example.org", "s3cret pass")
	pass := dir + "/pass"
	writeFile(t, pass, "s3cret pass\n")
	svc := newService(t, signOptions(alice, "alice@example.org", fmt.Sprintf("passphrase_file = %q", pass)))
	m := plainMsg("Alice@Example.org", "bob@example.net")
	m.header[4][1] = ` multipart/mixed; boundary="outer"`
	m.header[5][1] = " 8bit"
	m.body = "preamble\r\n--outer\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n--outer\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\x00\x01\xff\r\n" +
		"--outer\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--outer--\r\n"
	r := run(t, svc, false, m)
	signed := verifySigned(t, r.raw, alice.public)
	ent, err := gomessage.Read(bytes.NewReader(signed))
	if err != nil {
		t.Fatal(err)
	}
	mr := ent.MultipartReader()
	if mr == nil {
		t.Fatalf("signed part is not multipart:\n%s", signed)
	}
	var got []string
	for range 4 {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body) // go-message decodes the transfer encoding
		got = append(got, string(b))
	}
	want := []string{"Grüße", "\x00\x01\xff", "hello"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("parts decode to %q, want %q", got, want)
	}
}

// The key is chosen by MAIL FROM, never by From.
func TestSignByEnvelopeNotFrom(t *testing.T) {
	dir := t.TempDir()
	alice := newKeyPair(t, dir, "Alice", "alice@example.org")
	svc := newService(t, signOptions(alice, "alice@example.org"))
	for _, from := range []string{"mallory@example.com", ""} {
		r := run(t, svc, false, plainMsg(from, "bob@example.net")) // From: alice
		if r.eom.Body != nil {
			t.Errorf("signed for envelope sender %q", from)
		}
	}
}

func TestDecrypt(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net", "bobs pass")
	other := newKeyPair(t, dir, "Other", "other@example.net")
	pass := dir + "/bob.pass"
	writeFile(t, pass, "bobs pass\r\n")
	enc := newService(t, encryptOptions("", [2]string{"bob@example.net", bob.pubFile}, [2]string{"other@example.net", other.pubFile}))
	decOpts := func(onFail string) string {
		return fmt.Sprintf("[options]\nmode = \"decrypt\"\non_fail = %q\n[[options.keys]]\nrecipient = \"bob@example.net\"\nprivate_key_file = %q\npassphrase_file = %q\n", onFail, bob.secFile, pass)
	}
	orig := plainMsg("alice@example.org", "bob@example.net")
	first := run(t, enc, false, orig)

	t.Run("round trip", func(t *testing.T) {
		r := run(t, newService(t, decOpts("continue")), true, parseDelivered(t, first.raw, "alice@example.org", "bob@example.net"))
		_, body, _ := strings.Cut(r.raw, "\r\n\r\n")
		if body != orig.body {
			t.Errorf("decrypted body %q, want %q", body, orig.body)
		}
		for name, want := range map[string]string{"Content-Type": "text/plain; charset=utf-8", "Content-Transfer-Encoding": "8bit", "Subject": "Quarterly numbers"} {
			if v, _ := headerValue(r.raw, name); v != want {
				t.Errorf("%s = %q, want %q", name, v, want)
			}
		}
		if !strings.Contains(r.via(), "svc/pgp; action=modified") {
			t.Errorf("OPES-Via %q", r.via())
		}
	})
	t.Run("without modify_signed the processor undoes it", func(t *testing.T) {
		r := run(t, newService(t, decOpts("continue")), false, parseDelivered(t, first.raw, "alice@example.org", "bob@example.net"))
		if r.eom.Body != nil || !strings.Contains(r.via(), "reason=signed") {
			t.Errorf("decrypted without modify_signed: via %q", r.via())
		}
	})

	// A message encrypted to someone else only, for bob's envelope.
	notForBob := run(t, enc, false, plainMsg("alice@example.org", "other@example.net"))
	corrupt := strings.Replace(first.raw, "\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n", "\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA", 1)
	if corrupt == first.raw {
		t.Fatal("test: could not corrupt the armor")
	}
	for _, tc := range []struct {
		name, raw, onFail string
		check             func(r result) error
	}{
		{"other key, reject", notForBob.raw, "reject", func(r result) error {
			if r.eom.Kind != opes.Reject || r.eom.Reply.Code != 554 || r.eom.Reply.Enhanced != "5.7.5" {
				return fmt.Errorf("outcome %v %v, want 554 5.7.5", r.eom.Kind, r.eom.Reply)
			}
			return nil
		}},
		{"corrupt, quarantine", corrupt, "quarantine", func(r result) error {
			if r.eom.Kind != opes.Continue || r.eom.Quarantine == "" || r.eom.Body != nil {
				return fmt.Errorf("outcome %+v, want held unchanged", r.eom)
			}
			return nil
		}},
		{"other key, continue", notForBob.raw, "continue", func(r result) error {
			if r.eom.Kind != opes.Continue || r.eom.Body != nil || !strings.Contains(r.via(), "svc/pgp; action=analyzed") {
				return fmt.Errorf("outcome %+v via %q, want delivered as is", r.eom, r.via())
			}
			return nil
		}},
		{"other key, tempfail", notForBob.raw, "tempfail", func(r result) error {
			if r.eom.Kind != opes.TempFail || r.eom.Reply.Code != 451 {
				return fmt.Errorf("outcome %v %v, want 451", r.eom.Kind, r.eom.Reply)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, newService(t, decOpts(tc.onFail)), true, parseDelivered(t, tc.raw, "alice@example.org", "bob@example.net"))
			if err := tc.check(r); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("recipient without gateway key", func(t *testing.T) {
		r := run(t, newService(t, decOpts("reject")), true, parseDelivered(t, first.raw, "alice@example.org", "carol@example.com"))
		if r.eom.Kind != opes.Continue || r.eom.Body != nil {
			t.Errorf("outcome %+v, want delivered as is", r.eom)
		}
	})
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	locked := newKeyPair(t, dir, "Locked", "locked@example.net", "pw")
	bad := dir + "/bad.asc"
	writeFile(t, bad, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n")
	garbage := dir + "/garbage.asc"
	writeFile(t, garbage, "hello\n")
	wrong := dir + "/wrong.pass"
	writeFile(t, wrong, "nope\n")
	for _, tc := range []struct{ src, field string }{
		{"[options]\n", "mode"},
		{"[options]\nmode = \"wrap\"\n", "mode"},
		{"[options]\nmode = \"encrypt\"\n", "keys"},
		{encryptOptions("", [2]string{"bob@example.net", bad}), "keys[1].public_key_file"},
		{encryptOptions("", [2]string{"bob@example.net", garbage}), "keys[1].public_key_file"},
		{encryptOptions("", [2]string{"bob@example.net", dir + "/missing.asc"}), "keys[1].public_key_file"},
		{encryptOptions("", [2]string{"bob", bob.pubFile}), "keys[1].recipient"},
		{encryptOptions("", [2]string{"@example.net", bob.pubFile}, [2]string{"@EXAMPLE.net", bob.pubFile}), "keys[2].recipient"},
		{encryptOptions(`partial = "maybe"`, [2]string{"bob@example.net", bob.pubFile}), "partial"},
		{encryptOptions(`on_fail = "reject"`, [2]string{"bob@example.net", bob.pubFile}), "on_fail"},
		{fmt.Sprintf("[options]\nmode = \"encrypt\"\n[[options.keys]]\nsender = \"a@example.org\"\npublic_key_file = %q\n", bob.pubFile), "keys[1].sender"},
		{fmt.Sprintf("[options]\nmode = \"sign\"\n[[options.keys]]\nsender = \"a@example.org\"\nprivate_key_file = %q\n", bob.pubFile), "keys[1].private_key_file"},
		{fmt.Sprintf("[options]\nmode = \"sign\"\n[[options.keys]]\nsender = \"a@example.org\"\nprivate_key_file = %q\n", locked.secFile), "keys[1].private_key_file"},
		{fmt.Sprintf("[options]\nmode = \"decrypt\"\n[[options.keys]]\nrecipient = \"a@example.net\"\nprivate_key_file = %q\npassphrase_file = %q\n", locked.secFile, wrong), "keys[1].passphrase_file"},
		{fmt.Sprintf("[options]\nmode = \"sign\"\npartial = \"tempfail-split\"\n[[options.keys]]\nsender = \"a@example.org\"\nprivate_key_file = %q\n", bob.secFile), "partial"},
	} {
		err := newError(t, tc.src)
		var fe *opes.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want a FieldError on %s\n%s", err, tc.field, tc.src)
		}
	}
}

func TestMultipartParts(t *testing.T) {
	body := []byte("pre\r\n--b\r\nA: 1\r\n\r\none\r\n--b \r\n\r\ntwo\r\n--bx\r\n--b--\r\nepi")
	pre, parts, epi, err := multipartParts(body, "b")
	if err != nil {
		t.Fatal(err)
	}
	if string(pre) != "pre" || len(parts) != 2 || string(parts[0]) != "A: 1\r\n\r\none" || string(parts[1]) != "\r\ntwo\r\n--bx" || string(epi) != "epi" {
		t.Errorf("pre %q parts %q epi %q", pre, parts, epi)
	}
	for _, b := range []string{"--b\r\nno end\r\n", "", "text only"} {
		if _, _, _, err := multipartParts([]byte(b), "b"); err == nil {
			t.Errorf("%q: no error", b)
		}
	}
}

// A message without any Content-* field is encrypted as the entity it
// is: an empty header, then the body (text/plain by default).
func TestEncryptNoContentFields(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	svc := newService(t, encryptOptions("", [2]string{"bob@example.net", bob.pubFile}))
	m := plainMsg("alice@example.org", "bob@example.net")
	m.header = m.header[:3] // no MIME-Version, no Content-*
	m.body = "plain\nbare LF line\r\n"
	r := run(t, svc, false, m)
	if got := string(decryptWith(t, r.raw, bob.entity)); got != "\r\nplain\r\nbare LF line\r\n" {
		t.Errorf("decrypted %q", got)
	}
	if v, _ := headerValue(r.raw, "MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version %q, want 1.0 added", v)
	}
}

// Mail that cannot be made 7bit (8-bit inside a message/rfc822 part,
// where no transfer encoding is allowed) is delivered unsigned, traced.
func TestSignUnencodable(t *testing.T) {
	dir := t.TempDir()
	alice := newKeyPair(t, dir, "Alice", "alice@example.org")
	svc := newService(t, signOptions(alice, "@example.org"))
	m := plainMsg("alice@example.org", "bob@example.net")
	m.header[4][1] = ` multipart/mixed; boundary="o"`
	m.body = "--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nGrüße\r\n--o--\r\n"
	r := run(t, svc, false, m)
	if r.eom.Body != nil || !strings.Contains(r.via(), "status=skipped; reason=8bit-unencodable") {
		t.Errorf("body changed %v, via %q", r.eom.Body != nil, r.via())
	}
	m.body = "--o\r\nContent-Type: text/plain\r\n\r\nno closing delimiter\r\n"
	r = run(t, svc, false, m)
	if r.eom.Body != nil || !strings.Contains(r.via(), "status=skipped; reason=malformed-mime") {
		t.Errorf("body changed %v, via %q", r.eom.Body != nil, r.via())
	}
}

// A public key may sit in the policy file itself; a secret key may not be
// handed to the encrypting service.
func TestInlinePublicKey(t *testing.T) {
	dir := t.TempDir()
	bob := newKeyPair(t, dir, "Bob", "bob@example.net")
	pub, err := os.ReadFile(bob.pubFile)
	if err != nil {
		t.Fatal(err)
	}
	svc := newService(t, fmt.Sprintf("[options]\nmode = \"encrypt\"\n[[options.keys]]\nrecipient = \"@example.net\"\npublic_key = '''\n%s'''\n", pub))
	r := run(t, svc, false, plainMsg("alice@example.org", "bob@example.net"))
	if got := string(decryptWith(t, r.raw, bob.entity)); got != originalEntity {
		t.Errorf("decrypted %q", got)
	}
	for _, tc := range []struct{ src, field string }{
		{encryptOptions("", [2]string{"bob@example.net", bob.secFile}), "keys[1].public_key_file"},
		{fmt.Sprintf("[options]\nmode = \"encrypt\"\n[[options.keys]]\nrecipient = \"@example.net\"\npublic_key = \"x\"\npublic_key_file = %q\n", bob.pubFile), "keys[1].public_key"},
		{"[options]\nmode = \"encrypt\"\n[[options.keys]]\nrecipient = \"@example.net\"\npublic_key = \"-----BEGIN PGP PUBLIC KEY BLOCK-----\"\n", "keys[1].public_key"},
	} {
		var fe *opes.FieldError
		if err := newError(t, tc.src); !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want a FieldError on %s", err, tc.field)
		}
	}
}
