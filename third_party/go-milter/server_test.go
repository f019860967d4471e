package milter

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter/internal/wire"
	"github.com/emersion/go-message/textproto"
)

type mockModifier struct {
	version  uint32
	protocol OptProtocol
}

func (m *mockModifier) Get(name MacroName) string {
	return ""
}

func (m *mockModifier) GetEx(name MacroName) (value string, ok bool) {
	return "", false
}

func (m *mockModifier) Version() uint32 {
	return m.version
}

func (m *mockModifier) Protocol() OptProtocol {
	return m.protocol
}

func (m *mockModifier) Actions() OptAction {
	return AllClientSupportedActionMasks
}

func (m *mockModifier) MaxDataSize() DataSize {
	return DataSize64K
}

func (m *mockModifier) MilterId() uint64 {
	return 0
}

func (m *mockModifier) AddRecipient(r string, esmtpArgs string) error {
	panic("not implemented")
}

func (m *mockModifier) DeleteRecipient(r string) error {
	panic("not implemented")
}

func (m *mockModifier) ReplaceBodyRawChunk(chunk []byte) error {
	panic("not implemented")
}

func (m *mockModifier) ReplaceBody(r io.Reader) error {
	panic("not implemented")
}

func (m *mockModifier) Quarantine(reason string) error {
	panic("not implemented")
}

func (m *mockModifier) AddHeader(name, value string) error {
	panic("not implemented")
}

func (m *mockModifier) ChangeHeader(index int, name, value string) error {
	panic("not implemented")
}

func (m *mockModifier) InsertHeader(index int, name, value string) error {
	panic("not implemented")
}

func (m *mockModifier) ChangeFrom(value string, esmtpArgs string) error {
	panic("not implemented")
}

func (m *mockModifier) Progress() error {
	panic("not implemented")
}

var _ Modifier = (*mockModifier)(nil)

