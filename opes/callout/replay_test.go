package callout

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/callout/sdk"
	"github.com/opesmilter/opes-milter/opes/ocp"
)

// hopService decides MAIL and RCPT and tags the message with its name at
// the end. onRcpt, when set, runs when a RCPT arrives (before answering).
type hopService struct {
	name   string
	mail   opes.VerdictKind // the answer to MAIL
	onRcpt func(ctx context.Context)

	mu    sync.Mutex
	rcpts []string
}

func (h *hopService) Parts() sdk.Parts {
	return sdk.Parts{Decide: []string{ocp.PartMail, ocp.PartRcpt}, Read: []string{ocp.PartHeaders, ocp.PartBody}}
}
func (h *hopService) Begin(*sdk.Message) sdk.Tx { return &hopTx{h: h} }

type hopTx struct{ h *hopService }

func (t *hopTx) Decide(ctx context.Context, part string, r *opes.Recipient) (sdk.Answer, error) {
	switch part {
	case ocp.PartMail:
		if t.h.mail != opes.Continue {
			return sdk.Answer{Verdict: opes.Verdict{Kind: t.h.mail, Reason: "changed its mind"}}, nil
		}
	case ocp.PartRcpt:
		t.h.mu.Lock()
		t.h.rcpts = append(t.h.rcpts, r.Addr)
		t.h.mu.Unlock()
		if t.h.onRcpt != nil {
			t.h.onRcpt(ctx)
		}
	}
	return sdk.Answer{}, nil
}

func (t *hopTx) End(context.Context) (sdk.Answer, error) {
	return sdk.Answer{Header: []opes.HeaderChange{{Kind: opes.AppendField, Name: "X-Served-By", Value: t.h.name}}}, nil
}
func (t *hopTx) Close() {}

func (h *hopService) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.rcpts...)
}

