package child

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, script string) *Process {
	t.Helper()
	p, err := Start(exec.Command("sh", "-c", script), filepath.Join(t.TempDir(), "out.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func TestStopTerm(t *testing.T) {
	p := start(t, "echo one; echo two; exec sleep 30")
	for deadline := time.Now().Add(5 * time.Second); p.Tail(1) != "two"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q", p.Tail(5))
		}
	}
	if p.Exited() || p.Err() != nil {
		t.Fatal("exited at once")
	}
	begin := time.Now()
	p.Stop(10 * time.Second)
	if !p.Exited() || time.Since(begin) > 5*time.Second {
		t.Fatalf("SIGTERM did not end sleep at once (%v)", time.Since(begin))
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("exit %v, want terminated by SIGTERM", err)
	}
	if got := p.Tail(5); got != "one\ntwo" {
		t.Errorf("Tail(5) = %q", got)
	}
	p.Stop(time.Second) // again: no-op
}

func TestStopKillsAfterGrace(t *testing.T) {
	// The shell ignores SIGTERM and so does the sleep it execs.
	p := start(t, `trap "" TERM; exec sleep 30`)
	time.Sleep(100 * time.Millisecond) // let the trap be set
	p.Stop(300 * time.Millisecond)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("exit %v, want killed after the grace time", err)
	}
}

func TestWaitDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := start(t, "exec sleep 30")
	if err := p.WaitDial("tcp", ln.Addr().String(), 5*time.Second, nil); err != nil {
		t.Fatalf("listening address: %v", err)
	}
	calls := 0
	ready := func() bool { calls++; return calls > 2 }
	if err := p.WaitDial("tcp", ln.Addr().String(), 5*time.Second, ready); err != nil || calls != 3 {
		t.Fatalf("with ready: %v after %d calls", err, calls)
	}
	dead := start(t, "echo cannot bind >&2; exit 3")
	err = dead.WaitDial("tcp", "127.0.0.1:1", 5*time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "exited at start") || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("dead daemon: %v", err)
	}
	err = p.WaitDial("tcp", "127.0.0.1:1", 100*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "not accepting") {
		t.Fatalf("nothing listening: %v", err)
	}
}
