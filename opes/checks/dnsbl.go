package checks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// dnsbl looks the client address up in DNS block lists. Lookups go to
// the configured resolver only, never to the system's: the daemon may run
// sandboxed without a usable resolv.conf, a public forwarder is refused
// by the big lists (Spamhaus answers 127.255.255.x), and every query
// discloses a client address, so where it goes must be the operator's
// explicit choice.
type dnsbl struct {
	zones    []string
	resolver *net.Resolver
	timeout  time.Duration
}

func newDNSBL(o options) (*dnsbl, error) {
	if len(o.DNSBL) > maxZones {
		return nil, opes.FieldErrorf("dnsbl", "more than %d zones", maxZones)
	}
	d := &dnsbl{timeout: DefaultTimeout}
	seen := map[string]bool{}
	for i, z := range o.DNSBL {
		n, ok := normalizeDomain(strings.TrimSpace(z))
		// 64 octets of IPv6 nibbles plus the zone must fit in 253.
		if !ok || len(n) > 253-64 {
			return nil, opes.FieldErrorf(fmt.Sprintf("dnsbl[%d]", i+1), "%q is not a valid zone name of at most %d octets", z, 253-64)
		}
		if seen[n] {
			return nil, opes.FieldErrorf(fmt.Sprintf("dnsbl[%d]", i+1), "zone %q listed twice", n)
		}
		seen[n] = true
		d.zones = append(d.zones, n)
	}
	if strings.TrimSpace(o.Resolver) == "" {
		return nil, opes.FieldErrorf("resolver", "is required with dnsbl: the system resolver is never used implicitly")
	}
	server, err := parseResolver(o.Resolver)
	if err != nil {
		return nil, &opes.FieldError{Field: "resolver", Err: err}
	}
	if o.Timeout != "" {
		t, err := time.ParseDuration(strings.TrimSpace(o.Timeout))
		if err != nil || t <= 0 || t > maxTimeout {
			return nil, opes.FieldErrorf("timeout", "%q is not a duration between 0 and %v", o.Timeout, maxTimeout)
		}
		d.timeout = t
	}
	addr := server.String()
	d.resolver = &net.Resolver{
		PreferGo: true,
		// The Go resolver would ask the servers of resolv.conf; every
		// query goes to the configured one instead.
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, addr)
		},
	}
	return d, nil
}

// parseResolver accepts "IP", "IP:port" and "[IPv6]:port". A host name
// is refused: resolving it would need the system resolver.
func parseResolver(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("%q: port 0", s)
		}
		return ap, nil
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil && a.Zone() == "" {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("%q is not IP or IP:port (a host name would need the system resolver)", s)
}

// Outcomes of one zone lookup.
type lookup uint8

const (
	notListed lookup = iota
	listed
	timedOut
	failed // SERVFAIL, refused, or an answer outside 127.0.0.0/24
)

// check looks addr up in every zone in parallel and returns a finding per
// listing zone, in configuration order. A zone that fails counts as not
// listed. status is "timeout" when every zone timed out, "failed" when
// every zone failed and not all by timeout, "" otherwise.
func (d *dnsbl) check(ctx context.Context, addr netip.Addr) (found []Finding, status string) {
	name := reverseName(unmap(addr))
	res := make([]lookup, len(d.zones))
	var wg sync.WaitGroup
	for i, z := range d.zones {
		wg.Go(func() { res[i] = d.lookup(ctx, name+"."+z+".") })
	}
	wg.Wait()
	timeouts, failures := 0, 0
	for i, r := range res {
		switch r {
		case listed:
			found = append(found, Finding{Name: "dnsbl=" + d.zones[i], Text: "Client listed in " + d.zones[i]})
		case timedOut:
			timeouts++
		case failed:
			failures++
		}
	}
	switch {
	case timeouts == len(res):
		status = "timeout"
	case timeouts+failures == len(res):
		status = "failed"
	}
	return found, status
}

func (d *dnsbl) lookup(ctx context.Context, name string) lookup {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	ips, err := d.resolver.LookupNetIP(ctx, "ip4", name)
	if err != nil {
		var de *net.DNSError
		switch {
		case errors.As(err, &de) && de.IsNotFound:
			return notListed
		case errors.As(err, &de) && de.IsTimeout, errors.Is(err, context.DeadlineExceeded):
			return timedOut
		}
		return failed
	}
	// Lists answer 127.0.0.x. Anything else is not a listing: Spamhaus
	// signals a refused query with 127.255.255.x, and a hijacking
	// resolver answers NXDOMAIN with its own web server.
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() && ip.As4()[0] == 127 && ip.As4()[1] == 0 && ip.As4()[2] == 0 {
			return listed
		}
	}
	return failed
}

// reverseName is the DNSBL form of addr: the IPv4 octets reversed
// ("5.113.0.203"), or the 32 IPv6 nibbles reversed (RFC 5782 §2.4).
func reverseName(addr netip.Addr) string {
	var b strings.Builder
	if addr.Is4() {
		a := addr.As4()
		for i := 3; i >= 0; i-- {
			b.WriteString(strconv.Itoa(int(a[i])))
			if i > 0 {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	const hex = "0123456789abcdef"
	a := addr.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[a[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[a[i]>>4])
		if i > 0 {
			b.WriteByte('.')
		}
	}
	return b.String()
}
