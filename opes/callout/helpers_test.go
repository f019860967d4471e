package callout

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

const testSystem = "https://mx1.example.net/opes/"

// startSDK serves svc as "svc" on a loopback port and returns the address.
func startSDK(t *testing.T, svc sdk.Service, tc *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = (&sdk.Server{Handler: sdk.Mux{"svc": svc}}).Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("sdk server did not stop")
		}
	})
	return ln.Addr().String()
}

func serverTLS(t *testing.T, cert, key, clientCA string) *tls.Config {
	t.Helper()
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc
}

// newCallout builds the service from TOML options, as the policy does.
func newCallout(t *testing.T, options string) *Service {
	t.Helper()
	svc, err := New(optiontest.Decoder(t, "[options]\n"+options))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s := svc.(*Service)
	t.Cleanup(s.Close)
	return s
}

func newProcessor(t *testing.T, specs ...*opes.ServiceSpec) *opes.Processor {
	t.Helper()
	p := &opes.Policy{System: opes.System{URI: testSystem}, Services: specs,
		Rules: []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: specs}}}
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return proc
}

func spec(name string, impl opes.Service) *opes.ServiceSpec {
	return &opes.ServiceSpec{Name: name, Kind: "callout", URI: testSystem + "svc/" + name, Impl: impl}
}

type testMessage struct {
	from   string
	rcpts  []string
	header [][2]string
	body   string
}

var plainMessage = testMessage{
	from: "alice@example.org", rcpts: []string{"bob@example.net"},
	header: [][2]string{{"From", " alice@example.org"}, {"Subject", " hello"}, {"Received", " from a\r\n\tby b"}},
	body:   "Hello Bob.\r\n",
}

// runMessage drives one SMTP transaction through a processor session the
// way the milter bridge does; it returns the outcome of the last stage
// that ran and the RCPT outcomes.
func runMessage(t *testing.T, proc *opes.Processor, m testMessage) (*opes.Outcome, []*opes.Outcome) {
	t.Helper()
	ctx := context.Background()
	s := proc.NewSession()
	defer s.Close()
	s.Conn().Hostname = "client.example.org"
	s.Conn().Family = "tcp4"
	if o := s.Connect(ctx); o.Kind != opes.Continue {
		return o, nil
	}
	if o := s.Helo(ctx, "client.example.org"); o.Kind != opes.Continue {
		return o, nil
	}
	if o := s.Mail(ctx, opes.Address{Addr: m.from}); o.Kind != opes.Continue {
		return o, nil
	}
	var rc []*opes.Outcome
	for _, r := range m.rcpts {
		rc = append(rc, s.Rcpt(ctx, opes.Address{Addr: r}))
	}
	s.Data(ctx)
	for _, h := range m.header {
		s.Header(h[0], h[1])
	}
	if o := s.EndOfHeaders(ctx); o.Kind != opes.Continue {
		return o, rc
	}
	if o := s.BodyChunk([]byte(m.body)); o != nil {
		return o, rc
	}
	o := s.EndOfMessage(ctx, "4ABCD12")
	// Read the replacement body before Finish releases it.
	if o.Body != nil {
		b, err := io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
		o.Body = strings.NewReader(string(b))
	}
	s.Finish()
	return o, rc
}

func delivered(m testMessage, o *opes.Outcome) string {
	var fields []opes.HeaderField
	for _, h := range m.header {
		fields = append(fields, opes.HeaderField{Name: h[0], Value: h[1]})
	}
	return opes.FormatHeader(opes.ApplyChanges(fields, o.HeaderChanges))
}

// scripted is a callout server written against the wire, for answers no
// well-behaved server gives. It completes the handshake and negotiation
// (accepting the offer unchanged) and calls onData for each
// transaction message; onData may write anything to w.
type scripted struct {
	t      *testing.T
	ln     net.Listener
	onData func(m *ocp.Message, w io.Writer) (closeConn bool)
	mu     sync.Mutex
	seen   []string // names of the transaction messages received, "TE 400" for failures
}

func startScripted(t *testing.T, onData func(m *ocp.Message, w io.Writer) bool) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{t: t, ln: ln, onData: onData}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(nc)
			}()
		}
	}()
	return s
}

func (s *scripted) addr() string { return s.ln.Addr().String() }

func (s *scripted) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *scripted) serve(nc net.Conn) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	r := ocp.NewReader(nc, ocp.Limits{})
	w := bufio.NewWriter(nc)
	send := func(m *ocp.Message) { _ = ocp.Encode(w, m); _ = w.Flush() }
	send(ocp.NewMessage(ocp.MsgCS))
	for {
		m, err := r.ReadMessage()
		if err != nil {
			return
		}
		switch m.Name {
		case ocp.MsgCS, ocp.MsgSGC:
		case ocp.MsgCE:
			return
		case ocp.MsgNO:
			nr := ocp.NewMessage(ocp.MsgNR)
			if l, _ := ocp.ListOf(m.Anon[0]); len(l) > 0 {
				nr.Anon = []ocp.Value{l[0]}
			}
			if sg := m.Param("SG"); sg != nil {
				nr.With("SG", sg)
			}
			send(nr)
		case ocp.MsgPQ:
			if len(m.Anon) > 0 {
				s.mu.Lock()
				s.seen = append(s.seen, "PQ")
				s.mu.Unlock()
			}
			send(ocp.NewMessage(ocp.MsgPA))
		default:
			name := m.Name
			if (m.Name == ocp.MsgTE || m.Name == ocp.MsgAME) && len(m.Anon) > 1 {
				res, _ := ocp.ParseResult(m.Anon[1])
				name += " " + res.String()
			}
			if p, err := ocp.PartOf(m); err == nil {
				name += " " + p
			}
			s.mu.Lock()
			s.seen = append(s.seen, name)
			s.mu.Unlock()
			if s.onData(m, w) {
				return
			}
			_ = w.Flush()
		}
	}
}

func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
