package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

const (
	sysURI   = "https://mx1.example.net/opes/"
	authserv = "mx1.example.net"
)

var ctx = context.Background()

// testKey is a signing key written as PEM and the TXT record that
// publishes it.
type testKey struct {
	file string
	txt  string
	pub  crypto.PublicKey
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// newKey writes an RSA (2048-bit, generated once per test binary: it takes
// a while) or Ed25519 key into dir.
func newKey(t *testing.T, dir, alg string) testKey {
	t.Helper()
	var der []byte
	var pub crypto.PublicKey
	var txt string
	switch alg {
	case "rsa":
		rsaOnce.Do(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKey = k
		})
		der = x509.MarshalPKCS1PrivateKey(rsaKey)
		pub = &rsaKey.PublicKey
		pkix, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		txt = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pkix)
	case "ed25519":
		p, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if der, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			t.Fatal(err)
		}
		pub = p
		txt = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(p)
	default:
		t.Fatalf("alg %q", alg)
	}
	typ := map[string]string{"rsa": "RSA PRIVATE KEY", "ed25519": "PRIVATE KEY"}[alg]
	path := filepath.Join(dir, alg+".private")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return testKey{file: path, txt: txt, pub: pub}
}

// dnsZone is an in-memory set of TXT records; names not in it are
// NXDOMAIN, names in fail answer with a temporary error.
type dnsZone struct {
	mu      sync.Mutex
	records map[string][]string
	fail    map[string]error
	queries []string
}

