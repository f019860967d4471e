// Package faulttest holds the fault checks every network adapter of a
// scanner or engine must pass (opes/spamd, opes/rspamd): the engine down,
// an engine that accepts and never answers, and the MTA going away. Each
// check drives the adapter through a function the adapter's test gives,
// so the checks stay the same for every engine.
package faulttest

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Unreachable checks that an engine that is not there — a TCP port nobody
// listens on, a unix socket that does not exist — is an error that says
// "connect", never a verdict. run sends one message to addr.
func Unreachable(t *testing.T, run func(addr string) error) {
	t.Helper()
	for _, addr := range []string{DeadAddr(t), filepath.Join(t.TempDir(), "none.sock")} {
		if err := run(addr); err == nil || !strings.Contains(err.Error(), "connect") {
			t.Errorf("%s: err = %v, want a connect error", addr, err)
		}
	}
}

// Timeout checks that an engine that accepts and never answers does not
// hold the message longer than the adapter's timeout, and that the error
// says so. run sends one message to addr with the given timeout; isTimeout
// tells the adapter's timeout error apart.
func Timeout(t *testing.T, timeout time.Duration, run func(addr string) error, isTimeout func(error) bool) {
	t.Helper()
	addr := silent(t)
	start := time.Now()
	err := run(addr)
	took := time.Since(start)
	if err == nil || !isTimeout(err) || !strings.Contains(err.Error(), "no answer within "+timeout.String()) {
		t.Errorf("err = %v, want a timeout after %s", err, timeout)
	}
	if took < timeout || took > timeout+2*time.Second {
		t.Errorf("took %v for a %s timeout", took, timeout)
	}
}

// Cancel checks that the MTA going away (the context ending) ends the
// exchange at once, with an error. run sends one message to addr under
// ctx.
func Cancel(t *testing.T, run func(ctx context.Context, addr string) error) {
	t.Helper()
	addr := silent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := run(ctx, addr); err == nil {
		t.Fatal("no error after the context ended")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v after the context ended at 200ms", took)
	}
}

// DeadAddr is a loopback TCP address nobody listens on.
func DeadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// silent listens on loopback and holds every connection open, reading
// nothing and saying nothing, until the test ends.
func silent(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}
