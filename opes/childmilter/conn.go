package childmilter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// deadlineConn bounds every read and write of the milter client by the
// deadline of the hook in progress. go-milter sets a fresh per-packet
// deadline before each packet (and clears it after), which cannot express
// "this whole hook — replay, header, body, answer — within eom_timeout",
// nor a context cancelled by the MTA going away; clamping each deadline it
// sets to the hook's limit does both.
type deadlineConn struct {
	net.Conn
	mu    sync.Mutex
	limit time.Time // zero: no limit
}

func (c *deadlineConn) clamp(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.limit.IsZero() && (t.IsZero() || t.After(c.limit)) {
		return c.limit
	}
	return t
}

func (c *deadlineConn) SetDeadline(t time.Time) error     { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *deadlineConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// bind limits I/O to ctx until the returned function is called: the
// deadline of ctx applies, and cancelling ctx interrupts a blocked read or
// write at once.
func (c *deadlineConn) bind(ctx context.Context) (unbind func()) {
	limit, _ := ctx.Deadline()
	c.setLimit(limit)
	stop := context.AfterFunc(ctx, func() {
		past := time.Unix(1, 0)
		c.setLimit(past)
		_ = c.Conn.SetDeadline(past)
	})
	return func() { stop() }
}

func (c *deadlineConn) setLimit(t time.Time) {
	c.mu.Lock()
	c.limit = t
	c.mu.Unlock()
	_ = c.Conn.SetDeadline(t)
}

// dialer opens the child connection for one session: go-milter's Dialer
// has no context, so the context of the hook that opens it is bound here.
type dialer struct {
	ctx     context.Context
	timeout time.Duration
	conn    *deadlineConn // the connection made, for later hooks
	unbind  func()        // releases conn from ctx once the session is open
}

func (d *dialer) Dial(network, address string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.timeout}
	c, err := nd.DialContext(d.ctx, network, address)
	if err != nil {
		return nil, err
	}
	d.conn = &deadlineConn{Conn: c}
	// The negotiation that follows at once belongs to the same hook.
	d.unbind = d.conn.bind(d.ctx)
	return d.conn, nil
}

// classify turns an I/O error into the error the hook returns: a timeout
// or a cancelled context wraps the context error, so the processor (and
// errors.Is) can tell "too slow" from "broken".
func classify(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w (%w)", what, ctx.Err(), err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s: %w (%w)", what, context.DeadlineExceeded, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
