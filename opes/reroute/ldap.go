package reroute

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// LDAPConfig configures an LDAP directory.
type LDAPConfig struct {
	URL          string // ldap://host[:port], ldaps://host[:port] or ldapi://
	StartTLS     bool   // upgrade an ldap:// connection before binding
	TLS          *tls.Config
	BindDN       string // "" = anonymous
	BindPassword string
	BaseDN       string
	Scope        int // ldap.ScopeWholeSubtree (default), ScopeSingleLevel, ScopeBaseObject
	// Filter is the search filter with %s where the address goes, e.g.
	// "(mail=%s)"; the address is escaped as RFC 4515 requires.
	Filter         string
	AddressAttr    string // attribute holding the new address, e.g. mailRoutingAddress
	NextHopAttr    string // attribute holding the next hop, e.g. mailHost
	Timeout        time.Duration
	MaxConnections int
	// IdleTimeout closes a pooled connection unused for that long, so the
	// pool of a policy replaced at SIGHUP closes on its own.
	IdleTimeout time.Duration
}

// LDAPDirectory looks recipients up in an LDAP server. Connections are
// bound once and reused; at most MaxConnections are open at a time.
type LDAPDirectory struct {
	cfg   LDAPConfig
	slots chan struct{} // one token per open or opening connection

	mu   sync.Mutex
	idle []*pooledConn
}

type pooledConn struct {
	c     *ldap.Conn
	timer *time.Timer // closes the connection when idle too long
}

// NewLDAPDirectory checks cfg; it does not connect, so a policy reload
// does not wait for (or fail on) a server that is down: lookups do.
func NewLDAPDirectory(cfg LDAPConfig) (*LDAPDirectory, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 4
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Minute
	}
	if strings.Count(cfg.Filter, "%s") == 0 {
		return nil, errors.New("filter: must contain %s where the address goes, e.g. \"(mail=%s)\"")
	}
	if _, err := ldap.CompileFilter(buildFilter(cfg.Filter, "joe@example.org")); err != nil {
		return nil, fmt.Errorf("filter: %q is not an LDAP filter: %v", cfg.Filter, err)
	}
	if cfg.AddressAttr == "" && cfg.NextHopAttr == "" {
		return nil, errors.New("address_attribute or next_hop_attribute is required")
	}
	return &LDAPDirectory{cfg: cfg, slots: make(chan struct{}, cfg.MaxConnections)}, nil
}

// buildFilter puts the escaped address into the template. ReplaceAll, not
// Sprintf: a '%' elsewhere in a configured filter is not a verb.
func buildFilter(template, addr string) string {
	return strings.ReplaceAll(template, "%s", ldap.EscapeFilter(addr))
}

// Lookup implements Directory. More than one matching entry, or more than
// one value of an attribute, is an error: the directory does not say
// where the mail goes, and guessing could deliver it to the wrong place.
func (d *LDAPDirectory) Lookup(ctx context.Context, addr string) (Entry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	var attrs []string
	for _, a := range []string{d.cfg.AddressAttr, d.cfg.NextHopAttr} {
		if a != "" {
			attrs = append(attrs, a)
		}
	}
	req := ldap.NewSearchRequest(d.cfg.BaseDN, d.cfg.Scope, ldap.NeverDerefAliases,
		2, int((d.cfg.Timeout+time.Second-1)/time.Second), false, buildFilter(d.cfg.Filter, addr), attrs, nil)
	var res *ldap.SearchResult
	// A pooled connection may have been closed by the server since its
	// last use; one retry on a new connection tells that from an outage.
	for attempt := 0; ; attempt++ {
		pc, reused, err := d.get(ctx)
		if err != nil {
			return Entry{}, false, err
		}
		res, err = d.search(ctx, pc, req)
		if err == nil {
			d.put(pc, true)
			break
		}
		healthy := ldap.IsErrorAnyOf(err, ldap.LDAPResultSizeLimitExceeded, ldap.LDAPResultNoSuchObject)
		d.put(pc, healthy)
		if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
			return Entry{}, false, errors.New("ldap: more than one entry matches the address")
		}
		if ctx.Err() == nil && reused && attempt == 0 && !healthy {
			continue
		}
		if ctx.Err() != nil {
			return Entry{}, false, fmt.Errorf("ldap: search: %w (%w)", ctx.Err(), err)
		}
		return Entry{}, false, fmt.Errorf("ldap: search: %w", err)
	}
	switch len(res.Entries) {
	case 0:
		return Entry{}, false, nil
	case 1:
	default:
		return Entry{}, false, errors.New("ldap: more than one entry matches the address")
	}
	ent := res.Entries[0]
	var e Entry
	if d.cfg.AddressAttr != "" {
		v, err := single(ent, d.cfg.AddressAttr)
		if err != nil {
			return Entry{}, false, err
		}
		if v != "" {
			if err := checkAddress(v); err != nil {
				return Entry{}, false, fmt.Errorf("ldap: %s of %s: %w", d.cfg.AddressAttr, ent.DN, err)
			}
		}
		e.Address = v
	}
	if d.cfg.NextHopAttr != "" {
		v, err := single(ent, d.cfg.NextHopAttr)
		if err != nil {
			return Entry{}, false, err
		}
		if v != "" {
			if e.NextHop, err = normalizeNextHop(v); err != nil {
				return Entry{}, false, fmt.Errorf("ldap: %s of %s: %w", d.cfg.NextHopAttr, ent.DN, err)
			}
		}
	}
	return e, true, nil
}

