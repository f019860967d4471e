package childmilter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	milter "github.com/d--j/go-milter"
	"github.com/opesmilter/opes-milter/opes"
)

// newTx is a transaction for calling hooks directly, to see the errors
// the processor turns into its failure policy.
func newTx() *opes.Transaction {
	h := opes.NewHeader()
	_ = h.Add("From", "alice@example.org")
	return &opes.Transaction{
		Conn:       &opes.Connection{Hostname: "localhost", Addr: netip.MustParseAddr("127.0.0.1"), Port: 41234, Family: "tcp4", Helo: "client.example.org"},
		Sender:     &opes.Address{Addr: "alice@example.org"},
		Recipients: []*opes.Recipient{{Address: opes.Address{Addr: "bob@example.net"}}},
		Header:     h,
		Body:       opes.NewBody(opes.BodyOptions{}),
	}
}

// listen serves every connection of a loopback listener with handle.
func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return fmt.Sprintf("inet:%d@127.0.0.1", ln.Addr().(*net.TCPAddr).Port)
}

func TestChildDown(t *testing.T) {
	sockets := map[string]string{
		"unix": "unix:" + filepath.Join(shortTempDir(t), "absent.sock"),
		"inet": fmt.Sprintf("inet:%d@127.0.0.1", freePort(t)),
	}
	for name, sock := range sockets {
		t.Run(name, func(t *testing.T) {
			svc := newService(t, fmt.Sprintf("socket = %q", sock))
			st := svc.Begin(newTx())
			defer st.Close()
			_, err := st.Connect(bg)
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("connect: %v, want a connection error", err)
			}
			// The failure sticks for the transaction: no second attempt.
			if _, err2 := st.Mail(bg); err2 != err {
				t.Errorf("second hook: %v, want the first error", err2)
			}

			// Through the processor: not bypassable tempfails with the
			// trace; on_error = continue delivers, traced as failed.
			r := drive(t, newProcessor(t, svc, opes.OnErrorDefault), testMessage())
			if r.stage != "connect" || r.outcome.Kind != opes.TempFail || r.outcome.Reply.Code != 451 || r.outcome.Reply.Enhanced != "4.3.0" {
				t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
			}
			r = drive(t, newProcessor(t, svc, opes.OnErrorContinue), testMessage())
			if r.stage != "eom" || r.outcome.Kind != opes.Continue {
				t.Fatalf("outcome at %s: %+v", r.stage, r.outcome)
			}
			if trace := via(t, r.outcome); !strings.Contains(trace, svcURI+"; action=analyzed; status=failed") {
				t.Errorf("trace %q", trace)
			}
		})
	}
}

func TestChildHangs(t *testing.T) {
	// Accepts and reads, never answers.
	hung := listen(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })

	t.Run("timeout", func(t *testing.T) {
		svc := newService(t, fmt.Sprintf("socket = %q\ncommand_timeout = \"300ms\"", hung))
		st := svc.Begin(newTx())
		defer st.Close()
		began := time.Now()
		_, err := st.Connect(bg)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("connect: %v, want a deadline error", err)
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Errorf("took %s with command_timeout 300ms", took)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		svc := newService(t, fmt.Sprintf("socket = %q", hung))
		st := svc.Begin(newTx())
		defer st.Close()
		ctx, cancel := context.WithCancel(bg)
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := st.Connect(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("connect: %v, want cancelled", err)
		}
	})

	t.Run("at end of message", func(t *testing.T) {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		sock, _ := startChild(t, func(s *scripted) {
			s.eom = func(milter.Modifier) (*milter.Response, error) {
				<-release
				return milter.RespAccept, nil
			}
		})
		svc := newService(t, fmt.Sprintf("socket = %q\neom_timeout = \"400ms\"", sock))
		st := svc.Begin(newTx())
		defer st.Close()
		for _, hook := range []func(context.Context) (opes.Verdict, error){st.Connect, st.Helo, st.Mail, st.Data, st.Headers} {
			if v, err := hook(bg); err != nil || v.Kind != opes.Continue {
				t.Fatalf("hook before eom: %v %v", v, err)
			}
		}
		_, err := st.EndOfMessage(bg)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("end of message: %v, want a deadline error", err)
		}
	})
}

func TestChildBreaksProtocol(t *testing.T) {
	tests := map[string]func(net.Conn){
		"garbage": func(c net.Conn) {
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
		},
		"closes after negotiation": func(c net.Conn) {
			buf := make([]byte, 17)
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			// SMFIC_OPTNEG answered with version 6, no actions, no
			// protocol flags; then the connection closes at CONNECT.
			_, _ = c.Write([]byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0})
			_, _ = c.Read(buf)
		},
	}
	for name, handle := range tests {
		t.Run(name, func(t *testing.T) {
			svc := newService(t, fmt.Sprintf("socket = %q", listen(t, handle)))
			st := svc.Begin(newTx())
			defer st.Close()
			_, err := st.Connect(bg)
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("connect: %v", err)
			}
			t.Log(err)
		})
	}
}
