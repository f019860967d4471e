package policy

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestGuaranteeSections(t *testing.T) {
	cfg, err := Parse("g.toml", []byte(`
[system]
uri = "https://mx1.example.net/opes/"
operator = "Example Net Ltd"
privacy_policy = """Mail is scanned for malware.
Nothing is kept but the trace records."""
retention = "trace records 30 days"

[consent]
party = "Example Net Ltd"
recipients = ["@Example.NET", "joe@example.org"]
senders = ["@example.net"]

[bypass]
unknown_as_wildcard = false
trust_auth = false
trusted_networks = ["192.0.2.0/24", "2001:db8::1"]
dkim_domains = ["sender", "Example.org"]

[store]
path = "/var/lib/opes-milter/store.db"
max_quarantine_size = 1000000

[quarantine]
mode = "both"
expire = "48h"
release_relay = "127.0.0.1:10026"

[ndr]
relay = "127.0.0.1:10026"
hostname = "mx1.example.net"
max_age = "24h"

[audit]
log = "/var/log/opes-milter/audit.jsonl"
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy
	if p.System.Operator != "Example Net Ltd" || p.System.Retention == "" || p.System.PrivacyPolicy == "" {
		t.Errorf("system disclosure: %+v", p.System)
	}
	c := p.Consent
	if c == nil || c.All || !slices.Equal(c.Recipients, []string{"@example.net", "joe@example.org"}) || c.Party != "Example Net Ltd" {
		t.Fatalf("consent: %+v", c)
	}
	if !c.RecipientConsents("Bob@example.NET") || c.RecipientConsents("bob@example.org") || !c.SenderConsents("a@example.net") {
		t.Errorf("consent matching is wrong")
	}
	b := p.Bypass
	if b.UnknownAsAll || b.TrustAuth || !b.TrustPreferences || len(b.TrustNetworks) != 2 ||
		b.TrustNetworks[1] != netip.MustParsePrefix("2001:db8::1/128") || !slices.Equal(b.DKIMDomains, []string{"sender", "example.org"}) {
		t.Errorf("bypass: %+v", b)
	}
	if cfg.Store.Backend != "embedded" || cfg.Store.MaxQuarantineBytes != 1000000 {
		t.Errorf("store: %+v", cfg.Store)
	}
	if cfg.Quarantine.Mode != "both" || cfg.Quarantine.Expire != 48*time.Hour || cfg.NDR.Relay != "127.0.0.1:10026" ||
		cfg.NDR.MaxAge != 24*time.Hour || cfg.Audit.Log == "" {
		t.Errorf("quarantine %+v ndr %+v audit %+v", cfg.Quarantine, cfg.NDR, cfg.Audit)
	}

	// Without [consent] nobody consented; [bypass] has its defaults.
	cfg, err = Parse("d.toml", []byte("[system]\nuri = \"https://mx1.example.net/opes/\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Policy.Consent; c == nil || c.All || c.RecipientConsents("a@example.net") || c.SenderConsents("a@example.net") {
		t.Errorf("absent [consent] must consent nobody: %+v", c)
	}
	if b := cfg.Policy.Bypass; !b.UnknownAsAll || !b.TrustAuth || !b.TrustPreferences {
		t.Errorf("bypass defaults: %+v", b)
	}
	if cfg.Quarantine.Mode != "mta" || cfg.Store.Backend != "" {
		t.Errorf("defaults: %+v %+v", cfg.Quarantine, cfg.Store)
	}
}
