// Package sdk is for writing OPES callout servers in Go: Serve accepts
// OCP connections (RFC 4037) from OPES processors, negotiates the OSMTP
// profile (PROFILE §7) for each service group, and hands the parts of
// every SMTP transaction to a Service, whose answers it sends back.
//
// A Service says which parts it decides at and which it only reads;
// the processor then sends nothing else (RFC 4496 §4.3: a service that
// asked for the envelope and SIZE never receives the body). Host turns
// any opes.Service — every built-in service — into a Service, so a
// policy can run it in another process or on another machine with the
// same results.
//
// Example (example_test.go) is a whole service that refuses one sender,
// served and called through a processor.
package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// Parts are the OSMTP parts (ocp.PartConnect, ...) a service decides at
// and reads. Decide implies Read.
type Parts struct {
	Decide []string
	Read   []string
}

// Message is what the callout server knows of one SMTP transaction; the
// SDK fills it as parts arrive, before it calls the service.
type Message struct {
	Conn       opes.Connection
	Sender     *opes.Address
	Recipients []*opes.Recipient
	Header     []opes.HeaderField // as the processor sent them, values with their leading space
	Body       *opes.Body         // nil unless BODY travelled
	Size       int64              // from SIZE; -1 when it did not travel
	// Received lists the parts that arrived, in order, one entry per
	// DUM (BODY chunks included).
	Received []string
}

// Answer is a service's answer to one part or to the whole message.
type Answer struct {
	// Verdict: Kind, Reply, Reason, Action and Status travel. Reject and
	// TempFail with a reply code become SMTP-Error, without one Advice.
	Verdict opes.Verdict
	// Value rewrites the MAIL or RCPT value being decided.
	Value *string
	// End only.
	Header   []opes.HeaderChange // AppendField, ChangeField, DeleteField
	Body     io.Reader           // replacement body
	Sender   *opes.Address
	AddRcpts []opes.Address
	DelRcpts []string
	Trace    []opes.TraceEntry // OPES-Via entries of agents at the callout server
}

// Service is a callout service.
type Service interface {
	Parts() Parts
	Begin(m *Message) Tx
}

// Tx is a service's work on one message.
type Tx interface {
	// Decide is called after each part listed in Parts.Decide arrived;
	// rcpt is the recipient for RCPT.
	Decide(ctx context.Context, part string, rcpt *opes.Recipient) (Answer, error)
	// End is called when the whole original message arrived.
	End(ctx context.Context) (Answer, error)
	// Close is always called.
	Close()
}

// Handler finds the service a processor asks for by name.
type Handler interface {
	Lookup(name string) Service
}

// Mux is a Handler from a fixed map.
type Mux map[string]Service

// Lookup implements Handler.
func (m Mux) Lookup(name string) Service { return m[name] }

// Server serves OCP connections.
type Server struct {
	Handler Handler
	Log     *slog.Logger
	// Limits bound decoded messages; MaxBody bounds one message's body
	// (default 64 MiB) and IdleTimeout an idle connection (default 10m).
	Limits      ocp.Limits
	MaxBody     int64
	IdleTimeout time.Duration
	// Body sets where large bodies are spooled.
	Body opes.BodyOptions
	// Metrics, when not nil, is told about connections and transactions.
	Metrics Metrics
}

// Metrics receives what a Server does, for monitoring.
type Metrics interface {
	// Connections is called with +1 when a connection opens, -1 when it
	// ends.
	Connections(delta int)
	// Transaction is called when a transaction ends: outcome is the
	// service's final verdict ("continue", "reject", "tempfail",
	// "accept", "discard", "quarantine"), or "aborted" when the processor
	// ended it before the end of the message, or "failed" on an error.
	Transaction(service string, took time.Duration, outcome string)
}

