package ocp

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoHandler is a callout server that accepts every group, accepts the
// first offered feature, and answers each transaction by echoing the
// original data back as adapted data.
type echoHandler struct {
	mu     sync.Mutex
	groups []uint32
	seen   []string
}

func (h *echoHandler) Negotiate(sg *uint32, offers List) (Value, List, List, error) {
	if len(offers) == 0 {
		return nil, nil, nil, nil
	}
	return offers[0], nil, offers[1:], nil
}

func (h *echoHandler) Group(sg uint32, services List) error {
	if name, _ := FeatureURI(services[0]); name == "refuse" {
		return errors.New("no such service")
	}
	h.mu.Lock()
	h.groups = append(h.groups, sg)
	h.mu.Unlock()
	return nil
}

func (h *echoHandler) GroupDestroyed(uint32) {}

func (h *echoHandler) Transaction(ctx context.Context, tx *ServerTx) {
	xid := UniAtom(tx.Xid)
	var off uint32
	for {
		m, err := tx.Recv(ctx)
		if err != nil {
			return
		}
		h.mu.Lock()
		h.seen = append(h.seen, m.Name)
		h.mu.Unlock()
		switch m.Name {
		case MsgAMS:
			_ = tx.Send(NewMessage(MsgAMS, xid))
		case MsgDUM:
			_ = tx.Send(NewMessage(MsgDUM, xid, UniAtom(off)).WithPayload(m.Payload))
			off += uint32(len(m.Payload))
		case MsgAME:
			_ = tx.Send(NewMessage(MsgAME, xid))
			return // ServeConn sends TE
		case MsgTE:
			return
		}
	}
}

func serve(t *testing.T, h ConnHandler, cfg ServerConfig) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); _ = ServeConn(ctx, nc, h, cfg) }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, addr string, cfg ClientConfig) (*Client, *Message) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, nr, err := NewClient(ctx, nc, cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close(OK) })
	return c, nr
}

var ctxT = context.Background()

func recvT(t *testing.T, tx *ClientTx) *Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxT, 5*time.Second)
	defer cancel()
	m, err := tx.Recv(ctx)
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m
}

func TestClientServerTransaction(t *testing.T) {
	h := &echoHandler{}
	addr := serve(t, h, ServerConfig{})
	c, nr := dial(t, addr, ClientConfig{})
	if len(nr.Anon) != 0 {
		t.Errorf("empty offer accepted something: %v", nr)
	}
	sg, err := c.CreateGroup(List{&Struct{Anon: []Value{Atom("svc")}}})
	if err != nil {
		t.Fatal(err)
	}
	feature := &Struct{Anon: []Value{Atom("https://example.org/feature")}}
	nr, err = c.Negotiate(ctxT, List{feature}, &sg)
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := FeatureURI(nr.Anon[0]); u != "https://example.org/feature" {
		t.Errorf("NR = %v", nr)
	}
	for round := 1; round <= 2; round++ {
		tx, err := c.Begin(sg)
		if err != nil {
			t.Fatal(err)
		}
		if tx.Xid != uint32(round) {
			t.Errorf("xid %d, want %d (strictly increasing)", tx.Xid, round)
		}
		x := UniAtom(tx.Xid)
		for _, m := range []*Message{NewMessage(MsgAMS, x), NewMessage(MsgDUM, x, Atom("0")).WithPayload([]byte("hello ")),
			NewMessage(MsgDUM, x, Atom("6")).WithPayload([]byte("world")), NewMessage(MsgAME, x)} {
			if err := tx.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		var data strings.Builder
		for {
			m := recvT(t, tx)
			got = append(got, m.Name)
			data.Write(m.Payload)
			if m.Name == MsgTE {
				break
			}
		}
		if strings.Join(got, " ") != "AMS DUM DUM AME TE" || data.String() != "hello world" {
			t.Errorf("adapted flow %v %q", got, data.String())
		}
		if tx.Err() != nil {
			t.Errorf("transaction error %v", tx.Err())
		}
		tx.End(OK) // already ended by the server's TE: sends nothing
		if c.Active() != 0 {
			t.Errorf("%d active transactions", c.Active())
		}
	}
	if err := c.Ping(ctxT); err != nil {
		t.Errorf("Ping: %v", err)
	}
	c.Close(OK)
	<-c.Done()
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err after Close = %v", c.Err())
	}
}

