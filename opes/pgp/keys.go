package pgp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/opesmilter/opes-milter/internal/smallfile"
	"github.com/opesmilter/opes-milter/opes"
)

const maxKeyFile = 1 << 20

// loadKeys reads every keys entry; each address or "@domain" appears once.
func (s *service) loadKeys(list []keyOptions) error {
	if len(list) == 0 {
		return opes.FieldErrorf("keys", "needs at least one [[service.options.keys]] entry")
	}
	if len(list) > maxKeys {
		return opes.FieldErrorf("keys", "more than %d entries", maxKeys)
	}
	s.keys = make(map[string]openpgp.EntityList, len(list))
	for i, k := range list {
		at := fmt.Sprintf("keys[%d].", i+1)
		addr, el, field, err := s.loadKey(k)
		if err != nil {
			return &opes.FieldError{Field: at + field, Err: err}
		}
		if _, dup := s.keys[addr]; dup {
			return opes.FieldErrorf(at+map[bool]string{true: "sender", false: "recipient"}[s.mode == modeSign], "%q is listed twice", addr)
		}
		s.keys[addr] = el
	}
	return nil
}

// loadKey checks one keys entry; field names the option an error is
// about.
func (s *service) loadKey(k keyOptions) (addr string, el openpgp.EntityList, field string, err error) {
	addrField, other := "recipient", "sender"
	pattern, otherSet := k.Recipient, k.Sender != ""
	if s.mode == modeSign {
		addrField, other = "sender", "recipient"
		pattern, otherSet = k.Sender, k.Recipient != ""
	}
	if otherSet {
		return "", nil, other, fmt.Errorf("is not an option of mode %q (use %s)", s.modeName(), addrField)
	}
	if addr, err = checkPattern(pattern); err != nil {
		return "", nil, addrField, err
	}
	if s.mode == modeEncrypt {
		if k.PrivateKeyFile != "" || k.PassphraseFile != "" {
			return "", nil, "private_key_file", errors.New(`mode "encrypt" needs only public_key_file`)
		}
		switch {
		case k.PublicKeyFile != "" && k.PublicKey != "":
			return "", nil, "public_key", errors.New("set public_key or public_key_file, not both")
		case k.PublicKey != "":
			// Public keys are not secret: a policy file may hold them.
			if el, err = readKeyRing("public_key", []byte(k.PublicKey)); err != nil {
				return "", nil, "public_key", err
			}
		case k.PublicKeyFile != "":
			if el, err = readKeyFile(k.PublicKeyFile); err != nil {
				return "", nil, "public_key_file", err
			}
		default:
			return "", nil, "public_key_file", errors.New("is required: the recipient's armored OpenPGP public key (or public_key with the key itself)")
		}
		for _, e := range el {
			if e.PrivateKey != nil {
				return "", nil, "public_key_file", errors.New("holds a secret key: give the encrypting service public keys only")
			}
		}
		for _, e := range el {
			if _, ok := e.EncryptionKey(time.Now()); !ok {
				return "", nil, "public_key_file", fmt.Errorf("%s: key %X has no valid encryption key (expired, revoked or sign-only)", k.PublicKeyFile, e.PrimaryKey.Fingerprint)
			}
		}
		return addr, el, "", nil
	}
	if k.PublicKeyFile != "" || k.PublicKey != "" {
		return "", nil, "public_key_file", fmt.Errorf("mode %q needs private_key_file", s.modeName())
	}
	if k.PrivateKeyFile == "" {
		return "", nil, "private_key_file", errors.New("is required: an armored OpenPGP secret key")
	}
	if el, err = readKeyFile(k.PrivateKeyFile); err != nil {
		return "", nil, "private_key_file", err
	}
	var pass []byte
	if k.PassphraseFile != "" {
		if pass, err = readPassphrase(k.PassphraseFile); err != nil {
			return "", nil, "passphrase_file", err
		}
	}
	for _, e := range el {
		if e.PrivateKey == nil {
			return "", nil, "private_key_file", fmt.Errorf("%s: key %X is a public key; a secret key is needed", k.PrivateKeyFile, e.PrimaryKey.Fingerprint)
		}
		if err := unlock(e, pass); err != nil {
			field := "passphrase_file"
			if pass == nil {
				field = "private_key_file"
			}
			return "", nil, field, fmt.Errorf("%s: %w", k.PrivateKeyFile, err)
		}
		if s.mode == modeSign {
			if sk, ok := e.SigningKey(time.Now()); !ok || sk.PrivateKey == nil {
				return "", nil, "private_key_file", fmt.Errorf("%s: key %X has no valid signing key", k.PrivateKeyFile, e.PrimaryKey.Fingerprint)
			}
		}
	}
	if s.mode == modeDecrypt && len(el.DecryptionKeys()) == 0 {
		return "", nil, "private_key_file", fmt.Errorf("%s holds no decryption key", k.PrivateKeyFile)
	}
	if s.mode == modeSign && len(el) != 1 {
		return "", nil, "private_key_file", fmt.Errorf("%s holds %d keys; a signing sender needs exactly one", k.PrivateKeyFile, len(el))
	}
	return addr, el, "", nil
}

