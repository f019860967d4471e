package ocp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// ClientConfig configures the OPES processor's side of a connection.
type ClientConfig struct {
	Limits Limits
	// KeepAlive is the idle time after which the client sends PQ and
	// expects PA within the same time (RFC 4037 §2.7, RFC 3836 §3.7);
	// 0 disables keep-alive.
	KeepAlive time.Duration
	// MaxIdle closes the connection (CE 200) after it carried no
	// transaction for that long, so connections of a pool nobody uses any
	// more (a replaced policy) do not live on through keep-alive; 0 keeps
	// it open.
	MaxIdle time.Duration
	// WriteTimeout bounds one message write; default 30s.
	WriteTimeout time.Duration
	// Features are offered in the NO that must follow CS (§6.1); empty
	// sends "NO ();".
	Features List
	Log      *slog.Logger
}

// Client is the OPES processor's end of one OCP connection (the OCP
// client). It multiplexes transactions: each ClientTx receives the
// messages the callout server sends for its xid. A Client is safe for
// concurrent use.
type Client struct {
	w   *wire
	cfg ClientConfig
	log *slog.Logger

	mu       sync.Mutex
	txs      map[uint32]*ClientTx
	ended    recentlyEnded
	groups   map[uint32]bool
	nextXid  uint32
	nextSG   uint32
	pendNR   chan *Message // our outstanding NO, if any
	pendSG   *uint32
	pendPA   chan struct{} // our outstanding keep-alive PQ, if any
	lastRecv time.Time
	lastUsed time.Time // last transaction start or end
	err      error     // why the connection ended
	done     chan struct{}
	peerCS   chan struct{}
	broken   bool // a group was destroyed by the peer: no new transactions
	closing  bool // Close is under way: whatever ends the connection, we did
}

// NewClient starts OCP on an established transport: it sends CS and the
// mandatory NO, waits for the server's CS and NR, and returns the client
// with the NR (whose Value is the feature the server accepted, if any).
// On failure the transport is closed.
func NewClient(ctx context.Context, nc net.Conn, cfg ClientConfig) (*Client, *Message, error) {
	c := &Client{
		w: newWire(nc, cfg.Limits, cfg.WriteTimeout), cfg: cfg, log: cfg.Log,
		txs: map[uint32]*ClientTx{}, groups: map[uint32]bool{},
		done: make(chan struct{}), peerCS: make(chan struct{}), lastRecv: time.Now(), lastUsed: time.Now(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Features == nil {
		cfg.Features = List{}
	}
	go c.readLoop()
	if err := c.w.send(NewMessage(MsgCS)); err != nil {
		c.shutdown(err)
		return nil, nil, err
	}
	nr, err := c.negotiate(ctx, cfg.Features, nil)
	if err != nil {
		c.Close(Failure("negotiation failed"))
		return nil, nil, fmt.Errorf("ocp: connection start: %w", err)
	}
	select {
	case <-c.peerCS:
	default: // NR cannot come before the peer's CS: readLoop enforces it
	}
	if cfg.KeepAlive > 0 || cfg.MaxIdle > 0 {
		go c.keepAlive(cfg.KeepAlive, cfg.MaxIdle)
	}
	return c, nr, nil
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Usable reports whether new transactions may start on the connection.
func (c *Client) Usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.broken
}

// Active returns the number of open transactions.
func (c *Client) Active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.txs)
}

// Close ends the connection with CE and closes the transport. Open
// transactions fail with ErrClosed.
func (c *Client) Close(r Result) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	// The peer may close the transport as soon as it reads CE, before
	// shutdown below runs: the read loop must then report our close,
	// not the peer's.
	c.closing = true
	c.mu.Unlock()
	_ = c.w.send(NewMessage(MsgCE, r.Value()))
	c.shutdown(ErrClosed)
}

// shutdown records why the connection ended and releases everything.
func (c *Client) shutdown(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if c.closing {
		err = ErrClosed
	}
	c.err = err
	txs := c.txs
	c.txs = map[uint32]*ClientTx{}
	close(c.done)
	c.mu.Unlock()
	_ = c.w.nc.Close()
	for _, t := range txs {
		t.finish(err)
	}
}

// sendFailGrace bounds how long a failed write waits for the read loop
// to deliver what the peer said before it closed.
const sendFailGrace = 200 * time.Millisecond

