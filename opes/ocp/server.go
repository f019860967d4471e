package ocp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// ServerConfig configures the callout server's side of connections.
type ServerConfig struct {
	Limits Limits
	// IdleTimeout ends a connection on which nothing arrived for that
	// long (processors keep idle connections alive with PQ); default 10m.
	IdleTimeout time.Duration
	// WriteTimeout bounds one message write; default 30s.
	WriteTimeout time.Duration
	// MaxTransactions bounds concurrent transactions per connection
	// (§13); a TS beyond it is answered with TE 400. Default 64.
	MaxTransactions int
	// MaxGroups bounds service groups per connection; default 16.
	MaxGroups int
	Log       *slog.Logger
}

// ConnHandler is what a callout server does on one connection. The
// methods other than Transaction run on the connection's reader and must
// not block.
type ConnHandler interface {
	// Negotiate answers a NO (§11.18): the accepted feature (nil for
	// none) and the rejected and unknown offers. sg is the group the
	// offer is scoped to, nil for the connection. An error ends the
	// connection with CE 400.
	Negotiate(sg *uint32, offers List) (accepted Value, rejects, unknowns List, err error)
	// Group is called for SGC; an error refuses the group, which ends
	// the connection with CE 400 (§11.3).
	Group(sg uint32, services List) error
	// GroupDestroyed is called for SGD.
	GroupDestroyed(sg uint32)
	// Transaction runs one transaction in its own goroutine. When it
	// returns, the transaction is ended with TE if it is still open.
	Transaction(ctx context.Context, tx *ServerTx)
}

// AbilityAnswerer is implemented by a ConnHandler that answers AQ for
// the features it defines; without it every AQ is answered false.
type AbilityAnswerer interface {
	Supports(feature Value) bool
}