func (s *service) modeName() string {
	return map[mode]string{modeEncrypt: "encrypt", modeSign: "sign", modeDecrypt: "decrypt"}[s.mode]
}

// unlock decrypts the secret key material of e (primary and subkeys).
func unlock(e *openpgp.Entity, pass []byte) error {
	locked := e.PrivateKey.Encrypted
	for _, sk := range e.Subkeys {
		locked = locked || (sk.PrivateKey != nil && sk.PrivateKey.Encrypted)
	}
	if !locked {
		return nil
	}
	if pass == nil {
		return errors.New("the secret key is protected by a passphrase: set passphrase_file")
	}
	if err := e.DecryptPrivateKeys(pass); err != nil {
		return fmt.Errorf("unlock the secret key: %w", err)
	}
	return nil
}

// readKeyFile reads an ASCII-armored key ring.
func readKeyFile(path string) (openpgp.EntityList, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	return readKeyRing(path, data)
}

// readKeyRing parses armored key text; name says where it came from.
func readKeyRing(name string, data []byte) (openpgp.EntityList, error) {
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: not an armored OpenPGP key: %w", name, err)
	}
	if len(el) == 0 {
		return nil, fmt.Errorf("%s holds no OpenPGP key", name)
	}
	return el, nil
}

// readPassphrase reads a passphrase file: its first line, without the
// line end.
func readPassphrase(path string) ([]byte, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, fmt.Errorf("%s: empty passphrase", path)
	}
	return line, nil
}

func readSmall(path string) ([]byte, error) {
	data, err := smallfile.Read(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return data, nil
}

// checkPattern accepts "user@domain" or "@domain" and returns it in
// lower case.
func checkPattern(p string) (string, error) {
	p = strings.ToLower(strings.TrimSpace(p))
	if p == "" {
		return "", errors.New(`is required: an address ("joe@example.net") or a domain ("@example.net")`)
	}
	i := strings.LastIndexByte(p, '@')
	if i < 0 || i == len(p)-1 || len(p) > 320 {
		return "", fmt.Errorf("%q is not an address or \"@domain\"", p)
	}
	for j := 0; j < len(p); j++ {
		if c := p[j]; c <= 0x20 || c >= 0x7f || c == '<' || c == '>' {
			return "", fmt.Errorf("%q contains byte 0x%02x", p, c)
		}
	}
	if strings.ContainsRune(p[i+1:], '@') || strings.HasPrefix(p[i+1:], ".") {
		return "", fmt.Errorf("%q has no valid domain", p)
	}
	return p, nil
}

// lookup returns the keys of an envelope address: its own entry, else its
// domain's. Nil when it has none.
func (s *service) lookup(addr string) openpgp.EntityList {
	a := strings.ToLower(strings.TrimSpace(addr))
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	i := strings.LastIndexByte(a, '@')
	if i <= 0 {
		return nil
	}
	if el, ok := s.keys[a]; ok {
		return el
	}
	return s.keys[a[i:]]
}