func (z *dnsZone) LookupTXT(_ context.Context, name string) ([]string, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.queries = append(z.queries, name)
	if err := z.fail[name]; err != nil {
		return nil, err
	}
	if r, ok := z.records[name]; ok {
		return r, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// goLookup adapts the zone to go-msgauth's own verifier, the independent
// check of what the service signed.
func (z *dnsZone) goLookup(name string) ([]string, error) { return z.LookupTXT(ctx, name) }

// newService builds the service from TOML options and points its key
// lookups at zone.
func newService(t *testing.T, src string, zone *dnsZone) *service {
	t.Helper()
	s, err := New(optiontest.Decoder(t, src))
	if err != nil {
		t.Fatalf("New: %v\n%s", err, src)
	}
	svc := s.(*service)
	if zone != nil {
		svc.lookupTXT = zone.LookupTXT
	}
	return svc
}

// signOptions is a sign service for example.org with key k; extra goes
// into [options], domainExtra into the domains entry.
func signOptions(k testKey, extra string, domainExtra ...string) string {
	return fmt.Sprintf("[options]\nmode = \"sign\"\n%s\n[[options.domains]]\ndomain = \"example.org\"\nselector = \"sel\"\nkey_file = %q\n%s\n",
		extra, k.file, strings.Join(domainExtra, "\n"))
}

// message is one SMTP transaction's content. Header values are as the
// milter bridge hands them to the session: with their leading space.
type message struct {
	from   string
	rcpts  []string
	header [][2]string
	body   string
}

func (m message) raw() string {
	return opes.FormatHeader(m.fields()) + "\r\n" + m.body
}

func (m message) fields() []opes.HeaderField {
	var out []opes.HeaderField
	for _, h := range m.header {
		out = append(out, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	return out
}

// parseMessage splits raw wire text into a message (for feeding a
// delivered message into the next processor).
func parseMessage(t *testing.T, raw, from string, rcpts ...string) message {
	t.Helper()
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of header in %q", raw)
	}
	m := message{from: from, rcpts: rcpts, body: body}
	for _, line := range strings.Split(head, "\r\n") {
		if line[0] == ' ' || line[0] == '\t' {
			m.header[len(m.header)-1][1] += "\r\n" + line
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		m.header = append(m.header, [2]string{name, value})
	}
	return m
}

var baseMsg = message{
	from:  "alice@example.org",
	rcpts: []string{"bob@example.net"},
	header: [][2]string{
		{"From", " Alice <alice@example.org>"},
		{"To", " Bob <bob@example.net>"},
		{"Subject", " Quarterly\r\n\tnumbers"},
		{"Date", " Thu, 26 Nov 2026 00:00:00 +0000"},
		{"Message-ID", " <1@example.org>"},
		{"MIME-Version", " 1.0"},
		{"Content-Type", " text/plain; charset=us-ascii"},
	},
	body: "Hello Bob,\r\n\r\nthe numbers are  in.\r\n\r\n\r\n",
}

// extraService is a test service that runs its own function at the end
// of the message: what another service of the policy does before DKIM.
type extraService struct {
	eom func(tx *opes.Transaction) error
}

func (e *extraService) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true, Body: true}
}

func (e *extraService) Begin(tx *opes.Transaction) opes.ServiceTx { return &extraTx{e: e, tx: tx} }

type extraTx struct {
	opes.BaseTx
	e  *extraService
	tx *opes.Transaction
}

func (x *extraTx) EndOfMessage(context.Context) (opes.Verdict, error) {
	return opes.Verdict{Kind: opes.Continue}, x.e.eom(x.tx)
}

// run drives one SMTP transaction through a processor whose only rule
// runs services in order, the way the milter bridge does, and returns
// the end-of-message outcome (or the refusal) and the message as the MTA
// would deliver it: the received header with the outcome's changes
// applied, and the replacement body if any.
func run(t *testing.T, m message, services ...opes.Service) (*opes.Outcome, string) {
	t.Helper()
	var specs []*opes.ServiceSpec
	for i, s := range services {
		name := fmt.Sprintf("svc%d", i+1)
		if _, ok := s.(*service); ok {
			name = "dkim"
		}
		specs = append(specs, &opes.ServiceSpec{Name: name, Kind: "test", URI: sysURI + "svc/" + name, Impl: s})
	}
	sess := servicetest.NewProcessor(t, sysURI, opes.StageConnect, opes.Limits{}, specs...).NewSession()
	defer sess.Close()
	if o := sess.Connect(ctx); o.Kind != opes.Continue {
		return o, ""
	}
	if o := sess.Helo(ctx, "client.example.org"); o.Kind != opes.Continue {
		return o, ""
	}
	if o := sess.Mail(ctx, opes.Address{Addr: m.from}); o.Kind != opes.Continue {
		return o, ""
	}
	for _, r := range m.rcpts {
		if o := sess.Rcpt(ctx, opes.Address{Addr: r}); o.Kind != opes.Continue {
			t.Fatalf("RCPT %s refused: %v", r, o.Reply)
		}
	}
	if o := sess.Data(ctx); o.Kind != opes.Continue {
		return o, ""
	}
	for _, h := range m.header {
		sess.Header(h[0], h[1])
	}
	if o := sess.EndOfHeaders(ctx); o.Kind != opes.Continue {
		return o, ""
	}
	if o := sess.BodyChunk([]byte(m.body)); o != nil {
		return o, ""
	}
	o := sess.EndOfMessage(ctx, "4ABCD12")
	if o.Kind != opes.Continue {
		return o, ""
	}
	body := servicetest.DeliveredBody(t, o, m.body)
	out := opes.FormatHeader(opes.ApplyChanges(m.fields(), o.HeaderChanges)) + "\r\n" + body
	sess.Finish()
	return o, out
}

// goVerify checks raw with go-msgauth directly.
func goVerify(t *testing.T, raw string, zone *dnsZone) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(raw), &dkim.VerifyOptions{LookupTXT: zone.goLookup})
	if err != nil {
		t.Fatalf("go-msgauth verify: %v", err)
	}
	return vs
}

// fieldValues returns the unfolded values of the fields named name in
// raw's header.
func fieldValues(raw, name string) []string {
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	var out []string
	cur := -1
	for _, line := range strings.Split(head, "\r\n") {
		if line != "" && (line[0] == ' ' || line[0] == '\t') {
			if cur >= 0 {
				out[cur] += " " + strings.TrimSpace(line)
			}
			continue
		}
		cur = -1
		n, v, _ := strings.Cut(line, ":")
		if strings.EqualFold(n, name) {
			out = append(out, strings.TrimSpace(v))
			cur = len(out) - 1
		}
	}
	return out
}

// firstFieldNames returns the names of raw's first n header fields.
func firstFieldNames(raw string, n int) []string {
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	var out []string
	for _, line := range strings.Split(head, "\r\n") {
		if len(out) == n {
			break
		}
		if line != "" && line[0] != ' ' && line[0] != '\t' {
			name, _, _ := strings.Cut(line, ":")
			out = append(out, name)
		}
	}
	return out
}
