package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/smallfile"
	"github.com/opesmilter/opes-milter/opes"
)

// Bounds on signing keys.
const (
	minRSABits  = 1024 // RFC 8301 §3.2: signers MUST use at least 1024 bits
	maxRSABits  = 8192 // verifiers need not go beyond 4096; 8192 only costs time
	maxKeyFile  = 64 << 10
	maxLifetime = 10 * 365 * 24 * time.Hour
)

func (s *service) configureSign(o *options) error {
	switch c := strings.ToLower(strings.TrimSpace(o.Canonicalization)); c {
	case "", "relaxed/relaxed":
		s.bodyCanon = "relaxed"
	case "relaxed/simple":
		s.bodyCanon = "simple"
	default:
		// The header is always relaxed: the MTA may re-fold header fields
		// and the space after the colon is not ours to keep.
		return opes.FieldErrorf("canonicalization", `%q is not "relaxed/relaxed" or "relaxed/simple"`, o.Canonicalization)
	}
	if o.Expiration != "" {
		d, err := time.ParseDuration(o.Expiration)
		if err != nil || d < time.Minute || d > maxLifetime {
			return opes.FieldErrorf("expiration", "%q is not a duration between 1m and %s, e.g. \"168h\"", o.Expiration, maxLifetime)
		}
		s.expiration = d
	}
	if len(o.Domains) == 0 {
		return opes.FieldErrorf("domains", "mode = \"sign\" needs at least one [[service.options.domains]] entry (domain, selector, key_file)")
	}
	if len(o.Domains) > maxDomains {
		return opes.FieldErrorf("domains", "more than %d entries", maxDomains)
	}
	s.keys = make(map[string]*signKey, len(o.Domains))
	for i, d := range o.Domains {
		at := fmt.Sprintf("domains[%d].", i+1)
		k, field, err := loadDomain(d)
		if err != nil {
			return &opes.FieldError{Field: at + field, Err: err}
		}
		if _, dup := s.keys[k.domain]; dup {
			return opes.FieldErrorf(at+"domain", "%q is listed twice", k.domain)
		}
		s.keys[k.domain] = k
	}
	return nil
}

// loadDomain checks one domains entry and reads its key; field names the
// option an error is about.
func loadDomain(d domainOptions) (k *signKey, field string, err error) {
	k = &signKey{domain: strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d.Domain), "."))}
	if err := checkDomainName(k.domain); err != nil {
		return nil, "domain", err
	}
	k.selector = strings.ToLower(strings.TrimSpace(d.Selector))
	if err := checkDomainName(k.selector); err != nil {
		return nil, "selector", err
	}
	if strings.TrimSpace(d.KeyFile) == "" {
		return nil, "key_file", errors.New("is required: the PEM file of the private key")
	}
	if k.signer, err = loadKey(d.KeyFile); err != nil {
		return nil, "key_file", err
	}
	headers := d.Headers
	if headers == nil {
		headers = DefaultHeaders
	}
	if k.headers, err = checkHeaderNames(headers, true); err != nil {
		return nil, "headers", err
	}
	oversign := d.Oversign
	if oversign == nil {
		oversign = DefaultOversign
	}
	if k.oversign, err = checkHeaderNames(oversign, false); err != nil {
		return nil, "oversign", err
	}
	return k, "", nil
}

// checkDomainName accepts a host name: dot-separated labels of letters,
// digits and hyphens (underscore allowed too, as in selectors seen in
// the wild), at most 63 octets each and 253 in all.
func checkDomainName(d string) error {
	if d == "" {
		return errors.New("is empty")
	}
	if len(d) > 253 {
		return fmt.Errorf("%q is longer than 253 octets", d)
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not a domain name (empty or overlong label, or a label starting or ending with '-')", d)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q is not a domain name: byte 0x%02x", d, c)
			}
		}
	}
	return nil
}

// checkHeaderNames validates a list of field names, drops duplicates
// (case-insensitively) and, for the signed list, requires From: RFC 6376
// §5.4 makes it the one field every signature covers.
func checkHeaderNames(names []string, needFrom bool) ([]string, error) {
	if len(names) > maxHeaderNames {
		return nil, fmt.Errorf("more than %d names", maxHeaderNames)
	}
	var out []string
	seen := map[string]bool{}
	for i, n := range names {
		n = strings.TrimSpace(n)
		if n == "" || len(n) > 76 {
			return nil, fmt.Errorf("name %d (%q) is empty or longer than 76 octets", i+1, n)
		}
		for j := 0; j < len(n); j++ {
			if c := n[j]; c < 33 || c > 126 || c == ':' {
				return nil, fmt.Errorf("name %d (%q) contains byte 0x%02x", i+1, n, c)
			}
		}
		switch {
		case strings.EqualFold(n, opes.FieldSystem), strings.EqualFold(n, opes.FieldVia):
			return nil, fmt.Errorf("%s is inserted by the processor after every service ran; it cannot be signed", n)
		case strings.EqualFold(n, "DKIM-Signature"):
			return nil, errors.New("DKIM-Signature cannot be listed: the signature covers itself already")
		}
		if k := strings.ToLower(n); !seen[k] {
			seen[k] = true
			out = append(out, n)
		}
	}
	if needFrom && !seen["from"] {
		return nil, errors.New("must include From (RFC 6376 §5.4)")
	}
	return out, nil
}