// sendFailed ends the connection after a write failed and returns the
// reason it ended. A server that refuses something (an unknown service
// group) sends CE and closes; our next write then fails, but the CE the
// read loop is about to hand over, or already has, is the reason the
// caller needs, not the broken pipe.
func (c *Client) sendFailed(err error) error {
	t := time.NewTimer(sendFailGrace)
	select {
	case <-c.done:
	case <-t.C:
	}
	t.Stop()
	c.shutdown(err)
	return c.Err()
}

// fail ends the connection because the peer sent something invalid
// (RFC 4037 §5: connection scope, result 400).
func (c *Client) fail(err error) {
	c.log.Warn("ocp: invalid message from callout server; closing connection", "err", err)
	_ = c.w.send(NewMessage(MsgCE, Failure(reason(err)).Value()))
	c.shutdown(err)
}

// CreateGroup sends SGC for the given services (RFC 4037 §11.3) and
// returns the new group's id. OCP has no answer to SGC: a server that
// refuses the group ends the connection, which the next exchange shows.
func (c *Client) CreateGroup(services List) (uint32, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return 0, c.err
	}
	c.nextSG++
	sg := c.nextSG
	c.groups[sg] = true
	c.mu.Unlock()
	return sg, c.w.send(NewMessage(MsgSGC, UniAtom(sg), services))
}

// Negotiate sends NO with the features (in decreasing preference),
// scoped to group sg when sg is not nil, and waits for the NR. It returns
// the NR; its first anonymous value is the accepted feature, absent if
// none was. Only one offer may be outstanding per agent (§6.1).
func (c *Client) Negotiate(ctx context.Context, features List, sg *uint32) (*Message, error) {
	return c.negotiate(ctx, features, sg)
}

func (c *Client) negotiate(ctx context.Context, features List, sg *uint32) (*Message, error) {
	ch := make(chan *Message, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	if c.pendNR != nil {
		c.mu.Unlock()
		return nil, errors.New("ocp: a negotiation offer is already outstanding")
	}
	c.pendNR, c.pendSG = ch, sg
	c.mu.Unlock()
	no := NewMessage(MsgNO, features)
	if sg != nil {
		no.With("SG", UniAtom(*sg))
	}
	if err := c.w.send(no); err != nil {
		return nil, c.sendFailed(err)
	}
	select {
	case nr := <-ch:
		if err := checkNR(nr, features); err != nil {
			c.fail(err)
			return nil, err
		}
		return nr, nil
	case <-c.done:
		return nil, c.Err()
	case <-ctx.Done():
		c.Close(Failure("negotiation timeout"))
		return nil, fmt.Errorf("ocp: waiting for NR: %w", ctx.Err())
	}
}

// checkNR rejects a response that selects a feature that was not offered
// (§11.19).
func checkNR(nr *Message, offered List) error {
	if len(nr.Anon) == 0 {
		return nil
	}
	uri, err := featureURI(nr.Anon[0])
	if err != nil {
		return fmt.Errorf("ocp: NR: %w", err)
	}
	for _, f := range offered {
		if u, err := featureURI(f); err == nil && u == uri {
			return nil
		}
	}
	return fmt.Errorf("ocp: NR selects feature %q that was not offered", truncate(uri))
}

// Ping sends PQ and waits for PA: the keep-alive of §11.22.
func (c *Client) Ping(ctx context.Context) error {
	ch := make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	if c.pendPA != nil {
		c.mu.Unlock()
		return errors.New("ocp: a progress query is already outstanding")
	}
	c.pendPA = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.pendPA == ch {
			c.pendPA = nil
		}
		c.mu.Unlock()
	}()
	if err := c.w.send(NewMessage(MsgPQ)); err != nil {
		return c.sendFailed(err)
	}
	select {
	case <-ch:
		return nil
	case <-c.done:
		return c.Err()
	case <-ctx.Done():
		return fmt.Errorf("ocp: waiting for PA: %w", ctx.Err())
	}
}

