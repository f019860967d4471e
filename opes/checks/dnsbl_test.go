package checks

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReverseName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"203.0.113.5", "5.113.0.203"},
		{"::ffff:203.0.113.5", "5.113.0.203"},
		{"2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
	}
	for _, tt := range tests {
		if got := reverseName(unmap(netip.MustParseAddr(tt.in))); got != tt.want {
			t.Errorf("reverseName(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

const v6Reverse = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"

func testZones() map[string]zoneReply {
	return map[string]zoneReply{
		"bl.example": {a: map[string][4]byte{
			"5.113.0.203.bl.example":  {127, 0, 0, 2},
			v6Reverse + ".bl.example": {127, 0, 0, 4},
			"9.113.0.203.bl.example":  {127, 255, 255, 254}, // "query refused"
			"10.113.0.203.bl.example": {198, 51, 100, 80},   // hijacking resolver
			"7.113.0.203.bl.example":  {127, 0, 0, 10},
		}},
		"second.example": {a: map[string][4]byte{"7.113.0.203.second.example": {127, 0, 0, 3}}},
		"clean.example":  {a: map[string][4]byte{}},
		"dead.example":   {silent: true},
		"broken.example": {servfail: true},
	}
}

func TestDNSBL(t *testing.T) {
	srv := startDNS(t, testZones())
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name   string
		zones  []string
		client string
		want   []string
		status string
	}{
		{"listed v4", []string{"bl.example"}, "203.0.113.5", []string{"dnsbl=bl.example"}, ""},
		{"listed v4-mapped", []string{"bl.example"}, "::ffff:203.0.113.5", []string{"dnsbl=bl.example"}, ""},
		{"listed v6", []string{"bl.example"}, "2001:db8::1", []string{"dnsbl=bl.example"}, ""},
		{"not listed", []string{"bl.example"}, "203.0.113.6", nil, ""},
		{"refused-query code is no listing", []string{"bl.example"}, "203.0.113.9", nil, "failed"},
		{"non-127 answer is no listing", []string{"bl.example"}, "203.0.113.10", nil, "failed"},
		{"zone never answers", []string{"dead.example"}, "203.0.113.5", nil, "timeout"},
		{"servfail", []string{"broken.example"}, "203.0.113.5", nil, "failed"},
		{"timeout and servfail", []string{"dead.example", "broken.example"}, "203.0.113.5", nil, "failed"},
		{"one dead one listed", []string{"dead.example", "bl.example"}, "203.0.113.5", []string{"dnsbl=bl.example"}, ""},
		{"two zones one listed", []string{"clean.example", "bl.example"}, "203.0.113.5", []string{"dnsbl=bl.example"}, ""},
		{"two zones both listed", []string{"second.example", "bl.example"}, "203.0.113.7", []string{"dnsbl=second.example", "dnsbl=bl.example"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := newDNSBL(options{DNSBL: tt.zones, Resolver: srv.addr, Timeout: timeout.String()})
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			found, status := d.check(context.Background(), netip.MustParseAddr(tt.client))
			// Parallel lookups: the whole check takes one timeout, not one per zone.
			if took := time.Since(began); took > timeout+time.Second {
				t.Errorf("check took %v, timeout %v", took, timeout)
			}
			var names []string
			for _, f := range found {
				names = append(names, f.Name)
				if want := "Client listed in " + strings.TrimPrefix(f.Name, "dnsbl="); f.Text != want {
					t.Errorf("text %q, want %q", f.Text, want)
				}
			}
			if !reflect.DeepEqual(names, tt.want) || status != tt.status {
				t.Errorf("check = %q, status %q; want %q, status %q", names, status, tt.want, tt.status)
			}
		})
	}
	for _, q := range srv.queries() {
		if !strings.HasSuffix(q, ".example") {
			t.Errorf("unexpected query %q", q)
		}
	}
}

// TestDNSBLContext: the SMTP session's deadline also ends the lookups.
func TestDNSBLContext(t *testing.T) {
	srv := startDNS(t, testZones())
	d, err := newDNSBL(options{DNSBL: []string{"dead.example"}, Resolver: srv.addr, Timeout: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	found, status := d.check(ctx, netip.MustParseAddr("203.0.113.5"))
	if took := time.Since(began); took > 2*time.Second || found != nil || status != "timeout" {
		t.Errorf("check = %v, %q after %v; want nothing, timeout, soon", found, status, took)
	}
}
