package reroute

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Entry is what a directory says about one address.
type Entry struct {
	// Address is the address mail for the looked-up one goes to; "" keeps
	// the address.
	Address string
	// NextHop is the host the mail should be relayed to; "" leaves the
	// routing to the MTA.
	NextHop string
}

// Directory answers lookups for envelope recipients. found is false when
// the directory has no entry for addr; an error means it could not answer
// (down, timed out, ambiguous or invalid data), and the mail must wait.
type Directory interface {
	Lookup(ctx context.Context, addr string) (e Entry, found bool, err error)
}

// Decision is the resolved outcome for one recipient.
type Decision struct {
	Known   bool   // some directory had an entry for the recipient
	Address string // new address, "" when unchanged
	NextHop string // "" when the MTA routes as usual
}

// errLoop and errTooDeep are the directory inconsistencies resolve finds;
// they are errors, never a guess, because a guess could deliver mail to
// the wrong mailbox.
var (
	errLoop    = errors.New("rewrites loop")
	errTooDeep = errors.New("too many chained rewrites")
)

// resolve looks addr up in dirs (first that knows it wins) and follows
// rewrites: an address rewritten to one that has its own entry is looked
// up again, at most maxHops times, so that a chain a → b → c ends at c and
// a loop a → b → a is an error instead of mail going round in circles.
// The next hop is the one of the last entry in the chain that names one.
func resolve(ctx context.Context, dirs []Directory, addr string, maxHops int) (Decision, error) {
	var d Decision
	cur := addr
	chain := []string{addr}
	for hops := 0; ; hops++ {
		e, found, err := lookupFirst(ctx, dirs, cur)
		if err != nil {
			return Decision{}, err
		}
		if !found {
			break
		}
		d.Known = true
		if e.NextHop != "" {
			if err := checkNextHop(e.NextHop); err != nil {
				return Decision{}, fmt.Errorf("next hop for %s: %w", cur, err)
			}
			d.NextHop = e.NextHop
		}
		if e.Address == "" || strings.EqualFold(e.Address, cur) {
			break
		}
		if err := checkAddress(e.Address); err != nil {
			return Decision{}, fmt.Errorf("new address for %s: %w", cur, err)
		}
		for _, seen := range chain {
			if strings.EqualFold(seen, e.Address) {
				return Decision{}, fmt.Errorf("%w: %s → %s", errLoop, strings.Join(chain, " → "), e.Address)
			}
		}
		if hops == maxHops {
			return Decision{}, fmt.Errorf("%w (more than %d): %s → %s", errTooDeep, maxHops, strings.Join(chain, " → "), e.Address)
		}
		chain = append(chain, e.Address)
		cur = e.Address
	}
	if !strings.EqualFold(cur, addr) {
		d.Address = cur
	}
	return d, nil
}

func lookupFirst(ctx context.Context, dirs []Directory, addr string) (Entry, bool, error) {
	for _, dir := range dirs {
		e, found, err := dir.Lookup(ctx, addr)
		if err != nil || found {
			return e, found, err
		}
	}
	return Entry{}, false, nil
}

// maxAddress is RFC 5321's limit on a path (256 octets with the angle
// brackets).
const maxAddress = 254

// checkAddress accepts what the service may put into the envelope and the
// header: local@domain with a dot-atom local part and a host name or
// address literal. Quoted local parts and non-ASCII are refused: they
// would need SMTPUTF8 or quoting that a directory value should not carry.
func checkAddress(a string) error {
	if a == "" {
		return errors.New("empty address")
	}
	if len(a) > maxAddress {
		return fmt.Errorf("address longer than %d octets", maxAddress)
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return fmt.Errorf("%q is not local@domain", a)
	}
	local, domain := a[:at], a[at+1:]
	if len(local) > 64 {
		return fmt.Errorf("%q: local part longer than 64 octets", a)
	}
	if strings.HasPrefix(local, ".") || strings.HasSuffix(local, ".") || strings.Contains(local, "..") {
		return fmt.Errorf("%q: local part is not a dot-atom", a)
	}
	for i := 0; i < len(local); i++ {
		if !isAtext(local[i]) && local[i] != '.' {
			return fmt.Errorf("%q: local part contains byte 0x%02x", a, local[i])
		}
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") {
			return fmt.Errorf("%q: unbalanced address literal", a)
		}
		lit := strings.TrimPrefix(domain[1:len(domain)-1], "IPv6:")
		if _, err := netip.ParseAddr(lit); err != nil {
			return fmt.Errorf("%q: bad address literal", a)
		}
		return nil
	}
	if err := checkHostname(domain); err != nil {
		return fmt.Errorf("%q: %w", a, err)
	}
	return nil
}

// isAtext is RFC 5322 atext (ASCII only).
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// checkHostname accepts letters-digits-hyphen labels separated by dots,
// which also covers dotted IPv4 addresses.
func checkHostname(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("host name %q is empty or longer than 253 octets", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host name %q has an empty or overlong label", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has a label starting or ending with '-'", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q contains byte 0x%02x", h, c)
			}
		}
	}
	return nil
}

// checkNextHop accepts "host" or "host:port": what the Postfix recipe
// puts between the brackets of smtp:[host]:port. Anything else could
// inject text into the MTA's routing decision.
func checkNextHop(h string) error {
	host, port, hasPort := strings.Cut(h, ":")
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '0' || port[0] == '+' {
			return fmt.Errorf("next hop %q: port is not a number in 1-65535", h)
		}
	}
	return checkHostname(host)
}

// normalizeNextHop turns the forms a directory may hold ("[host]",
// "[host]:port", "host", "host:port") into "host" or "host:port".
func normalizeNextHop(v string) (string, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return "", fmt.Errorf("next hop %q: missing ']'", v)
		}
		rest := v[end+1:]
		if rest != "" && !strings.HasPrefix(rest, ":") {
			return "", fmt.Errorf("next hop %q: text after ']'", v)
		}
		v = v[1:end] + rest
	}
	if err := checkNextHop(v); err != nil {
		return "", err
	}
	return strings.ToLower(v), nil
}
