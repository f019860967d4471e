// Package milter is the bridge between an MTA speaking the milter protocol
// and the OPES processor: one go-milter session per SMTP connection, one
// opes.Session per session, each callback turned into an opes call and
// each opes.Outcome into milter responses and modification actions. It
// holds no policy logic: what to decide is the processor's business.
package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/opes"
)

// Options configure a Server. Zero values work.
type Options struct {
	ReadTimeout  time.Duration // per MTA read; 0 = none (the MTA has its own timeouts)
	WriteTimeout time.Duration // per write to the MTA; 0 = 10 s
	Logger       *slog.Logger
	Metrics      SessionMetrics // nil: none
}

// SessionMetrics counts what happens on the milter socket.
type SessionMetrics interface {
	SessionOpened()
	SessionClosed()
	MalformedPacket()
}

type noSessionMetrics struct{}

func (noSessionMetrics) SessionOpened()   {}
func (noSessionMetrics) SessionClosed()   {}
func (noSessionMetrics) MalformedPacket() {}

// Server serves the milter protocol for the current processor. The
// processor can be swapped at any time (SIGHUP reload); connections keep
// the processor they started with.
type Server struct {
	proc    atomic.Pointer[opes.Processor]
	srv     *gomilter.Server
	log     *slog.Logger
	metrics SessionMetrics
}

// actionsWanted are the modifications the bridge may apply. Negotiation
// keeps those the MTA offers; only adding header fields is indispensable.
const actionsWanted = gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptChangeBody |
	gomilter.OptAddRcpt | gomilter.OptRemoveRcpt | gomilter.OptQuarantine | gomilter.OptChangeFrom |
	gomilter.OptSetMacros

// NewServer returns a server running proc.
func NewServer(proc *opes.Processor, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = noSessionMetrics{}
	}
	s := &Server{log: o.Logger, metrics: o.Metrics}
	s.proc.Store(proc)
	s.srv = gomilter.NewServer(
		gomilter.WithDynamicMilter(s.newBackend),
		gomilter.WithNegotiationCallback(s.negotiate),
		gomilter.WithActions(actionsWanted),
		gomilter.WithReadTimeout(o.ReadTimeout),
		gomilter.WithWriteTimeout(o.WriteTimeout),
		gomilter.WithMacroRequest(gomilter.StageConnect, []string{gomilter.MacroMTAFQDN, gomilter.MacroDaemonName}),
		gomilter.WithMacroRequest(gomilter.StageHelo, []string{gomilter.MacroTlsVersion, gomilter.MacroCipher, gomilter.MacroCertSubject}),
		gomilter.WithMacroRequest(gomilter.StageMail, []string{gomilter.MacroQueueId, gomilter.MacroAuthType, gomilter.MacroAuthAuthen, gomilter.MacroMailAddr}),
		gomilter.WithMacroRequest(gomilter.StageRcpt, []string{gomilter.MacroQueueId, gomilter.MacroRcptAddr}),
		gomilter.WithMacroRequest(gomilter.StageData, []string{gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageEOH, []string{gomilter.MacroQueueId}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []string{gomilter.MacroQueueId}),
		// Postfix opens a milter connection per SMTP session: a goroutine
		// kept from the last session serves the next one with the stack it
		// already grew (third_party/go-milter/PATCHES.md, patch 6).
		gomilter.WithReusedGoroutines(sessionGoroutineIdle),
	)
	return s
}

// sessionGoroutineIdle is how long a finished session's goroutine waits
// for the next connection; idle ones cost a few KiB of stack each.
const sessionGoroutineIdle = 10 * time.Second

// SetProcessor switches new connections to proc.
func (s *Server) SetProcessor(proc *opes.Processor) { s.proc.Store(proc) }

// Processor returns the current processor.
func (s *Server) Processor() *opes.Processor { return s.proc.Load() }

// Serve accepts MTA connections on ln until Shutdown or Close. Every
// connection goes through the packet guard.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(&guardListener{Listener: ln, log: s.log, metrics: s.metrics})
	if errors.Is(err, gomilter.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for the sessions in flight to end.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close stops at once.
func (s *Server) Close() error { return s.srv.Close() }

// ProtocolFor computes the milter protocol flags for a policy's needs:
// every stage, header and body the policy does not read is switched off,
// since each skipped round trip is MTA throughput gained
// (shared/PERFORMANCE.md). Header values arrive with their leading space
// so upstream fields are seen byte for byte.
func ProtocolFor(n opes.Needs) gomilter.OptProtocol {
	p := gomilter.OptNoUnknown | gomilter.OptHeaderLeadingSpace
	skip := []struct {
		stage opes.Stage
		flag  gomilter.OptProtocol
	}{
		{opes.StageConnect, gomilter.OptNoConnect},
		{opes.StageHelo, gomilter.OptNoHelo},
		{opes.StageMail, gomilter.OptNoMailFrom},
		{opes.StageRcpt, gomilter.OptNoRcptTo},
		{opes.StageData, gomilter.OptNoData},
		{opes.StageHeaders, gomilter.OptNoEOH},
	}
	for _, k := range skip {
		if !n.Stages.Has(k.stage) {
			p |= k.flag
		}
	}
	if !n.Headers {
		p |= gomilter.OptNoHeaders
	} else {
		p |= gomilter.OptNoHeaderReply // we never answer a single header field
	}
	if !n.Body {
		p |= gomilter.OptNoBody
	}
	return p
}

// negotiate answers the MTA's option negotiation for the current policy,
// keeping only what the MTA offers instead of failing the connection.
func (s *Server) negotiate(mtaVersion, milterVersion uint32, mtaActions, milterActions gomilter.OptAction, mtaProtocol, milterProtocol gomilter.OptProtocol, offered gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
	version := min(mtaVersion, milterVersion)
	if version < 2 {
		return 0, 0, 0, 0, fmt.Errorf("milter: MTA protocol version %d too old", mtaVersion)
	}
	actions := milterActions & mtaActions
	if actions&gomilter.OptAddHeader == 0 {
		return 0, 0, 0, 0, errors.New("milter: MTA does not allow adding header fields; OPES trace impossible")
	}
	want := ProtocolFor(s.proc.Load().Needs())
	return version, actions, want & mtaProtocol, offered, nil
}

func (s *Server) newBackend(version uint32, actions gomilter.OptAction, protocol gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
	proc := s.proc.Load()
	s.metrics.SessionOpened()
	return &backend{proc: proc, sess: proc.NewSession(), log: s.log, metrics: s.metrics, leadSpace: protocol&gomilter.OptHeaderLeadingSpace != 0}
}
