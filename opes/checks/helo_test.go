package checks

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckHelo(t *testing.T) {
	local := map[string]bool{"mx1.example.net": true}
	v4 := netip.MustParseAddr("192.0.2.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name   string
		helo   string
		client netip.Addr
		want   string // "" = no finding
	}{
		{"fqdn", "mail.example.com", v4, ""},
		{"fqdn mixed case", "Mail.Example.COM", v4, ""},
		{"trailing dot accepted", "mail.example.com.", v4, ""},
		{"two trailing dots", "mail.example.com..", v4, HeloInvalid},
		{"hyphen inside", "mx-1.ex-ample.com", v4, ""},
		{"idn a-label", "xn--bcher-kva.example", v4, ""},
		{"no HELO", "", v4, ""},
		{"single label", "localhost", v4, HeloNotFQDN},
		{"single label trailing dot", "server.", v4, HeloNotFQDN},
		{"v4 literal matches", "[192.0.2.1]", v4, ""},
		{"v4 literal mapped client", "[192.0.2.1]", netip.MustParseAddr("::ffff:192.0.2.1"), ""},
		{"v4 literal differs", "[192.0.2.99]", v4, HeloIPMismatch},
		{"v4 literal unknown client", "[192.0.2.99]", netip.Addr{}, ""},
		{"v6 literal matches", "[IPv6:2001:db8::1]", v6, ""},
		{"v6 literal tag case", "[ipv6:2001:DB8::1]", v6, ""},
		{"v6 literal differs", "[IPv6:2001:db8::2]", v6, HeloIPMismatch},
		{"v6 literal v4 client", "[IPv6:2001:db8::1]", v4, HeloIPMismatch},
		{"v6 literal without tag", "[2001:db8::1]", v6, HeloInvalid},
		{"v6 literal with zone", "[IPv6:fe80::1%eth0]", v6, HeloInvalid},
		{"v6 literal mapped v4", "[IPv6:::ffff:192.0.2.1]", v4, HeloInvalid},
		{"v4 literal bad octet", "[192.0.2.256]", v4, HeloInvalid},
		{"literal unclosed", "[192.0.2.1", v4, HeloInvalid},
		{"general literal", "[x400:foo]", v4, HeloInvalid},
		{"empty literal", "[]", v4, HeloInvalid},
		{"bare v4", "192.0.2.1", v4, HeloBareIP},
		{"bare v6", "2001:db8::1", v6, HeloBareIP},
		{"bare v6 with tag", "IPv6:2001:db8::1", v6, HeloBareIP},
		{"numeric tld", "1.2.3", v4, HeloInvalid},
		{"underscore", "my_host.example.com", v4, HeloInvalid},
		{"leading hyphen", "-mx.example.com", v4, HeloInvalid},
		{"trailing hyphen label", "mx-.example.com", v4, HeloInvalid},
		{"empty label", "mx..example.com", v4, HeloInvalid},
		{"leading dot", ".example.com", v4, HeloInvalid},
		{"label 63", strings.Repeat("a", 63) + ".example.com", v4, ""},
		{"label 64", strings.Repeat("a", 64) + ".example.com", v4, HeloInvalid},
		{"300 chars", strings.Repeat("abcdefghi.", 30), v4, HeloInvalid},
		{"253 chars", strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 57) + ".com", v4, ""},
		{"254 chars", strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 58) + ".com", v4, HeloInvalid},
		{"CRLF injection", "mail.example.com\r\nMAIL FROM:<a@b>", v4, HeloInvalid},
		{"LF", "mail.example.com\n", v4, HeloInvalid},
		{"NUL", "mail.example.com\x00", v4, HeloInvalid},
		{"space", "mail example.com", v4, HeloInvalid},
		{"utf-8", "bücher.example", v4, HeloInvalid},
		{"own name", "mx1.example.net", v4, HeloLocalName},
		{"own name case and dot", "MX1.Example.Net.", v4, HeloLocalName},
		{"sibling name", "mx2.example.net", v4, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := checkHelo(tt.helo, tt.client, local)
			if got := f.Name; got != tt.want || ok != (tt.want != "") {
				t.Fatalf("checkHelo(%q) = %q, %v; want %q", tt.helo, got, ok, tt.want)
			}
			if ok && f.Text != heloText[tt.want] {
				t.Errorf("text %q", f.Text)
			}
		})
	}
	if f, _ := checkHelo("localhost", v4, nil); f.Text != "HELO name is not a fully qualified domain" {
		t.Errorf("not-fqdn text = %q", f.Text)
	}
}

func FuzzCheckHelo(f *testing.F) {
	for _, s := range []string{"mail.example.com", "[192.0.2.1]", "[IPv6:2001:db8::1]", "x", "1.2.3.4", "[", "a..b"} {
		f.Add(s)
	}
	client := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, helo string) {
		fd, ok := checkHelo(helo, client, nil)
		if ok && (fd.Name == "" || fd.Text == "") {
			t.Fatalf("finding without name or text: %+v", fd)
		}
		if !ok && helo != "" {
			// An accepted name contains nothing a header or a log line
			// could be confused by.
			for i := 0; i < len(helo); i++ {
				if c := helo[i]; c <= ' ' || c >= 0x7f {
					t.Fatalf("accepted %q with byte 0x%02x", helo, c)
				}
			}
		}
	})
}
