// Package child runs one daemon for a test or a benchmark: its output in
// a file, its exit watched, stopped with SIGTERM and, after a grace time,
// SIGKILL. It is what the engine harness (internal/enginetest), the
// benchmark driver (bench/cmd/opesbench) and the end-to-end benchmark
// share; the product never starts processes this way.
package child

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is a started daemon.
type Process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // the exit, once done is closed
}

// Start runs cmd with its standard output and error in the file logPath
// (created or truncated). Unless the caller set cmd.SysProcAttr, the
// daemon is killed when the caller dies (Pdeathsig), so that a crashed
// test leaves nothing behind.
func Start(cmd *exec.Cmd, logPath string) (*Process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("child: output of %s: %w", cmd.Path, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("child: start %s: %w", cmd.Path, err)
	}
	p := &Process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the daemon's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the daemon has exited (and been waited for).
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the daemon has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the daemon exited; nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Stop sends SIGTERM, then SIGKILL when the daemon has not exited after
// grace, and waits for the exit. It may be called more than once.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill stops the daemon at once, as a crash would, and waits for the exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Tail returns the last n lines of the daemon's output so far.
func (p *Process) Tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitDial waits until network/addr accepts a connection and ready (if
// not nil) says yes, failing early with the output's tail when the
// daemon exits.
func (p *Process) WaitDial(network, addr string, timeout time.Duration, ready func() bool) error {
	name := p.cmd.Path
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if p.Exited() {
			return fmt.Errorf("%s exited at start (%v):\n%s", name, p.err, p.Tail(15))
		}
		var err error
		if ready == nil || ready() {
			var c net.Conn
			if c, err = net.DialTimeout(network, addr, 200*time.Millisecond); err == nil {
				_ = c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s %s not accepting after %v (%v):\n%s", name, network, addr, timeout, err, p.Tail(15))
		}
	}
}