func TestServerRefusesGroup(t *testing.T) {
	addr := serve(t, &echoHandler{}, ServerConfig{})
	c, _ := dial(t, addr, ClientConfig{})
	sg, err := c.CreateGroup(List{&Struct{Anon: []Value{Atom("refuse")}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Negotiate(ctxT, List{}, &sg)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Result.Code != 400 || !strings.Contains(pe.Result.Reason, "no such service") {
		t.Fatalf("err = %v, want CE 400 naming the refusal", err)
	}
}

// rawPeer is the other end of a connection, driven byte by byte.
type rawPeer struct {
	nc net.Conn
	r  *Reader
}

func (p *rawPeer) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(p.nc, s); err != nil {
		t.Fatal(err)
	}
}

func (p *rawPeer) read(t *testing.T) *Message {
	t.Helper()
	_ = p.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := p.r.ReadMessage()
	if err != nil {
		t.Fatalf("peer read: %v", err)
	}
	return m
}

// expectCE reads until a CE and returns its result.
func (p *rawPeer) expectCE(t *testing.T) Result {
	t.Helper()
	for i := 0; i < 20; i++ {
		m := p.read(t)
		if m.Name == MsgCE {
			r, _ := ParseResult(firstAnon(m))
			return r
		}
	}
	t.Fatal("no CE")
	return Result{}
}

// rawServer accepts one client connection and returns the server end.
func rawServer(t *testing.T) (string, <-chan *rawPeer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *rawPeer, 1)
	go func() {
		nc, err := ln.Accept()
		_ = ln.Close()
		if err != nil {
			return
		}
		t.Cleanup(func() { _ = nc.Close() })
		ch <- &rawPeer{nc: nc, r: NewReader(nc, Limits{})}
	}()
	return ln.Addr().String(), ch
}

func TestClientInvalidInput(t *testing.T) {
	cases := []struct {
		name     string
		afterNR  string // what the server sends once the client is up
		handshak string // replaces the normal handshake
		reason   string
	}{
		{name: "first message not CS", handshak: "NR;\r\n", reason: "not CS"},
		{name: "garbage", afterNR: "220 smtp.example ESMTP\r\n", reason: "invalid message"},
		{name: "unknown xid", afterNR: "DUM 9 0\r\n0:\r\n;\r\n", reason: "unknown transaction 9"},
		{name: "NR without NO", afterNR: "NR;\r\n", reason: "without an outstanding NO"},
		{name: "TS from server", afterNR: "TS 1 1;\r\n", reason: "processor only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, peers := rawServer(t)
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			p := <-peers
			type res struct {
				c   *Client
				err error
			}
			done := make(chan res, 1)
			go func() {
				ctx, cancel := context.WithTimeout(ctxT, 5*time.Second)
				defer cancel()
				cl, _, err := NewClient(ctx, nc, ClientConfig{})
				done <- res{cl, err}
			}()
			if m := p.read(t); m.Name != MsgCS {
				t.Fatalf("client sent %s first", m.Name)
			}
			if m := p.read(t); m.Name != MsgNO {
				t.Fatalf("client did not send NO right after CS: %s", m.Name)
			}
			if c.handshak != "" {
				p.write(t, c.handshak)
				if r := p.expectCE(t); r.Code != 400 || !strings.Contains(r.Reason, c.reason) {
					t.Errorf("CE %v, want 400 with %q", r, c.reason)
				}
				if r := <-done; r.err == nil {
					t.Error("NewClient succeeded")
				}
				return
			}
			p.write(t, "CS;\r\nNR;\r\n")
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			p.write(t, c.afterNR)
			if res := p.expectCE(t); res.Code != 400 || !strings.Contains(res.Reason, c.reason) {
				t.Errorf("CE %v, want 400 with %q", res, c.reason)
			}
			select {
			case <-r.c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("client did not end the connection")
			}
		})
	}
}

func TestClientNegotiationRules(t *testing.T) {
	offer := List{&Struct{Anon: []Value{Atom("https://example.org/a")}}}
	cases := []struct {
		name, nr, reason string
	}{
		{"feature not offered", "NR {\"21:https://example.org/b\"}\r\nSG: 1\r\n;\r\n", "not offered"},
		{"SG not echoed", "NR {\"21:https://example.org/a\"};\r\n", "does not echo SG"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, peers := rawServer(t)
			nc, _ := net.Dial("tcp", addr)
			p := <-peers
			go func() { p.read(t); p.read(t); p.write(t, "CS;\r\nNR;\r\n") }()
			cl, _, err := NewClient(ctxT, nc, ClientConfig{})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close(OK)
			sg, _ := cl.CreateGroup(List{&Struct{Anon: []Value{Atom("x")}}})
			if m := p.read(t); m.Name != MsgSGC {
				t.Fatalf("got %s", m.Name)
			}
			errc := make(chan error, 1)
			go func() { _, err := cl.Negotiate(ctxT, offer, &sg); errc <- err }()
			if m := p.read(t); m.Name != MsgNO {
				t.Fatalf("got %s", m.Name)
			}
			p.write(t, c.nr)
			if err := <-errc; err == nil || !strings.Contains(err.Error(), c.reason) {
				t.Errorf("err = %v, want %q", err, c.reason)
			}
			if r := p.expectCE(t); r.Code != 400 {
				t.Errorf("CE %v", r)
			}
		})
	}
	// A server-initiated offer is declined with the SG echoed.
	addr, peers := rawServer(t)
	nc, _ := net.Dial("tcp", addr)
	p := <-peers
	go func() { p.read(t); p.read(t); p.write(t, "CS;\r\nNR;\r\n") }()
	cl, _, err := NewClient(ctxT, nc, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(OK)
	p.write(t, "NO ({\"21:https://example.org/x\"})\r\nSG: 3\r\n;\r\n")
	m := p.read(t)
	if m.Name != MsgNR || len(m.Anon) != 0 || m.Param("SG") != Atom("3") || m.Param("Rejects") == nil {
		t.Errorf("answer to server offer: %v", m)
	}
	// PQ is answered at once, with the xid only for a live transaction.
	p.write(t, "PQ 77;\r\n")
	if m := p.read(t); m.Name != MsgPA || len(m.Anon) != 0 {
		t.Errorf("answer to PQ: %v", m)
	}
}

