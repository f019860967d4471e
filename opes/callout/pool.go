package callout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/opes/ocp"
)

// ErrBreakerOpen is returned when every server is skipped because its
// breaker is open.
var ErrBreakerOpen = errors.New("callout: every server is failing (breaker open)")

// maxIdle ends a pooled connection that carried no transaction for that
// long: the pool of a replaced policy's service dies on its own.
const maxIdle = 10 * time.Minute

// maxTxPerConn is how many transactions share one connection before the
// pool opens another (up to max_connections).
const maxTxPerConn = 16

// server is one callout server address with its connection pool and
// breaker.
type server struct {
	s    *Service
	addr string
	host string

	mu        sync.Mutex
	conns     []*conn
	dialing   int
	failures  int       // consecutive
	openUntil time.Time // breaker open until then
	tripped   bool      // opened and not succeeded since: one failure re-opens it
}

// conn is one OCP connection with its service group and the profile the
// server accepted for it.
type conn struct {
	c       *ocp.Client
	sg      uint32
	profile ocp.Profile
}

func newServer(s *Service, addr, host string) *server { return &server{s: s, addr: addr, host: host} }

// begin starts an OCP transaction on the first server that works, in
// configuration order.
func (s *Service) begin(ctx context.Context) (*server, *conn, *ocp.ClientTx, error) {
	var errs []error
	skipped := 0
	var err error
	for _, srv := range s.servers {
		if !srv.available() {
			skipped++
			continue
		}
		// A pooled connection may end between the check and the TS (the
		// server's idle timeout, our own MaxIdle): one retry on a fresh
		// one keeps that race from failing a message.
		for try := 0; try < 2; try++ {
			var c *conn
			if c, err = srv.get(ctx); err != nil {
				break
			}
			var t *ocp.ClientTx
			if t, err = c.c.Begin(c.sg); err == nil {
				return srv, c, t, nil
			}
			if c.c.Usable() {
				break
			}
		}
		srv.failed(err)
		errs = append(errs, fmt.Errorf("%s: %w", srv.addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	if skipped == len(s.servers) {
		return nil, nil, nil, ErrBreakerOpen
	}
	return nil, nil, nil, fmt.Errorf("callout: no server available: %w", errors.Join(errs...))
}

func (srv *server) available() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return time.Now().After(srv.openUntil)
}

// failed counts a failure. Enough consecutive ones open the breaker for
// the cool-down; after it, the first call is a trial (half-open): if it
// fails too, the breaker opens again at once.
func (srv *server) failed(err error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.failures++
	if srv.failures >= srv.s.cfg.BreakFailures || srv.tripped {
		srv.openUntil = time.Now().Add(srv.s.cfg.CoolDown)
		srv.tripped = true
		srv.s.log.Warn("callout: server failing, breaker open", "server", srv.addr, "failures", srv.failures, "cool_down", srv.s.cfg.CoolDown, "err", err)
	}
}

func (srv *server) succeeded() {
	srv.mu.Lock()
	srv.failures, srv.tripped = 0, false
	srv.mu.Unlock()
}

// get returns the least busy usable connection, opening a new one when
// all are busy and the pool has room.
func (srv *server) get(ctx context.Context) (*conn, error) {
	srv.mu.Lock()
	live := srv.conns[:0]
	var best *conn
	bestLoad := 0
	for _, c := range srv.conns {
		if !c.c.Usable() {
			if c.c.Active() == 0 {
				c.c.Close(ocp.OK)
			}
			continue
		}
		live = append(live, c)
		if n := c.c.Active(); best == nil || n < bestLoad {
			best, bestLoad = c, n
		}
	}
	srv.conns = live
	if best != nil && (bestLoad < maxTxPerConn || len(srv.conns)+srv.dialing >= srv.s.cfg.MaxConnections) {
		srv.mu.Unlock()
		return best, nil
	}
	srv.dialing++
	srv.mu.Unlock()
	c, err := srv.dial(ctx)
	srv.mu.Lock()
	srv.dialing--
	if err == nil {
		srv.conns = append(srv.conns, c)
	}
	srv.mu.Unlock()
	return c, err
}

// dial connects, starts OCP, creates the service group and negotiates
// the OSMTP profile for it (RFC 4037 §6: the group-scoped offer is
// answered only after the server accepted the group).
func (srv *server) dial(ctx context.Context) (*conn, error) {
	cfg := srv.s.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", srv.addr)
	if err != nil {
		return nil, fmt.Errorf("callout: connect: %w", err)
	}
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = srv.host
		}
		t := tls.Client(nc, tc)
		if err := t.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("callout: TLS handshake: %w", err)
		}
		nc = t
	}
	client, _, err := ocp.NewClient(ctx, nc, ocp.ClientConfig{KeepAlive: cfg.KeepAlive, MaxIdle: maxIdle, Log: srv.s.log})
	if err != nil {
		return nil, err
	}
	sg, err := client.CreateGroup(ocp.List{&ocp.Struct{Anon: []ocp.Value{ocp.Atom(cfg.Service)}}})
	if err != nil {
		client.Close(ocp.Failure("service group"))
		return nil, err
	}
	nr, err := client.Negotiate(ctx, ocp.List{srv.s.offer.Feature()}, &sg)
	if err != nil {
		return nil, fmt.Errorf("callout: negotiate OSMTP for service %q: %w", cfg.Service, err)
	}
	if len(nr.Anon) == 0 {
		client.Close(ocp.Failure("OSMTP profile refused"))
		return nil, fmt.Errorf("callout: server refused the OSMTP profile for service %q", cfg.Service)
	}
	p, err := ocp.ParseProfile(nr.Anon[0])
	if err == nil {
		err = ocp.CheckNarrowed(srv.s.offer, p)
	}
	if err != nil {
		client.Close(ocp.Failure("invalid negotiation response"))
		return nil, fmt.Errorf("callout: negotiation response: %w", err)
	}
	srv.s.log.Debug("callout: connected", "server", srv.addr, "service", cfg.Service,
		"adaptive", p.Adaptive, "informative", p.Informative, "tls", cfg.TLS != nil)
	return &conn{c: client, sg: sg, profile: p}, nil
}

func (srv *server) closeAll() {
	srv.mu.Lock()
	conns := srv.conns
	srv.conns = nil
	srv.mu.Unlock()
	for _, c := range conns {
		c.c.Close(ocp.OK)
	}
}
