package bypass

import (
	"strings"
	"testing"
)

func TestNormalizeURI(t *testing.T) {
	cases := []struct{ in, want string }{
		// §6.2.2.1 case: scheme and host lower, percent hex upper.
		{"HTTPS://MX1.Example.NET/opes/", "https://mx1.example.net/opes/"},
		{"https://mx1.example.net/OPES/", "https://mx1.example.net/OPES/"},
		{"https://h/a%2fb%c3%a9", "https://h/a%2Fb%C3%A9"},
		// §6.2.2.2 percent-encoded unreserved decoded, in host lower-cased.
		{"https://h/%7Euser/%41%2D%5F%2E%30", "https://h/~user/A-_.0"},
		{"https://%4D%58.example/", "https://mx.example/"},
		{"https://h/%2C%3B", "https://h/%2C%3B"},
		// §6.2.2.3 dot segments, %2E counting as ".".
		{"https://h/a/b/c/./../../g", "https://h/a/g"},
		{"https://h/a/%2E%2E/b", "https://h/b"},
		{"https://h/../../x", "https://h/x"},
		{"https://h/a/b/..", "https://h/a/"},
		{"https://h/a/.", "https://h/a/"},
		{"https://h/a//../b", "https://h/a/b"},
		{"https://h/.", "https://h/"},
		// §6.2.3 scheme-based: ports and empty path.
		{"https://h:443/x", "https://h/x"},
		{"http://h:80", "http://h/"},
		{"http://h:0080/", "http://h/"},
		{"https://h:80/", "https://h:80/"},
		{"https://h:/", "https://h/"},
		{"https://h:08443/", "https://h:8443/"},
		{"https://h", "https://h/"},
		{"https://h?q", "https://h/?q"},
		{"https://h/?", "https://h/?"},
		{"https://h/p?a=%7e&b=%2f", "https://h/p?a=~&b=%2F"},
		{"https://user:Pw%7e@H/", "https://user:Pw~@h/"},
		// IP literals.
		{"https://[2001:DB8::0001]:443/", "https://[2001:db8::1]/"},
		{"https://[v1F.ABC:x]/", "https://[v1f.abc:x]/"},
		{"https://192.0.2.1:8080/a", "https://192.0.2.1:8080/a"},
		// Other schemes: no default port, opaque paths untouched.
		{"URN:OPES:svc", "urn:OPES:svc"},
		{"urn:a/../b", "urn:a/../b"},
		{"foo:/a/./b", "foo:/a/b"},
		{"ftp://h:21", "ftp://h:21"},
		{"file:///etc/x", "file:///etc/x"},
		{"mailto:postmaster@example.org", "mailto:postmaster@example.org"},
	}
	for _, c := range cases {
		got, err := NormalizeURI(c.in)
		if err != nil {
			t.Errorf("NormalizeURI(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("NormalizeURI(%q) = %q, want %q", c.in, got, c.want)
		}
		again, err := NormalizeURI(got)
		if err != nil || again != got {
			t.Errorf("NormalizeURI(%q) = %q, %v: not idempotent", got, again, err)
		}
	}
}

func TestNormalizeURIRejects(t *testing.T) {
	cases := []struct{ in, why string }{
		{"", "empty uri"},
		{"/opes/svc/av", "not an absolute uri"},
		{"//mx1.example.net/opes/", "not an absolute uri"},
		{"svc/av", "not an absolute uri"},
		{"1http://h/", "bad uri scheme"},
		{"https://h/#frag", "fragment"},
		{"https://h/é", "non-ASCII"},
		{"https://bücher.example/", "non-ASCII"},
		{"https://h/a b", "whitespace"},
		{"https://h/a\tb", "whitespace"},
		{"https://h/a\r\nBcc: x", "whitespace"},
		{"https://h/a\x00b", "control octet"},
		{"https://h/a\x7f", "control octet"},
		{"https://h/<x>", "offset"},
		{"https://h/a\"b", "offset"},
		{"https://h/a%2", "percent-encoding"},
		{"https://h/a%zz", "percent-encoding"},
		{"https:/h/x", "without a host"},
		{"https:h", "without a host"},
		{"https:///x", "empty host"},
		{"https://h:x/", "not a number"},
		{"https://h:65536/", "out of range"},
		{"https://h:1000000/", "out of range"},
		{"https://a@b@h/", "userinfo"},
		{"https://h:1:2/", "host"},
		{"https://[::1/", "without ']'"},
		{"https://[zz]/", "IPv6"},
		{"https://[192.0.2.1]/", "IPv6"},
		{"https://[fe80::1%25eth0]/", "IPv6"},
		{"https://[::1]x/", "after the ip-literal"},
		{"https://[v.x]/", "IPvFuture"},
		{"https://h/[x]", "path"},
		{"https://h/?[x]", "query"},
		{"foo:/.//x", "without an authority"},
		{"https://h/" + strings.Repeat("a", MaxURILen), "longer than"},
		{"https://h/" + strings.Repeat("%41", MaxURILen), "longer than"},
	}
	for _, c := range cases {
		got, err := NormalizeURI(c.in)
		if err == nil {
			t.Errorf("NormalizeURI(%q) = %q, want an error about %q", c.in, got, c.why)
			continue
		}
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("NormalizeURI(%q): error %q does not mention %q", c.in, err, c.why)
		}
	}
}

// A percent-encoded URI that decodes to fit is accepted: the raw bound is
// three times MaxURILen.
func TestNormalizeURIDecodedLength(t *testing.T) {
	in := "https://h/" + strings.Repeat("%41", (MaxURILen-len("https://h/"))) // decodes to MaxURILen
	got, err := NormalizeURI(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxURILen {
		t.Fatalf("len = %d, want %d", len(got), MaxURILen)
	}
}

func BenchmarkNormalizeURI(b *testing.B) {
	for b.Loop() {
		if _, err := NormalizeURI("HTTPS://MX1.Example.NET:443/opes/./svc/%7Eav"); err != nil {
			b.Fatal(err)
		}
	}
}