func TestNoOpMilter(t *testing.T) {
	t.Parallel()
	asset := func(resp *Response, err error, act wire.ActionCode) {
		t.Helper()
		if resp.Response().Code != wire.Code(act) {
			t.Fatalf("NoOpMilter response is not %c: %+v", act, resp)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	assetContinue := func(resp *Response, err error) {
		t.Helper()
		asset(resp, err, wire.ActContinue)
	}
	assetAccept := func(resp *Response, err error) {
		t.Helper()
		asset(resp, err, wire.ActAccept)
	}
	m := NoOpMilter{}
	mod := &mockModifier{version: 2, protocol: 0}
	assetContinue(m.Connect("", "", 0, "", mod))
	assetContinue(m.Helo("", mod))
	assetContinue(m.MailFrom("", "", mod))
	assetContinue(m.RcptTo("", "", mod))
	assetContinue(m.Unknown("", mod))
	assetContinue(m.Data(mod))
	assetContinue(m.Header("", "", mod))
	assetContinue(m.Headers(mod))
	assetContinue(m.BodyChunk(nil, mod))
	assetAccept(m.EndOfMessage(mod))
	m.Cleanup(mod)
}

func TestNoOpMilterV6(t *testing.T) {
	t.Parallel()
	asset := func(resp *Response, err error, act wire.ActionCode) {
		t.Helper()
		if resp.Response().Code != wire.Code(act) {
			t.Fatalf("NoOpMilter response is not %c: %+v", act, resp)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	assetContinue := func(resp *Response, err error) {
		t.Helper()
		asset(resp, err, wire.ActContinue)
	}
	assetSkip := func(resp *Response, err error) {
		t.Helper()
		asset(resp, err, wire.ActSkip)
	}
	assetAccept := func(resp *Response, err error) {
		t.Helper()
		asset(resp, err, wire.ActAccept)
	}
	m := NoOpMilter{}
	mod := &mockModifier{version: 6, protocol: OptSkip}
	assetContinue(m.Connect("", "", 0, "", mod))
	assetContinue(m.Helo("", mod))
	assetContinue(m.MailFrom("", "", mod))
	assetSkip(m.RcptTo("", "", mod))
	assetContinue(m.Unknown("", mod))
	assetContinue(m.Data(mod))
	assetSkip(m.Header("", "", mod))
	assetContinue(m.Headers(mod))
	assetSkip(m.BodyChunk(nil, mod))
	assetAccept(m.EndOfMessage(mod))
	m.Cleanup(mod)
}

func TestServer_NoOpMilter(t *testing.T) {
	t.Parallel()
	assert := func(act *Action, err error, expectedCode ActionType) {
		t.Helper()
		if err != nil {
			t.Fatalf("got err: %v", err)
		}
		if act == nil {
			t.Fatal("act is nil")
		}
		if act.Type != expectedCode {
			t.Fatalf("got action: %+v expected action code %c", act, expectedCode)
		}
	}
	assertContinue := func(act *Action, err error) {
		t.Helper()
		assert(act, err, ActionContinue)
	}
	assertEnd := func(mActions []ModifyAction, act *Action, err error) {
		t.Helper()
		assert(act, err, ActionAccept)
		if len(mActions) > 0 {
			t.Fatalf("milter returned ModifyActions: %+v", mActions)
		}
	}
	macros := NewMacroBag()
	w := newServerClient(t, macros, []Option{WithMilter(func() Milter {
		return NoOpMilter{}
	})}, nil)
	t.Cleanup(w.Cleanup)
	macros.Set(MacroMTAFQDN, "localhost.local")
	macros.Set(MacroTlsVersion, "TLS1.3")
	macros.Set(MacroAuthType, "plain")
	macros.Set(MacroRcptMailer, "smtp")
	macros.Set(MacroQueueId, "123")
	assertContinue(w.session.Conn("localhost", FamilyInet, 2525, "127.0.0.1"))
	assertContinue(w.session.Helo("localhost"))
	assertContinue(w.session.Mail("", ""))
	assertContinue(w.session.Rcpt("", ""))
	assertContinue(w.session.Rcpt("", ""))
	if err := w.session.Abort(nil); err != nil {
		t.Fatal(err)
	}
	if err := w.session.Abort(nil); err != nil {
		t.Fatal(err)
	}
	assertContinue(w.session.Mail("", ""))
	assertContinue(w.session.Rcpt("", ""))
	assertContinue(w.session.Rcpt("", ""))
	hdrs := textproto.Header{}
	hdrs.Add("From", "Mailer Daemon <>")
	assertContinue(w.session.Header(hdrs))
	assertEnd(w.session.BodyReadFrom(bytes.NewReader([]byte("test\ntest\n"))))

	if err := w.session.Reset(nil); err != nil {
		t.Fatal(err)
	}

	assertContinue(w.session.Conn("localhost", FamilyInet, 2525, "127.0.0.1"))
	assertContinue(w.session.Helo("localhost"))
	assertContinue(w.session.Mail("", ""))
	assertContinue(w.session.Rcpt("", ""))
	assertContinue(w.session.DataStart())
	assertContinue(w.session.HeaderField("From", "<>", nil))
	assertContinue(w.session.HeaderField("To", "<>", nil))
	assertContinue(w.session.HeaderEnd())
	assertContinue(w.session.BodyChunk([]byte("test\n")))
	assertContinue(w.session.BodyChunk([]byte("test\n")))
	assertEnd(w.session.End())
	if err := w.server.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestServer_Shutdown(t *testing.T) {
	t.Parallel()
	type args struct {
		mod func(wrap *serverClientWrap)
		ctx func() (context.Context, context.CancelFunc)
	}
	oneSecCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), time.Second)
	}
	tests := []struct {
		name    string
		args    args
		wantErr bool
	}{
		{"active", args{func(wrap *serverClientWrap) {
			// newServerClient opens a session
		}, oneSecCtx}, true},
		{"idle", args{func(wrap *serverClientWrap) {
			_ = wrap.session.Close()
			time.Sleep(time.Millisecond * 100)
		}, oneSecCtx}, false},
		{"graceful", args{func(w *serverClientWrap) {
			go func() {
				if _, err := w.session.Conn("localhost", FamilyInet, 2525, "127.0.0.1"); err != nil {
					return
				}
				if _, err := w.session.Helo("localhost"); err != nil {
					return
				}
				if _, err := w.session.Mail("", ""); err != nil {
					return
				}
				if _, err := w.session.Rcpt("", ""); err != nil {
					return
				}
				if _, err := w.session.DataStart(); err != nil {
					return
				}
				if _, err := w.session.HeaderField("From", "<>", nil); err != nil {
					return
				}
				if _, err := w.session.HeaderField("To", "<>", nil); err != nil {
					return
				}
				if _, err := w.session.HeaderEnd(); err != nil {
					return
				}
				if _, err := w.session.BodyChunk([]byte("test\n")); err != nil {
					return
				}
				if _, _, err := w.session.End(); err != nil {
					return
				}
				if err := w.session.Close(); err != nil {
					return
				}
			}()
		}, oneSecCtx}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newServerClient(t, NewMacroBag(), []Option{WithMilter(func() Milter {
				return NoOpMilter{}
			})}, nil)
			t.Cleanup(w.Cleanup)
			tt.args.mod(&w)
			ctx, cancel := tt.args.ctx()
			defer cancel()
			if err := w.server.Shutdown(ctx); (err != nil) != tt.wantErr {
				t.Errorf("Shutdown() error = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

type dummyDialer struct {
}

func (d *dummyDialer) Dial(network, address string) (net.Conn, error) {
	return nil, nil
}

func TestNewServerPanic(t *testing.T) {
	type args struct {
		opts []Option
	}
	tests := []struct {
		name string
		args args
	}{
		{"missing milter function", args{opts: []Option{WithDynamicMilter(nil)}}},
		{"wrong version", args{opts: []Option{WithMilter(nil), WithMaximumVersion(99)}}},
		{"with dialer", args{opts: []Option{WithMilter(nil), WithDialer(&dummyDialer{})}}},
		{"with offered max data", args{opts: []Option{WithMilter(nil), WithOfferedMaxData(DataSize1M)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil {
					t.Errorf("NewServer() did not panic")
				}
			}()
			NewServer(tt.args.opts...)
		})
	}
}

func TestServer_MilterCount(t *testing.T) {
	s := &Server{}
	s.milterCount.Store(1)
	if got := s.MilterCount(); got != 1 {
		t.Errorf("MilterCount() = %d, want %d", got, 1)
	}
}

// opes-milter patch 6: with WithReusedGoroutines, sequential connections
// are served by the goroutine of the previous session (the goroutine count
// does not grow with the connections), every session still works, and
// Close ends the idle goroutines.
func TestServer_ReusedGoroutines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int32
	srv := NewServer(WithMilter(func() Milter { served.Add(1); return NoOpMilter{} }), WithReusedGoroutines(time.Minute))
	go func() { _ = srv.Serve(ln) }()
	client := NewClient("tcp", ln.Addr().String())
	session := func() {
		t.Helper()
		s, err := client.Session(nil)
		if err != nil {
			t.Fatal(err)
		}
		if act, err := s.Conn("localhost", FamilyInet, 2525, "127.0.0.1"); err != nil || act.Type != ActionContinue {
			t.Fatalf("connect: %v %v", act, err)
		}
		_ = s.Close()
	}
	session()
	time.Sleep(50 * time.Millisecond) // the first session's goroutine is idle now
	base := runtime.NumGoroutine()
	for i := 0; i < 50; i++ {
		session()
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Errorf("goroutines grew from %d to %d over 50 sequential sessions", base, n)
	}
	if got := served.Load(); got != 51 {
		t.Errorf("served %d sessions, want 51", got)
	}
	_ = srv.Close()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() >= base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n >= base {
		t.Errorf("idle session goroutines not ended by Close: %d goroutines, %d before", n, base)
	}
}

// connectRecorder records the MTA name macro seen at connect.
type connectRecorder struct {
	NoOpMilter
	seen chan string
}

func (c connectRecorder) Connect(host string, family string, port uint16, addr string, m Modifier) (*Response, error) {
	c.seen <- m.Get(MacroMTAFQDN)
	return RespContinue, nil
}

// opes-milter patch 8: a milter that asks for the macros of one stage
// still gets the MTA's default macros at the others, as from Postfix.
func TestClient_MacroRequestKeepsOtherDefaults(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 1)
	srv := NewServer(WithMilter(func() Milter { return connectRecorder{seen: seen} }),
		WithMacroRequest(StageEOM, []MacroName{MacroQueueId}))
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	macros := NewMacroBag()
	macros.Set(MacroMTAFQDN, "mx.example.org")
	s, err := NewClient("tcp", ln.Addr().String()).Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Conn("localhost", FamilyInet, 2525, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != "mx.example.org" {
		t.Errorf("connect macro j = %q, want the default list's value", got)
	}
}