// Serve runs a Server with default settings.
func Serve(ctx context.Context, ln net.Listener, h Handler) error {
	return (&Server{Handler: h}).Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is cancelled or ln fails.
// Each connection is served in its own goroutine; Serve returns after
// all of them ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.MaxBody <= 0 {
		s.MaxBody = 64 << 20
	}
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("sdk: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.Metrics != nil {
				s.Metrics.Connections(1)
				defer s.Metrics.Connections(-1)
			}
			h := &connHandler{s: s, groups: map[uint32]*group{}}
			err := ocp.ServeConn(ctx, nc, h, ocp.ServerConfig{Limits: s.Limits, IdleTimeout: s.IdleTimeout, Log: s.Log})
			if err != nil {
				s.Log.Info("sdk: connection ended", "remote", nc.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

type group struct {
	name    string
	svc     Service
	parts   Parts        // what svc reads, as negotiated
	profile *ocp.Profile // nil until negotiated
	warned  bool         // told that a reloaded service could not be used
}

// connHandler is the OSMTP side of one connection.
type connHandler struct {
	s      *Server
	mu     sync.Mutex
	groups map[uint32]*group
}

func (h *connHandler) Group(sg uint32, services ocp.List) error {
	if len(services) != 1 {
		return fmt.Errorf("want exactly one service per group, got %d", len(services))
	}
	name, err := ocp.FeatureURI(services[0])
	if err != nil {
		return err
	}
	svc := h.s.Handler.Lookup(name)
	if svc == nil {
		return fmt.Errorf("unknown service %q", truncate(name))
	}
	h.mu.Lock()
	h.groups[sg] = &group{name: name, svc: svc, parts: svc.Parts()}
	h.mu.Unlock()
	return nil
}

func (h *connHandler) GroupDestroyed(sg uint32) {
	h.mu.Lock()
	delete(h.groups, sg)
	h.mu.Unlock()
}

// Negotiate accepts the OSMTP profile for a group, narrowed to what the
// group's service needs, and nothing at connection scope.
func (h *connHandler) Negotiate(sg *uint32, offers ocp.List) (ocp.Value, ocp.List, ocp.List, error) {
	if sg == nil {
		return nil, nil, offers, nil
	}
	h.mu.Lock()
	g := h.groups[*sg]
	h.mu.Unlock()
	if g == nil {
		return nil, nil, nil, fmt.Errorf("negotiation for unknown group %d", *sg)
	}
	var unknowns ocp.List
	for _, f := range offers {
		offer, err := ocp.ParseProfile(f)
		if err != nil {
			unknowns = append(unknowns, f)
			continue
		}
		if g.profile != nil {
			// Features apply to new transactions; a second profile on
			// the same group conflicts with the first (§6.2).
			return nil, ocp.List{f}, unknowns, nil
		}
		p := ocp.Narrow(offer, g.parts.Decide, g.parts.Read)
		h.mu.Lock()
		g.profile = &p
		h.mu.Unlock()
		return p.Feature(), nil, unknowns, nil
	}
	return nil, nil, unknowns, nil
}

// Supports answers AQ: the OSMTP profile is supported (RFC 4037 §11.20
// leaves "support" to the feature; ours means "can be negotiated for a
// service group on this connection").
func (h *connHandler) Supports(feature ocp.Value) bool {
	uri, err := ocp.FeatureURI(feature)
	return err == nil && uri == ocp.ProfileReceiver
}

func (h *connHandler) Transaction(ctx context.Context, st *ocp.ServerTx) {
	h.mu.Lock()
	g := h.groups[st.SG]
	h.mu.Unlock()
	if g == nil || g.profile == nil {
		st.End(ocp.Failure("OSMTP profile not negotiated for this service group"))
		return
	}
	t := &serverTx{s: h.s, st: st, g: g, svc: h.current(g), p: *g.profile, m: &Message{Size: -1}}
	began := time.Now()
	err := t.run(ctx)
	if err != nil {
		h.s.Log.Warn("sdk: transaction failed", "service", g.name, "xid", st.Xid, "err", err)
		st.End(ocp.Failure(truncate(err.Error())))
	}
	if m := h.s.Metrics; m != nil {
		outcome := "aborted"
		switch {
		case err != nil:
			outcome = "failed"
		case t.ended || t.verdict != opes.Continue:
			outcome = t.verdict.String()
		}
		m.Transaction(g.name, time.Since(began), outcome)
	}
}

// current is the service a new transaction of group g runs: the one the
// Handler has now (a reloaded configuration) when it reads the same parts
// as the one the group negotiated for, else the group's own. A service
// that changed what it reads needs a new negotiation, that is a new
// connection: processors open one when theirs ends (idle timeout, their
// own reload).
func (h *connHandler) current(g *group) Service {
	cur := h.s.Handler.Lookup(g.name)
	if cur == nil || cur == g.svc {
		return g.svc
	}
	if parts := cur.Parts(); sameSet(parts.Decide, g.parts.Decide) && sameSet(parts.Read, g.parts.Read) {
		return cur
	}
	h.mu.Lock()
	warn := !g.warned
	g.warned = true
	h.mu.Unlock()
	if warn {
		h.s.Log.Warn("sdk: service reads other parts since the reload; this connection keeps the configuration it negotiated", "service", g.name)
	}
	return g.svc
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
