package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opesmilter/opes-milter/internal/child"
)

// proc is a daemon started by the benchmark, stopped by its pid.
type proc struct {
	name string
	*child.Process
}

// startProc starts bin with args in dir, stdout and stderr going to
// logPath. It is killed with us if we die; daemons that change their user
// (MIMEDefang) lose that, so run() also stops every proc on SIGINT and
// SIGTERM.
func startProc(name, logPath, dir, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	p, err := child.Start(cmd, logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &proc{name: name, Process: p}, nil
}

// waitDial waits until network/addr accepts connections, failing early if
// the process behind it exits.
func waitDial(p *proc, network, addr string, timeout time.Duration) error {
	if err := p.WaitDial(network, addr, timeout, nil); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// endpoint is one socket of a peer and the processes that serve it.
type endpoint struct {
	network, addr string
	pids          []int
}

// peer is one milter under test, reachable over a unix socket and TCP.
type peer struct {
	key, label string
	ep         map[string]endpoint // "unix", "tcp"
	procs      []*proc
}

func (pe *peer) stop() {
	// the front processes first (the milter sides), then what they use
	for i := len(pe.procs) - 1; i >= 0; i-- {
		pe.procs[i].Stop(10 * time.Second)
	}
}

// startOpes starts one opes-milter daemon per transport on one policy
// ("" = the embedded default); extra flags are appended.
func startOpes(work, key, label, bin, policy string, transports []string, extra ...string) (*peer, error) {
	pe := &peer{key: key, label: label, ep: map[string]endpoint{}}
	for _, tr := range transports {
		var listen, network, addr string
		if tr == "unix" {
			addr = filepath.Join(work, key+".sock")
			listen, network = "unix:"+addr, "unix"
		} else {
			port, err := freePort()
			if err != nil {
				return pe, err
			}
			addr = "127.0.0.1:" + strconv.Itoa(port)
			listen, network = fmt.Sprintf("inet:%d@127.0.0.1", port), "tcp"
		}
		args := []string{"-listen", listen}
		if policy != "" {
			args = append(args, "-config", policy)
		}
		args = append(args, extra...)
		p, err := startProc(key+"-"+tr, filepath.Join(work, key+"-"+tr+".log"), work, bin, args...)
		if err != nil {
			return pe, err
		}
		pe.procs = append(pe.procs, p)
		if err := waitDial(p, network, addr, 15*time.Second); err != nil {
			return pe, err
		}
		pe.ep[tr] = endpoint{network: network, addr: addr, pids: []int{p.Pid()}}
	}
	return pe, nil
}

// startNull starts the null milter on both transports in one process.
func startNull(work, key, label, bin string, every bool, extra ...string) (*peer, error) {
	pe := &peer{key: key, label: label, ep: map[string]endpoint{}}
	port, err := freePort()
	if err != nil {
		return pe, err
	}
	sock := filepath.Join(work, key+".sock")
	tcp := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"-unix", sock, "-tcp", tcp}
	if every {
		args = append(args, "-every")
	}
	args = append(args, extra...)
	p, err := startProc(key, filepath.Join(work, key+".log"), work, bin, args...)
	if err != nil {
		return pe, err
	}
	pe.procs = append(pe.procs, p)
	for _, e := range []endpoint{{"unix", sock, nil}, {"tcp", tcp, nil}} {
		if err := waitDial(p, e.network, e.addr, 15*time.Second); err != nil {
			return pe, err
		}
		e.pids = []int{p.Pid()}
		pe.ep[e.network] = e
	}
	return pe, nil
}

// startMIMEDefang starts a mimedefang-multiplexor with the given filter
// (and embedded Perl, its fastest mode) and one mimedefang milter per
// transport in front of it, all as user defang: MIMEDefang refuses to
// run as root. The CPU of a transport is charged to its mimedefang, the
// multiplexor and the Perl workers below it.
func startMIMEDefang(work, key, label, filter string) (*peer, error) {
	pe := &peer{key: key, label: label, ep: map[string]endpoint{}}
	const user = "defang"
	uid, gid, err := lookupUser(user)
	if err != nil {
		return pe, err
	}
	dir := filepath.Join(work, key)
	spool := filepath.Join(dir, "spool")
	if err := os.MkdirAll(spool, 0o755); err != nil {
		return pe, err
	}
	if err := os.Chown(spool, uid, gid); err != nil {
		return pe, fmt.Errorf("%s: chown spool: %w", key, err)
	}
	filterPath := filepath.Join(dir, "filter.pl")
	if err := os.WriteFile(filterPath, []byte(filter), 0o644); err != nil {
		return pe, err
	}
	mxSock := filepath.Join(spool, "mx.sock")
	// -m/-x: 2-4 Perl workers for 2 cores; -q/-Q: queue requests instead
	// of tempfailing when all workers are busy; -E: embedded Perl.
	mx, err := startProc(key+"-multiplexor", filepath.Join(dir, "multiplexor.log"), dir, "mimedefang-multiplexor",
		"-D", "-U", user, "-F", filterPath, "-z", spool, "-s", mxSock, "-m", "2", "-x", "4", "-q", "64", "-Q", "60", "-E", "-l")
	if err != nil {
		return pe, err
	}
	pe.procs = append(pe.procs, mx)
	if err := waitDial(mx, "unix", mxSock, 20*time.Second); err != nil {
		return pe, err
	}
	for _, tr := range []string{"unix", "tcp"} {
		var spec, network, addr string
		if tr == "unix" {
			addr = filepath.Join(spool, "md.sock")
			spec, network = "unix:"+addr, "unix"
		} else {
			port, err := freePort()
			if err != nil {
				return pe, err
			}
			addr = "127.0.0.1:" + strconv.Itoa(port)
			spec, network = fmt.Sprintf("inet:%d@127.0.0.1", port), "tcp"
		}
		md, err := startProc(key+"-"+tr, filepath.Join(dir, "mimedefang-"+tr+".log"), dir, "mimedefang",
			"-D", "-U", user, "-p", spec, "-m", mxSock, "-z", spool, "-q")
		if err != nil {
			return pe, err
		}
		pe.procs = append(pe.procs, md)
		if err := waitDial(md, network, addr, 15*time.Second); err != nil {
			return pe, err
		}
		pe.ep[tr] = endpoint{network: network, addr: addr, pids: []int{md.Pid(), mx.Pid()}}
	}
	return pe, nil
}

func lookupUser(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q (the Debian package mimedefang creates it): %w", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	return uid, gid, errors.Join(err1, err2)
}