// loadKey reads a PEM private key: PKCS #1 ("RSA PRIVATE KEY", as older
// opendkim-genkey writes) or PKCS #8 ("PRIVATE KEY": RSA or Ed25519).
func loadKey(path string) (crypto.Signer, error) {
	data, err := smallfile.Read(path, maxKeyFile)
	if errors.Is(err, smallfile.ErrTooLarge) {
		return nil, fmt.Errorf("%w: not a key file", err)
	}
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	var block *pem.Block
	for rest := data; ; {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%s holds no PEM private key (want RSA or Ed25519, e.g. from opendkim-genkey)", path)
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			break
		}
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("%s: the key is encrypted; the daemon has no passphrase (write it unencrypted, readable only by the daemon's user)", path)
	default:
		return nil, fmt.Errorf("%s: PEM type %q is not supported (want RSA or Ed25519 in PKCS #1 or #8)", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: parse %s: %w", path, block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("%s: RSA key of %d bits; want %d to %d (2048 recommended)", path, bits, minRSABits, maxRSABits)
		}
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("%s: invalid RSA key: %w", path, err)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: a %T key is not supported for DKIM (want RSA or Ed25519)", path, key)
}

// headerKeys is the h= list for fields: each configured name as many
// times as the message has it (so that a field absent when signing may
// still be added by a later hop, as Postfix adds a missing Message-ID),
// and the over-signed names once more. From is always listed.
func (k *signKey) headerKeys(fields []opes.HeaderField) []string {
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(strings.TrimSpace(f.Name))]++
	}
	var keys []string
	listed := map[string]bool{}
	for _, n := range k.headers {
		for range count[strings.ToLower(n)] {
			keys = append(keys, n)
		}
		listed[strings.ToLower(n)] = count[strings.ToLower(n)] > 0
	}
	for _, n := range k.oversign {
		keys = append(keys, n)
		listed[strings.ToLower(n)] = true
	}
	if !listed["from"] {
		keys = append(keys, "From")
	}
	return keys
}

// signMessage adds a DKIM-Signature for mail whose envelope sender's
// domain has a key. Other mail, and bounces (null reverse-path), pass
// unchanged.
func (s *service) signMessage(tx *opes.Transaction) (opes.Verdict, error) {
	var k *signKey
	if tx.Sender != nil {
		k = s.keys[tx.Sender.Domain()]
	}
	if k == nil {
		return opes.Verdict{Kind: opes.Continue, Action: "analyzed"}, nil
	}
	// The working header without the processor's OPES-System field: the
	// header as the next hop will see it, minus the trace fields inserted
	// after this service, which h= never names.
	fields := tx.Header.MessageFields()
	opts := &dkim.SignOptions{
		Domain:                 k.domain,
		Selector:               k.selector,
		Signer:                 k.signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.Canonicalization(s.bodyCanon),
		HeaderKeys:             k.headerKeys(fields),
	}
	if s.expiration > 0 {
		opts.Expiration = s.now().Add(s.expiration)
	}
	signer, err := dkim.NewSigner(opts)
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("dkim: sign for %s: %w", k.domain, err)
	}
	msg := io.MultiReader(strings.NewReader(opes.FormatHeader(fields)+"\r\n"), deliveredBody(tx))
	if _, err := io.Copy(signer, msg); err != nil {
		_ = signer.Close()
		return opes.Verdict{}, fmt.Errorf("dkim: sign for %s: read message: %w", k.domain, err)
	}
	if err := signer.Close(); err != nil {
		return opes.Verdict{}, fmt.Errorf("dkim: sign for %s: %w", k.domain, err)
	}
	name, value, _ := strings.Cut(strings.TrimRight(signer.Signature(), "\r\n"), ":")
	// At the top, like every signer does (RFC 6376 §5.6): a verifier
	// that sees several signatures reads them in header order.
	if err := tx.Header.Prepend(name, value); err != nil {
		return opes.Verdict{}, fmt.Errorf("dkim: add signature: %w", err)
	}
	return opes.Verdict{Kind: opes.Continue, Action: "header-added"}, nil
}

// deliveredBody is the body as it will be delivered: the replacement of
// an earlier service, when the transaction exposes it, else the body the
// MTA sent. A signature over anything else fails at the recipient.
func deliveredBody(tx *opes.Transaction) io.Reader {
	if b := tx.CurrentBody(); b != nil {
		return b.Reader()
	}
	return bytes.NewReader(nil)
}