func single(ent *ldap.Entry, attr string) (string, error) {
	vs := ent.GetEqualFoldAttributeValues(attr)
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return strings.TrimSpace(vs[0]), nil
	}
	return "", fmt.Errorf("ldap: %s of %s has %d values", attr, ent.DN, len(vs))
}

// search runs req; cancelling ctx closes the connection, which ends the
// request at once (go-ldap's Search takes no context).
func (d *LDAPDirectory) search(ctx context.Context, pc *pooledConn, req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	dl, _ := ctx.Deadline()
	pc.c.SetTimeout(time.Until(dl))
	stop := context.AfterFunc(ctx, func() { _ = pc.c.Close() })
	defer stop()
	return pc.c.Search(req)
}

// get returns an idle connection, or dials and binds a new one when all
// are busy and the pool has room; it waits for a free slot otherwise.
func (d *LDAPDirectory) get(ctx context.Context) (pc *pooledConn, reused bool, err error) {
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("ldap: wait for a connection: %w", ctx.Err())
	}
	d.mu.Lock()
	for len(d.idle) > 0 {
		pc = d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if pc.timer.Stop() && !pc.c.IsClosing() {
			d.mu.Unlock()
			return pc, true, nil
		}
		_ = pc.c.Close()
	}
	d.mu.Unlock()
	c, err := d.dial(ctx)
	if err != nil {
		<-d.slots
		return nil, false, err
	}
	return &pooledConn{c: c}, false, nil
}

// put returns a connection to the pool, or closes it when it is broken.
func (d *LDAPDirectory) put(pc *pooledConn, ok bool) {
	defer func() { <-d.slots }()
	if !ok || pc.c.IsClosing() {
		_ = pc.c.Close()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pc.timer = time.AfterFunc(d.cfg.IdleTimeout, func() {
		d.mu.Lock()
		for i, p := range d.idle {
			if p == pc {
				d.idle = append(d.idle[:i], d.idle[i+1:]...)
				break
			}
		}
		d.mu.Unlock()
		_ = pc.c.Close()
	})
	d.idle = append(d.idle, pc)
}

func (d *LDAPDirectory) dial(ctx context.Context) (*ldap.Conn, error) {
	dl, _ := ctx.Deadline()
	opts := []ldap.DialOpt{ldap.DialWithDialer(&net.Dialer{Deadline: dl})}
	if d.cfg.TLS != nil {
		opts = append(opts, ldap.DialWithTLSConfig(d.cfg.TLS))
	}
	c, err := ldap.DialURL(d.cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("ldap: connect %s: %w", redactURL(d.cfg.URL), err)
	}
	c.SetTimeout(time.Until(dl))
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	if d.cfg.StartTLS {
		tc := d.cfg.TLS
		if tc == nil {
			tc = &tls.Config{}
		}
		if tc.ServerName == "" {
			tc = tc.Clone()
			if u, err := url.Parse(d.cfg.URL); err == nil {
				tc.ServerName = u.Hostname()
			}
		}
		if err := c.StartTLS(tc); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("ldap: StartTLS with %s: %w", redactURL(d.cfg.URL), err)
		}
	}
	if d.cfg.BindDN != "" {
		if err := c.Bind(d.cfg.BindDN, d.cfg.BindPassword); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("ldap: bind as %q: %w", d.cfg.BindDN, err)
		}
	}
	if ctx.Err() != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ldap: connect %s: %w", redactURL(d.cfg.URL), ctx.Err())
	}
	return c, nil
}

// redactURL drops user information, should an operator put it there.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User = nil
	return u.String()
}

// Close ends every idle connection.
func (d *LDAPDirectory) Close() {
	d.mu.Lock()
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	for _, pc := range idle {
		pc.timer.Stop()
		_ = pc.c.Close()
	}
}