// TestKeepAlive: an idle connection is probed with PQ; a server that does
// not answer is dropped.
func TestKeepAlive(t *testing.T) {
	addr, peers := rawServer(t)
	nc, _ := net.Dial("tcp", addr)
	p := <-peers
	go func() { p.read(t); p.read(t); p.write(t, "CS;\r\nNR;\r\n") }()
	cl, _, err := NewClient(ctxT, nc, ClientConfig{KeepAlive: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(OK)
	m := p.read(t)
	if m.Name != MsgPQ {
		t.Fatalf("idle client sent %v, want PQ", m)
	}
	p.write(t, "PA;\r\n")
	if m := p.read(t); m.Name != MsgPQ {
		t.Fatalf("second probe: %v", m)
	}
	// No PA this time.
	select {
	case <-cl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client kept a dead connection")
	}
	if r := p.expectCE(t); !strings.Contains(r.Reason, "keep-alive") {
		t.Errorf("CE %v", r)
	}
}

func TestServerInvalidInput(t *testing.T) {
	cases := []struct {
		name, send, reason string
	}{
		{"first not CS", "NO ();\r\n", "not CS"},
		{"garbage", "CS;\r\nGET / HTTP/1.1\r\n\r\n", "invalid message"},
		{"TS unknown group", "CS;\r\nTS 1 5;\r\n", "unknown service group 5"},
		{"xid not increasing", "CS;\r\nSGC 1 ({\"1:x\"});\r\nTS 2 1;\r\nTS 2 1;\r\n", "does not increase"},
		{"DUM unknown xid", "CS;\r\nDUM 4 0\r\n0:\r\n;\r\n", "unknown transaction 4"},
		{"DUY from processor", "CS;\r\nDUY 1 0 0;\r\n", "callout server only"},
		{"NO for unknown group", "CS;\r\nNO ()\r\nSG: 9\r\n;\r\n", "unknown service group 9"},
		{"too large", "CS;\r\nDUM 1 0\r\n99999:", "longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := serve(t, &echoHandler{}, ServerConfig{Limits: Limits{MaxMessage: 4096}})
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			p := &rawPeer{nc: nc, r: NewReader(nc, Limits{})}
			if m := p.read(t); m.Name != MsgCS {
				t.Fatalf("server sent %s first", m.Name)
			}
			p.write(t, c.send)
			if r := p.expectCE(t); r.Code != 400 || !strings.Contains(r.Reason, c.reason) {
				t.Errorf("CE %v, want 400 with %q", r, c.reason)
			}
		})
	}
}

func TestServerLimitsAndIdle(t *testing.T) {
	addr := serve(t, &blockingHandler{&echoHandler{}}, ServerConfig{MaxTransactions: 1, IdleTimeout: 300 * time.Millisecond})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p := &rawPeer{nc: nc, r: NewReader(nc, Limits{})}
	p.read(t)
	p.write(t, "CS;\r\nNO ();\r\nSGC 1 ({\"1:x\"});\r\nTS 1 1;\r\nTS 2 1;\r\nPQ 1;\r\nAQ {\"1:y\"};\r\n")
	var got []string
	for i := 0; i < 4; i++ {
		got = append(got, p.read(t).String())
	}
	want := []string{"NR;\r\n", "TE 2 {400 \"21:too many transactions\"};\r\n", "PA 1\r\nOrg-Data: 0\r\n;\r\n", "AA false;\r\n"}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("server answered\n%q\nwant\n%q", got, want)
	}
	start := time.Now()
	if r := p.expectCE(t); !strings.Contains(r.Reason, "idle") {
		t.Errorf("CE %v", r)
	}
	if time.Since(start) > 3*time.Second {
		t.Error("idle connection kept too long")
	}
}