// ServeConn runs the callout server's side of OCP on nc until the
// processor ends the connection, ctx is cancelled, or an invalid message
// arrives. It closes nc.
func ServeConn(ctx context.Context, nc net.Conn, h ConnHandler, cfg ServerConfig) error {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.MaxTransactions <= 0 {
		cfg.MaxTransactions = 64
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = 16
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &serverConn{
		w: newWire(nc, cfg.Limits, cfg.WriteTimeout), cfg: cfg, h: h, ctx: ctx, cancel: cancel,
		txs: map[uint32]*ServerTx{}, groups: map[uint32]bool{},
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	defer stop()
	err := s.run()
	cancel()
	_ = nc.Close()
	s.wg.Wait()
	return err
}

type serverConn struct {
	w      *wire
	cfg    ServerConfig
	h      ConnHandler
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	txs     map[uint32]*ServerTx
	ended   recentlyEnded
	groups  map[uint32]bool
	lastXid uint32
	lastSG  uint32
}

func (s *serverConn) run() error {
	if err := s.w.send(NewMessage(MsgCS)); err != nil {
		return err
	}
	first := true
	for {
		_ = s.w.nc.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		m, err := s.w.r.ReadMessage()
		if err != nil {
			if s.ctx.Err() != nil {
				_ = s.w.send(NewMessage(MsgCE, Failure("server shutting down").Value()))
				return nil
			}
			var se *SyntaxError
			if errors.As(err, &se) {
				return s.fail(err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				_ = s.w.send(NewMessage(MsgCE, Failure("idle timeout").Value()))
				return fmt.Errorf("ocp: connection idle for %s", s.cfg.IdleTimeout)
			}
			return &PeerError{Result: Failure("connection closed without CE: " + err.Error())}
		}
		if first {
			if m.Name != MsgCS {
				return s.fail(fmt.Errorf("ocp: first message is %s, not CS", m.Name))
			}
			first = false
			continue
		}
		done, err := s.dispatch(m)
		if err != nil {
			return s.fail(err)
		}
		if done {
			return nil
		}
	}
}

func (s *serverConn) fail(err error) error {
	s.cfg.Log.Warn("ocp: invalid message from processor; closing connection", "err", err)
	_ = s.w.send(NewMessage(MsgCE, Failure(reason(err)).Value()))
	return err
}

func (s *serverConn) dispatch(m *Message) (done bool, err error) {
	switch m.Name {
	case MsgCS:
	case MsgCE:
		return true, nil
	case MsgNO:
		return false, s.negotiate(m)
	case MsgNR:
		return false, errors.New("ocp: NR without an outstanding NO")
	case MsgSGC:
		if len(m.Anon) < 2 {
			return false, fmt.Errorf("ocp: SGC needs sg-id and services: %w", ErrMissing)
		}
		sg, err := Uni(m.Anon[0])
		if err != nil {
			return false, fmt.Errorf("ocp: SGC: %w", err)
		}
		services, err := ListOf(m.Anon[1])
		if err != nil {
			return false, fmt.Errorf("ocp: SGC services: %w", err)
		}
		s.mu.Lock()
		if sg <= s.lastSG && s.lastSG != 0 || s.groups[sg] {
			s.mu.Unlock()
			return false, fmt.Errorf("ocp: SGC %d does not increase", sg)
		}
		if len(s.groups) >= s.cfg.MaxGroups {
			s.mu.Unlock()
			return false, fmt.Errorf("ocp: more than %d service groups", s.cfg.MaxGroups)
		}
		s.lastSG = sg
		s.mu.Unlock()
		if err := s.h.Group(sg, services); err != nil {
			return false, fmt.Errorf("ocp: service group %d refused: %w", sg, err)
		}
		s.mu.Lock()
		s.groups[sg] = true
		s.mu.Unlock()
	case MsgSGD:
		sg, err := Uni(firstAnon(m))
		if err != nil {
			return false, fmt.Errorf("ocp: SGD: %w", err)
		}
		s.mu.Lock()
		known := s.groups[sg]
		delete(s.groups, sg)
		s.mu.Unlock()
		if !known {
			return false, fmt.Errorf("ocp: SGD for unknown group %d", sg)
		}
		s.h.GroupDestroyed(sg)
	case MsgTS:
		return false, s.start(m)
	case MsgPQ:
		pa := NewMessage(MsgPA)
		if x := firstAnon(m); x != nil {
			if xid, err := Uni(x); err == nil {
				s.mu.Lock()
				t := s.txs[xid]
				s.mu.Unlock()
				if t != nil {
					pa.Anon = []Value{x}
					if n, open := t.orgData(); open {
						pa.With("Org-Data", UniAtom(n))
					}
				}
			}
		}
		return false, s.w.send(pa)
	case MsgPA, MsgPR, MsgAA:
	case MsgAQ:
		// AQ is read-only (§11.20); what "support" means is the feature's
		// to define, so the handler answers when it knows how.
		supported := false
		if a, ok := s.h.(AbilityAnswerer); ok && len(m.Anon) > 0 {
			supported = a.Supports(m.Anon[0])
		}
		return false, s.w.send(NewMessage(MsgAA, Atom(strconv.FormatBool(supported))))
	case MsgDUY, MsgDPI, MsgDWSR, MsgDWSS:
		return false, fmt.Errorf("ocp: %s is sent by the callout server only", m.Name)
	default:
		if xidMessages[m.Name] {
			return false, s.toTx(m)
		}
	}
	return false, nil
}

func (s *serverConn) negotiate(m *Message) error {
	offers, err := ListOf(firstAnon(m))
	if err != nil {
		return fmt.Errorf("ocp: NO: %w", err)
	}
	var sgp *uint32
	if v := m.Param("SG"); v != nil {
		sg, err := Uni(v)
		if err != nil {
			return fmt.Errorf("ocp: NO SG: %w", err)
		}
		s.mu.Lock()
		known := s.groups[sg]
		s.mu.Unlock()
		if !known {
			return fmt.Errorf("ocp: NO for unknown service group %d", sg)
		}
		sgp = &sg
	}
	accepted, rejects, unknowns, err := s.h.Negotiate(sgp, offers)
	if err != nil {
		return err
	}
	nr := NewMessage(MsgNR)
	if accepted != nil {
		nr.Anon = []Value{accepted}
	}
	if sgp != nil {
		nr.With("SG", UniAtom(*sgp))
	}
	if len(rejects) > 0 {
		nr.With("Rejects", rejects)
	}
	if len(unknowns) > 0 {
		nr.With("Unknowns", unknowns)
	}
	return s.w.send(nr)
}

func (s *serverConn) start(m *Message) error {
	if len(m.Anon) < 2 {
		return fmt.Errorf("ocp: TS needs xid and sg-id: %w", ErrMissing)
	}
	xid, err := Uni(m.Anon[0])
	if err != nil {
		return fmt.Errorf("ocp: TS xid: %w", err)
	}
	sg, err := Uni(m.Anon[1])
	if err != nil {
		return fmt.Errorf("ocp: TS sg-id: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if xid <= s.lastXid && s.lastXid != 0 || s.txs[xid] != nil {
		return fmt.Errorf("ocp: TS xid %d does not increase", xid)
	}
	if !s.groups[sg] {
		return fmt.Errorf("ocp: TS for unknown service group %d", sg)
	}
	s.lastXid = xid
	if len(s.txs) >= s.cfg.MaxTransactions {
		s.ended.add(xid)
		s.mu.Unlock()
		defer s.mu.Lock()
		return s.w.send(NewMessage(MsgTE, UniAtom(xid), Failure("too many transactions").Value()))
	}
	ctx, cancel := context.WithCancel(s.ctx)
	t := &ServerTx{s: s, Xid: xid, SG: sg, in: make(chan *Message, 64), ctx: ctx, cancel: cancel}
	s.txs[xid] = t
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		s.h.Transaction(ctx, t)
		t.End(OK)
	}()
	return nil
}

func (s *serverConn) toTx(m *Message) error {
	xid, err := xidOf(m)
	if err != nil {
		return err
	}
	s.mu.Lock()
	t := s.txs[xid]
	if t == nil {
		ended := s.ended.has(xid)
		s.mu.Unlock()
		if ended {
			return nil
		}
		return fmt.Errorf("ocp: %s for unknown transaction %d", m.Name, xid)
	}
	if m.Name == MsgTE {
		delete(s.txs, xid)
		s.ended.add(xid)
	}
	s.mu.Unlock()
	if m.Name == MsgDUM {
		t.countOrg(len(m.Payload))
	}
	if m.Name == MsgAME {
		t.orgClosed()
	}
	select {
	case t.in <- m:
	case <-t.ctx.Done():
	}
	if m.Name == MsgTE {
		t.cancel() // the processor ended it: stop the work
	}
	return nil
}

// ServerTx is one transaction on the callout server's side.
type ServerTx struct {
	s   *serverConn
	Xid uint32
	SG  uint32

	in     chan *Message
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	org     uint32 // original octets received
	orgDone bool
	ended   bool
}

func (t *ServerTx) countOrg(n int) {
	t.mu.Lock()
	t.org += uint32(n)
	t.mu.Unlock()
}

func (t *ServerTx) orgClosed() {
	t.mu.Lock()
	t.orgDone = true
	t.mu.Unlock()
}

func (t *ServerTx) orgData() (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.org, !t.orgDone
}

// Recv returns the next message the processor sent for this transaction.
// A TE from the processor is returned, and the context is cancelled.
func (t *ServerTx) Recv(ctx context.Context) (*Message, error) {
	select {
	case m := <-t.in:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.ctx.Done():
		select {
		case m := <-t.in:
			return m, nil
		default:
		}
		return nil, fmt.Errorf("ocp: transaction %d: %w", t.Xid, t.ctx.Err())
	}
}

// Send sends a transaction message; the caller puts the xid first.
func (t *ServerTx) Send(m *Message) error {
	t.mu.Lock()
	ended := t.ended
	t.mu.Unlock()
	if ended {
		return fmt.Errorf("ocp: transaction %d has ended", t.Xid)
	}
	return t.s.w.send(m)
}

// End sends TE with the result unless the transaction already ended.
func (t *ServerTx) End(r Result) {
	t.mu.Lock()
	ended := t.ended
	t.ended = true
	t.mu.Unlock()
	if ended {
		return
	}
	s := t.s
	s.mu.Lock()
	_, open := s.txs[t.Xid]
	if open {
		delete(s.txs, t.Xid)
		s.ended.add(t.Xid)
	}
	s.mu.Unlock()
	if open {
		m := NewMessage(MsgTE, UniAtom(t.Xid))
		if r.Code != 0 && r.Code != CodeOK {
			m.Anon = append(m.Anon, r.Value())
		}
		_ = s.w.send(m)
	}
	t.cancel()
}
