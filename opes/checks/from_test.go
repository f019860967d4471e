package checks

import (
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

func TestCheckFrom(t *testing.T) {
	tests := []struct {
		name   string
		sender *opes.Address
		from   []string
		want   string
	}{
		{"same domain", &opes.Address{Addr: "a@example.com"}, []string{"b@example.com"}, ""},
		{"subdomain same org", &opes.Address{Addr: "bounce@mail.example.com"}, []string{"news@example.com"}, ""},
		{"case", &opes.Address{Addr: "a@EXAMPLE.com"}, []string{"b@Example.COM"}, ""},
		{"display name", &opes.Address{Addr: "a@example.com"}, []string{`"Alice, Sales" <alice@example.com>`}, ""},
		{"display name lies", &opes.Address{Addr: "a@example.com"}, []string{`"bank.example" <x@evil.example>`}, FromMismatch},
		{"encoded word", &opes.Address{Addr: "a@example.com"}, []string{"=?UTF-8?Q?Z=C3=BCrich_Bank?= <info@evil.example>"}, FromMismatch},
		{"encoded word same", &opes.Address{Addr: "a@example.com"}, []string{"=?UTF-8?B?w5xiZXI=?= <info@example.com>"}, ""},
		{"unknown charset", &opes.Address{Addr: "a@example.com"}, []string{"=?x-unknown?Q?Hi?= <info@example.com>"}, ""},
		{"other domain", &opes.Address{Addr: "a@example.com"}, []string{"b@example.org"}, FromMismatch},
		{"multi-label suffix approximation", &opes.Address{Addr: "a@shop.co.uk"}, []string{"b@bank.co.uk"}, ""},
		{"two From fields one forged", &opes.Address{Addr: "a@example.com"}, []string{"b@example.com", "c@evil.example"}, FromMismatch},
		{"two From fields forged first", &opes.Address{Addr: "a@example.com"}, []string{"c@evil.example", "b@example.com"}, FromMismatch},
		{"mailbox list", &opes.Address{Addr: "a@example.com"}, []string{"b@example.com, c@example.com"}, ""},
		{"mailbox list one foreign", &opes.Address{Addr: "a@example.com"}, []string{"b@example.com, c@example.org"}, FromMismatch},
		{"no From", &opes.Address{Addr: "a@example.com"}, nil, ""},
		{"unparsable From", &opes.Address{Addr: "a@example.com"}, []string{"<<<"}, FromInvalid},
		{"empty From", &opes.Address{Addr: "a@example.com"}, []string{""}, FromInvalid},
		{"null sender", &opes.Address{Addr: ""}, []string{"b@example.org"}, ""},
		{"no sender", nil, []string{"b@example.org"}, ""},
		{"sender without domain", &opes.Address{Addr: "postmaster"}, []string{"b@example.org"}, ""},
		{"From address literal", &opes.Address{Addr: "a@example.com"}, []string{"b@[192.0.2.1]"}, FromMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := checkFrom(tt.sender, tt.from)
			if f.Name != tt.want || ok != (tt.want != "") {
				t.Fatalf("checkFrom = %q, %v; want %q", f.Name, ok, tt.want)
			}
			if ok && f.Text != fromText[tt.want] {
				t.Errorf("text %q", f.Text)
			}
		})
	}
}
