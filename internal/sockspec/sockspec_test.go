package sockspec

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		spec, network, address string
	}{
		{"inet:10028@127.0.0.1", "tcp4", "127.0.0.1:10028"},
		{"inet:10028@localhost", "tcp4", "localhost:10028"},
		{"inet:10028@mx1.example.net.", "tcp4", "mx1.example.net.:10028"},
		{"INET:10028@0.0.0.0", "tcp4", "0.0.0.0:10028"},
		{"inet:10028", "tcp4", "127.0.0.1:10028"},
		{"inet:00025@10.0.0.1", "tcp4", "10.0.0.1:25"},
		{"inet:127.0.0.1:10028", "tcp4", "127.0.0.1:10028"},
		{"inet:localhost:10028", "tcp4", "localhost:10028"},
		{"inet:[::1]:10028", "tcp6", "[::1]:10028"},
		{"inet:10028@::ffff:127.0.0.1", "tcp4", "127.0.0.1:10028"},
		{"inet6:10028@[::1]", "tcp6", "[::1]:10028"},
		{"inet6:10028@::1", "tcp6", "[::1]:10028"},
		{"inet6:10028@[2001:db8::25]", "tcp6", "[2001:db8::25]:10028"},
		{"inet6:10028@fe80::1%eth0", "tcp6", "[fe80::1%eth0]:10028"},
		{"inet6:10028@ip6-localhost", "tcp6", "ip6-localhost:10028"},
		{"inet6:10028", "tcp6", "[::1]:10028"},
		{"inet6:65535@[::]", "tcp6", "[::]:65535"},
		{"unix:/run/opes-milter/milter.sock", "unix", "/run/opes-milter/milter.sock"},
		{"local:/var/spool/postfix/opes/milter", "unix", "/var/spool/postfix/opes/milter"},
		{"/run/milter.sock", "unix", "/run/milter.sock"},
	}
	for _, tt := range tests {
		n, a, err := Parse(tt.spec)
		if err != nil || n != tt.network || a != tt.address {
			t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q", tt.spec, n, a, err, tt.network, tt.address)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		spec, err string
	}{
		{"", "empty socket specification"},
		{"10028", "missing protocol"},
		{"tcp:10028@127.0.0.1", `unknown protocol "tcp"`},
		{"inet:", "missing port"},
		{"inet:@127.0.0.1", "missing port"},
		{"inet:10028@", "missing host after '@'"},
		{"inet::10028", "missing host before ':'"},
		{"inet:localhost:", "missing port"},
		{"inet:0@127.0.0.1", "port 0 out of range"},
		{"inet:65536@127.0.0.1", "port 65536 out of range"},
		{"inet:99999999999999999999@127.0.0.1", "out of range"},
		{"inet:-1@127.0.0.1", `port "-1" is not a number`},
		{"inet:smtp@127.0.0.1", `port "smtp" is not a number`},
		{"inet: 10028@127.0.0.1", "is not a number"},
		{"inet:10028@::1", "needs inet6"},
		{"inet:10028@bad_host", "bad host name"},
		{"inet:10028@-bad.example", "bad host name"},
		{"inet:10028@a..b", "bad host name"},
		{"inet:10028@" + strings.Repeat("a", 64) + ".example", "bad host name"},
		{"inet:10028@" + strings.Repeat("a.", 127) + "bc", "longer than 253"},
		{"inet:[::1:10028", "unterminated '['"},
		{"inet:[127.0.0.1]:10028", "bad IPv6 address"},
		{"inet6:10028@", "missing host after '@'"},
		{"inet6:10028@[::1", "unterminated '['"},
		{"inet6:10028@[zz::1]", "bad IPv6 address"},
		{"inet6:10028@1::2::3", "bad IPv6 address"},
		{"inet6:@[::1]", "missing port"},
		{"unix:", "missing socket path"},
		{"unix:milter.sock", "is not absolute"},
		{"local:./milter.sock", "is not absolute"},
		{"unix:/run/", "names a directory"},
		{"unix:/" + strings.Repeat("x", 200), "longer than 107"},
		{"unix:/run/a\x00b", "control character 0x00"},
		{"inet:10028@host\nname", "control character 0x0a"},
	}
	for _, tt := range tests {
		n, a, err := Parse(tt.spec)
		if err == nil {
			t.Errorf("Parse(%q) = %q, %q; want error containing %q", tt.spec, n, a, tt.err)
			continue
		}
		if !strings.Contains(err.Error(), tt.err) {
			t.Errorf("Parse(%q) error = %q; want it to contain %q", tt.spec, err, tt.err)
		}
		if !strings.HasPrefix(err.Error(), "socket ") {
			t.Errorf("Parse(%q) error = %q; want it to name the socket", tt.spec, err)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		spec string
		want bool
	}{
		{"inet:10028", true},
		{"inet:10028@127.0.0.1", true},
		{"inet:10028@127.9.9.9", true},
		{"inet:10028@localhost", true},
		{"inet:10028@LOCALHOST.", true},
		{"inet:localhost:10028", true},
		{"inet6:10028", true},
		{"inet6:10028@[::1]", true},
		{"unix:/run/milter.sock", true},
		{"local:/run/milter.sock", true},
		{"inet:10028@0.0.0.0", false},
		{"inet:10028@192.0.2.1", false},
		{"inet:10028@mx1.example.net", false},
		{"inet6:10028@[::]", false},
		{"inet6:10028@[2001:db8::1]", false},
		{"inet:0@127.0.0.1", false},
		{"garbage", false},
	}
	for _, tt := range tests {
		if got := IsLoopback(tt.spec); got != tt.want {
			t.Errorf("IsLoopback(%q) = %v; want %v", tt.spec, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"inet:10028@127.0.0.1", "inet6:1@[::1]", "unix:/x", "inet:h:1", "inet:[::1]:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		n, a, err := Parse(spec)
		if err != nil {
			return
		}
		switch n {
		case "tcp4", "tcp6", "unix":
		default:
			t.Fatalf("Parse(%q) network %q", spec, n)
		}
		if a == "" {
			t.Fatalf("Parse(%q) empty address", spec)
		}
	})
}