// serveUntil serves svc behind a proxy until stop is called; stopping
// cuts every open connection at once, without OCP's CE: a callout server
// that crashed or a network path that broke.
func serveUntil(t *testing.T, svc sdk.Service) (addr string, stop func()) {
	t.Helper()
	backend := startSDK(t, svc, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	stopped := false
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			if stopped {
				mu.Unlock()
				_ = c.Close()
				_ = b.Close()
				continue
			}
			conns = append(conns, c, b)
			mu.Unlock()
			go func() { _, _ = io.Copy(b, c); _ = b.Close() }()
			go func() { _, _ = io.Copy(c, b); _ = c.Close() }()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = ln.Close()
			mu.Lock()
			stopped = true
			for _, c := range conns {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // reset, as a crash does
				}
				_ = c.Close()
			}
			mu.Unlock()
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// A callout server lost in the middle of a transaction: the transaction
// starts again on the next server with every part sent so far, the
// message is delivered with that server's changes, and what was decided
// before the loss stays decided even though the second server answers an
// earlier part otherwise.
func TestTransactionReplayedOnNextServer(t *testing.T) {
	b := &hopService{name: "b", mail: opes.Reject}
	addrB, _ := serveUntil(t, b)
	var stopA func()
	a := &hopService{name: "a", mail: opes.Continue}
	a.onRcpt = func(ctx context.Context) {
		stopA() // the connection breaks while the server works on RCPT
		<-ctx.Done()
	}
	addrA, stop := serveUntil(t, a)
	stopA = stop

	svc := newCallout(t, fmt.Sprintf("servers = [%q, %q]\nservice = \"svc\"\nstages = [\"mail\", \"rcpt\", \"eom\"]\ntimeout = \"5s\"\n", addrA, addrB))
	proc := newProcessor(t, spec("hop", svc))
	m := plainMessage
	o, rcpts := runMessage(t, proc, m)
	if len(rcpts) != 1 || rcpts[0].Kind != opes.Continue {
		t.Fatalf("RCPT outcome %+v", rcpts)
	}
	if o.Kind != opes.Continue {
		t.Fatalf("outcome %v %v, want the message delivered", o.Kind, o.Reply)
	}
	got := delivered(m, o)
	if !strings.Contains(got, "X-Served-By: b") || strings.Contains(got, "X-Served-By: a") {
		t.Errorf("delivered header:\n%s\nwant the changes of server b only", got)
	}
	if s := a.seen(); len(s) != 1 {
		t.Errorf("server a saw recipients %q", s)
	}
	if s := b.seen(); len(s) != 1 || s[0] != "bob@example.net" {
		t.Errorf("server b saw recipients %q, want the replayed one", s)
	}
}

// A transaction is replayed once: when the second connection is lost as
// well, the service fails and the processor's failure policy applies.
func TestReplayedOnce(t *testing.T) {
	var stops []func()
	mk := func() string {
		h := &hopService{name: "x", mail: opes.Continue}
		i := len(stops)
		h.onRcpt = func(ctx context.Context) {
			stops[i]()
			<-ctx.Done()
		}
		addr, stop := serveUntil(t, h)
		stops = append(stops, stop)
		return addr
	}
	a1, a2 := mk(), mk()
	svc := newCallout(t, fmt.Sprintf("servers = [%q, %q]\nservice = \"svc\"\nstages = [\"mail\", \"rcpt\", \"eom\"]\ntimeout = \"5s\"\n", a1, a2))
	proc := newProcessor(t, spec("hop", svc))
	start := time.Now()
	_, rcpts := runMessage(t, proc, plainMessage)
	if len(rcpts) != 1 || rcpts[0].Kind != opes.TempFail {
		t.Fatalf("RCPT outcome %+v, want a tempfail (service failed twice)", *rcpts[0])
	}
	if time.Since(start) > 4*time.Second {
		t.Errorf("took %s: a lost connection must fail fast, not wait for the deadline", time.Since(start))
	}
}

// A hosted service that puts fields at the top gives the same delivered
// header through a callout as in process (Prepend-Header), with a
// same-name deletion and an appended field around them.
func TestPrependedFieldsLocalAndRemote(t *testing.T) {
	svc := &prepender{}
	addr := startSDK(t, sdk.Host(svc, opes.BodyOptions{}, nil), nil)
	remote := newCallout(t, fmt.Sprintf("servers = [%q]\nservice = \"svc\"\nstages = [\"eom\"]\ntimeout = \"5s\"\n", addr))
	m := plainMessage
	m.header = append([][2]string{{"Authentication-Results", " mx1.example.net; dkim=pass (forged)"}}, m.header...)
	lo, _ := runMessage(t, newProcessor(t, spec("p", svc)), m)
	ro, _ := runMessage(t, newProcessor(t, spec("p", remote)), m)
	local, got := delivered(m, lo), delivered(m, ro)
	if got != local {
		t.Errorf("through the callout:\n%s\nin process:\n%s", got, local)
	}
	if !strings.Contains(local, "DKIM-Signature: v=1\r\nAuthentication-Results: mx1.example.net; dkim=none\r\nAuthentication-Results: relay") {
		t.Errorf("prepended fields not at the top in order:\n%s", local)
	}
}

// prepender deletes the forged Authentication-Results, prepends two
// fields (the later above) and appends one.
type prepender struct{}

func (prepender) Needs() opes.Needs {
	return opes.Needs{Stages: opes.StagesOf(opes.StageEOM), Headers: true}
}
func (prepender) Begin(tx *opes.Transaction) opes.ServiceTx { return &prependerTx{tx: tx} }

type prependerTx struct {
	opes.BaseTx
	tx *opes.Transaction
}

func (p *prependerTx) EndOfMessage(context.Context) (opes.Verdict, error) {
	h := p.tx.Header
	if _, err := h.DelAt("Authentication-Results", 1); err != nil {
		return opes.Verdict{}, err
	}
	for _, f := range [][3]string{
		{"p", "Authentication-Results", "relay.example.org; spf=pass"},
		{"p", "Authentication-Results", "mx1.example.net; dkim=none"},
		{"p", "DKIM-Signature", "v=1"},
		{"a", "X-Tag", "1"},
	} {
		add := h.Add
		if f[0] == "p" {
			add = h.Prepend
		}
		if err := add(f[1], f[2]); err != nil {
			return opes.Verdict{}, err
		}
	}
	return opes.Verdict{Kind: opes.Continue, Action: "modified"}, nil
}
