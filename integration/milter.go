package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Milter is an opes-milter daemon started by a test.
type Milter struct {
	t      testing.TB
	cmd    *exec.Cmd
	listen string // socket spec given to -listen
	postfx string // the same socket in Postfix's syntax
	config string // policy file, empty for the embedded default
	binary string
	args   []string
	log    *bytes.Buffer
	mu     *sync.Mutex
	done   chan error
}

// syncWriter lets the daemon's stderr be read while it runs.
type syncWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// MilterOptions say how to start opes-milter.
type MilterOptions struct {
	Binary string // path to the opes-milter binary (see BuildMilter)
	Policy string // TOML policy text; empty runs the embedded default policy
	Unix   bool   // listen on a unix socket instead of 127.0.0.1:<free port>
	Args   []string
}

// BuildMilter compiles ./cmd/opes-milter of this module into dir.
func BuildMilter(dir string) (string, error) {
	out := filepath.Join(dir, "opes-milter")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/opes-milter")
	cmd.Dir = ".." // the module root, seen from this package's directory
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/opes-milter: %v\n%s", err, b)
	}
	return out, nil
}

// StartMilter starts opes-milter and waits until it accepts connections.
// It is stopped with SIGTERM at cleanup.
func StartMilter(t testing.TB, o MilterOptions) *Milter {
	t.Helper()
	dir := TempDir(t)
	m := &Milter{t: t, log: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan error, 1)}
	if o.Unix {
		sock := filepath.Join(dir, "opes.sock")
		m.listen, m.postfx = "unix:"+sock, "unix:"+sock
	} else {
		port := FreePort(t)
		m.listen = fmt.Sprintf("inet:%d@127.0.0.1", port)
		m.postfx = fmt.Sprintf("inet:127.0.0.1:%d", port)
	}
	args := []string{"-listen", m.listen, "-socket-mode", "0666", "-log-level", "debug"}
	if o.Policy != "" {
		m.config = filepath.Join(dir, "policy.toml")
		if err := os.WriteFile(m.config, []byte(o.Policy), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-config", m.config)
	}
	m.binary, m.args = o.Binary, append(args, o.Args...)
	m.start(t)
	return m
}

// Restart starts the same daemon again, on the same socket and policy,
// after it stopped (or was killed): the MTA's configuration still points
// there.
func (m *Milter) Restart(t testing.TB) *Milter {
	t.Helper()
	n := &Milter{t: t, listen: m.listen, postfx: m.postfx, config: m.config, binary: m.binary, args: m.args,
		log: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan error, 1)}
	n.start(t)
	return n
}

// start runs the daemon and waits until it accepts connections.
func (m *Milter) start(t testing.TB) {
	m.cmd = exec.Command(m.binary, m.args...)
	m.cmd.Stderr = syncWriter{m.mu, m.log}
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start opes-milter: %v", err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		m.Stop()
		if t.Failed() {
			t.Logf("opes-milter log:\n%s", m.Log())
		}
	})
	network, addr := "tcp", strings.TrimPrefix(m.postfx, "inet:")
	if strings.HasPrefix(m.listen, "unix:") {
		network, addr = "unix", strings.TrimPrefix(m.listen, "unix:")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout(network, addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("opes-milter exited at start (%v):\n%s", err, m.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("opes-milter not listening on %s after 10 s:\n%s", m.listen, m.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PostfixSpec is the socket in Postfix's smtpd_milters syntax.
func (m *Milter) PostfixSpec() string { return m.postfx }

// SendmailSpec is the socket in Sendmail's S= syntax ("inet:PORT@127.0.0.1"
// or "unix:/path"), which is also what the daemon's -listen got.
func (m *Milter) SendmailSpec() string { return m.listen }

// ConfigPath is the policy file (empty for the embedded default).
func (m *Milter) ConfigPath() string { return m.config }

// Log returns what the daemon wrote to stderr so far.
func (m *Milter) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.log.String()
}

// WaitLog waits until the daemon's log contains s.
func (m *Milter) WaitLog(t testing.TB, s string, timeout time.Duration) {
	t.Helper()
	waitContains(t, "the opes-milter log", m.Log, s, timeout)
}

// Pid is the daemon's process id.
func (m *Milter) Pid() int { return m.cmd.Process.Pid }

// CPUTime is the user+system CPU time the daemon has used so far (zero
// for a nil Milter), read from /proc.
func (m *Milter) CPUTime() time.Duration {
	if m == nil {
		return 0
	}
	f, err := procStat(m.cmd.Process.Pid)
	if err != nil || len(f) < 13 { // fields after the command name: utime is the 12th
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// Signal sends sig to the daemon.
func (m *Milter) Signal(sig os.Signal) error { return m.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits for the exit (SIGKILL after 10 s). It
// returns the exit error, nil for a clean exit.
func (m *Milter) Stop() error {
	// The exit status is in m.done (put back by whoever reads it): reading
	// m.cmd.ProcessState here would race with the goroutine in Wait.
	select {
	case err := <-m.done:
		m.done <- err
		return err
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		m.done <- err
		return err
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		err := <-m.done
		m.done <- err
		return fmt.Errorf("opes-milter did not stop on SIGTERM: %v", err)
	}
}