// blockingHandler keeps every transaction open until it is ended.
type blockingHandler struct{ *echoHandler }

func (*blockingHandler) Transaction(ctx context.Context, tx *ServerTx) { <-ctx.Done() }

func TestProfileNegotiation(t *testing.T) {
	offer := Profile{Adaptive: []string{PartMail, PartRcpt}, Informative: []string{PartConnect, PartHeaders, PartBody, PartSize}}
	v := offer.Feature()
	back, err := ParseProfile(v)
	if err != nil {
		t.Fatal(err)
	}
	if back.Feature().(*Struct) == nil || (&Message{Name: "x", Anon: []Value{back.Feature()}}).String() != (&Message{Name: "x", Anon: []Value{v}}).String() {
		t.Errorf("profile round trip: %+v", back)
	}
	got := Narrow(offer, []string{PartRcpt, PartHeaders}, []string{PartSize, PartHelo})
	if strings.Join(got.Adaptive, ",") != "RCPT" || strings.Join(got.Informative, ",") != "HEADERS,SIZE" {
		t.Errorf("narrowed = %+v (HEADERS was offered informative only, HELO not at all)", got)
	}
	if err := CheckNarrowed(offer, got); err != nil {
		t.Error(err)
	}
	for _, bad := range []Profile{{Adaptive: []string{PartBody}}, {Informative: []string{PartHelo}}} {
		if err := CheckNarrowed(offer, bad); err == nil {
			t.Errorf("%+v accepted as a narrowing", bad)
		}
	}
	// Unknown parts are ignored; a part listed twice counts as adaptive.
	p, err := ParseProfile(&Struct{Anon: []Value{Atom(ProfileReceiver)}, Named: []Param{
		{Name: ParamAdaptive, Values: []Value{List{Atom("MAIL"), Atom("SECTIONS")}}},
		{Name: ParamInformative, Values: []Value{List{Atom("MAIL"), Atom("BODY")}}}}})
	if err != nil || strings.Join(p.Adaptive, ",") != "MAIL" || strings.Join(p.Informative, ",") != "BODY" {
		t.Errorf("ParseProfile = %+v, %v", p, err)
	}
	if _, err := ParseProfile(&Struct{Anon: []Value{Atom("https://example.org/other")}}); err == nil {
		t.Error("foreign feature parsed as OSMTP")
	}
}

func TestDecisionRoundTrip(t *testing.T) {
	d := &Decision{SMTPError: "550 5.7.1 no", Advice: AdviceQuarantine, Reason: "r", ReplyText: "t", Action: "modified", Status: "skipped",
		AddHeader: []string{"X-A: 1"}, Change: []HeaderEdit{{Name: "Subject", Index: 2, Value: "v"}}, Delete: []HeaderEdit{{Name: "X-B", Index: 1}},
		Via: []string{"https://c.example/svc/x; action=analyzed"}}
	m := d.AddTo(NewMessage(MsgAME, Atom("1")))
	dec, err := NewReader(strings.NewReader(m.String()), Limits{}).ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDecision(dec)
	if err != nil {
		t.Fatal(err)
	}
	if (&Decision{}).Empty() != true || got.Empty() {
		t.Error("Empty")
	}
	if d.AddTo(NewMessage(MsgAME, Atom("1"))).String() != got.AddTo(NewMessage(MsgAME, Atom("1"))).String() {
		t.Errorf("decision round trip:\n%+v\n%+v", d, got)
	}
	bad := []string{
		"AME 1\r\nChange-Header: ({\"1:a\" 0 \"1:v\"})\r\n;\r\n",
		"AME 1\r\nDelete-Header: ({\"1:a\"})\r\n;\r\n",
		"AME 1\r\nSMTP-Error: (a)\r\n;\r\n",
		"AME 1\r\nAdd-Header: ({a})\r\n;\r\n",
	}
	for _, s := range bad {
		m, err := NewReader(strings.NewReader(s), Limits{}).ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseDecision(m); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestMaxIdle: a connection that carries no transaction for MaxIdle is
// ended with CE 200, even while keep-alive holds it open.
func TestMaxIdle(t *testing.T) {
	addr := serve(t, &echoHandler{}, ServerConfig{})
	c, _ := dial(t, addr, ClientConfig{KeepAlive: 50 * time.Millisecond, MaxIdle: 300 * time.Millisecond})
	sg, _ := c.CreateGroup(List{&Struct{Anon: []Value{Atom("svc")}}})
	tx, err := c.Begin(sg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("connection with an open transaction closed: %v", c.Err())
	}
	tx.End(OK)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("unused connection kept open")
	}
}