// keepAlive probes an idle connection every `every` and closes one that
// carried no transaction for maxIdle (either may be 0: off).
func (c *Client) keepAlive(every, maxIdle time.Duration) {
	tick := every / 2
	if tick <= 0 || (maxIdle > 0 && maxIdle/2 < tick) {
		tick = maxIdle / 2
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		idle := time.Since(c.lastRecv)
		unused := len(c.txs) == 0 && time.Since(c.lastUsed) >= maxIdle
		c.mu.Unlock()
		if maxIdle > 0 && unused {
			c.log.Debug("ocp: closing unused connection", "idle", maxIdle)
			c.Close(Result{Code: CodeOK, Reason: "idle"})
			return
		}
		if every <= 0 || idle < every {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := c.Ping(ctx)
		cancel()
		if err != nil {
			c.log.Warn("ocp: keep-alive failed; closing connection", "err", err)
			c.Close(Failure("keep-alive timeout"))
			return
		}
	}
}

// Begin starts a transaction on group sg (TS, §11.5). xids increase
// strictly for the life of the connection.
func (c *Client) Begin(sg uint32) (*ClientTx, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	if c.broken || !c.groups[sg] {
		c.mu.Unlock()
		return nil, fmt.Errorf("ocp: service group %d does not exist on this connection", sg)
	}
	if c.nextXid == MaxUni {
		c.mu.Unlock()
		return nil, errors.New("ocp: transaction ids exhausted on this connection")
	}
	c.nextXid++
	c.lastUsed = time.Now()
	t := &ClientTx{c: c, Xid: c.nextXid, in: make(chan *Message, 64), done: make(chan struct{})}
	c.txs[t.Xid] = t
	c.mu.Unlock()
	if err := c.w.send(NewMessage(MsgTS, UniAtom(t.Xid), UniAtom(sg))); err != nil {
		return nil, c.sendFailed(err)
	}
	return t, nil
}

func (c *Client) readLoop() {
	first := true
	for {
		m, err := c.w.r.ReadMessage()
		if err != nil {
			var se *SyntaxError
			if errors.As(err, &se) {
				c.fail(err)
			} else {
				c.shutdown(&PeerError{Result: Failure("connection closed without CE: " + err.Error())})
			}
			return
		}
		c.mu.Lock()
		c.lastRecv = time.Now()
		c.mu.Unlock()
		if first {
			if m.Name != MsgCS {
				c.fail(fmt.Errorf("ocp: first message is %s, not CS", m.Name))
				return
			}
			first = false
			close(c.peerCS)
			continue
		}
		if err := c.dispatch(m); err != nil {
			c.fail(err)
			return
		}
		select {
		case <-c.done:
			return
		default:
		}
	}
}

func (c *Client) dispatch(m *Message) error {
	switch m.Name {
	case MsgCS: // repeated CS is ignored (§11.1)
	case MsgCE:
		r, err := ParseResult(firstAnon(m))
		if err != nil {
			r = Failure("CE with invalid result")
		}
		c.shutdown(&PeerError{Result: r})
	case MsgNR:
		c.mu.Lock()
		ch, sg := c.pendNR, c.pendSG
		c.pendNR, c.pendSG = nil, nil
		c.mu.Unlock()
		if ch == nil {
			return errors.New("ocp: NR without an outstanding NO")
		}
		if err := checkSGEcho(m, sg); err != nil {
			return err
		}
		ch <- m
	case MsgNO:
		c.mu.Lock()
		pending := c.pendNR != nil
		c.mu.Unlock()
		if pending {
			return nil // collision: the processor disregards the server's offer (§6.1)
		}
		// The processor offers what it wants; a server-initiated offer is
		// declined, echoing SG as §11.19 requires.
		nr := NewMessage(MsgNR)
		if sg := m.Param("SG"); sg != nil {
			nr.With("SG", sg)
		}
		if l, err := ListOf(firstAnon(m)); err == nil && len(l) > 0 {
			nr.With("Rejects", l)
		}
		return c.w.send(nr)
	case MsgPQ:
		pa := NewMessage(MsgPA)
		if x := firstAnon(m); x != nil {
			if xid, err := Uni(x); err == nil {
				c.mu.Lock()
				_, ok := c.txs[xid]
				c.mu.Unlock()
				if ok {
					pa.Anon = []Value{x}
				}
			}
		}
		return c.w.send(pa)
	case MsgPA, MsgPR:
		if x := firstAnon(m); x != nil {
			return c.toTx(m) // progress of one transaction
		}
		c.mu.Lock()
		if m.Name == MsgPA && c.pendPA != nil {
			close(c.pendPA)
			c.pendPA = nil
		}
		c.mu.Unlock()
	case MsgAQ:
		// Core features are not "supported" in the AQ sense; a profile
		// answers for its own feature through the negotiation result.
		return c.w.send(NewMessage(MsgAA, Atom("false")))
	case MsgAA:
	case MsgSGD:
		sg, err := Uni(firstAnon(m))
		if err != nil {
			return fmt.Errorf("ocp: SGD: %w", err)
		}
		c.mu.Lock()
		c.broken = c.groups[sg] || c.broken
		c.mu.Unlock()
	case MsgTS, MsgSGC, MsgDSS:
		return fmt.Errorf("ocp: %s is sent by the processor only", m.Name)
	default:
		if xidMessages[m.Name] {
			return c.toTx(m)
		}
		// Valid but unknown messages are ignored (§11).
	}
	return nil
}

func checkSGEcho(nr *Message, sg *uint32) error {
	v := nr.Param("SG")
	switch {
	case sg == nil && v != nil:
		return errors.New("ocp: NR has SG but the NO had none")
	case sg != nil:
		got, err := Uni(v)
		if err != nil || got != *sg {
			return fmt.Errorf("ocp: NR does not echo SG %d", *sg)
		}
	}
	return nil
}

func (c *Client) toTx(m *Message) error {
	xid, err := xidOf(m)
	if err != nil {
		return err
	}
	c.mu.Lock()
	t := c.txs[xid]
	if t == nil {
		ended := c.ended.has(xid)
		c.mu.Unlock()
		if ended {
			return nil // crossed our TE on the wire
		}
		return fmt.Errorf("ocp: %s for unknown transaction %d", m.Name, xid)
	}
	if m.Name == MsgTE {
		delete(c.txs, xid)
		c.ended.add(xid)
	}
	c.mu.Unlock()
	if m.Name == MsgTE {
		r, err := ParseResult(secondAnon(m))
		if err != nil {
			r = Failure("TE with invalid result")
		}
		t.peerEnded(m, r)
		return nil
	}
	select {
	case t.in <- m:
	case <-t.done:
	case <-c.done:
	}
	return nil
}

func firstAnon(m *Message) Value {
	if len(m.Anon) > 0 {
		return m.Anon[0]
	}
	return nil
}

func secondAnon(m *Message) Value {
	if len(m.Anon) > 1 {
		return m.Anon[1]
	}
	return nil
}

// ClientTx is one transaction on a Client.
type ClientTx struct {
	c   *Client
	Xid uint32

	in     chan *Message
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	err    error    // why it ended; nil while open or after a clean end
	peerTE *Message // the peer's TE, if it ended the transaction
}

// Send sends a transaction message; the caller puts the xid first.
func (t *ClientTx) Send(m *Message) error {
	select {
	case <-t.done:
		if err := t.Err(); err != nil {
			return err
		}
		return fmt.Errorf("ocp: transaction %d has ended", t.Xid)
	default:
	}
	if err := t.c.w.send(m); err != nil {
		return t.c.sendFailed(err)
	}
	return nil
}

// Recv returns the next message the server sent for this transaction.
// After the server's TE it returns the TE once (a failure result as
// *TxError), then io-style errors.
func (t *ClientTx) Recv(ctx context.Context) (*Message, error) {
	select {
	case m := <-t.in:
		return m, nil
	default:
	}
	select {
	case m := <-t.in:
		return m, nil
	case <-t.done:
		// Drain what arrived before the end.
		select {
		case m := <-t.in:
			return m, nil
		default:
		}
		t.mu.Lock()
		te, err := t.peerTE, t.err
		t.peerTE = nil
		t.mu.Unlock()
		if te != nil {
			return te, nil
		}
		if err == nil {
			err = fmt.Errorf("ocp: transaction %d has ended", t.Xid)
		}
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TryRecv returns a message that has already arrived, without waiting.
func (t *ClientTx) TryRecv() (*Message, bool) {
	select {
	case m := <-t.in:
		return m, true
	default:
		return nil, false
	}
}

// End sends TE with the result unless the transaction already ended,
// and forgets it. It is safe to call more than once.
func (t *ClientTx) End(r Result) {
	c := t.c
	c.mu.Lock()
	_, open := c.txs[t.Xid]
	if open {
		delete(c.txs, t.Xid)
		c.ended.add(t.Xid)
	}
	c.lastUsed = time.Now()
	c.mu.Unlock()
	if open {
		m := NewMessage(MsgTE, UniAtom(t.Xid))
		if r.Code != 0 && r.Code != CodeOK {
			m.Anon = append(m.Anon, r.Value())
		}
		if err := c.w.send(m); err != nil {
			c.shutdown(err)
		}
	}
	t.finish(nil)
}

// Err returns the error that ended the transaction, if any.
func (t *ClientTx) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *ClientTx) peerEnded(te *Message, r Result) {
	t.mu.Lock()
	t.peerTE = te
	t.mu.Unlock()
	var err error
	if r.Failed() {
		err = &TxError{Xid: t.Xid, Result: r}
	}
	t.finish(err)
}

func (t *ClientTx) finish(err error) {
	t.once.Do(func() {
		t.mu.Lock()
		t.err = err
		t.mu.Unlock()
		close(t.done)
	})
}
