// Package enginetest starts the content engines the tests scan with: a real
// clamd, spamd, rspamd and OpenDKIM, all offline, private to the caller, on free
// loopback ports, in directories of their own, and shares one engine among the
// tests of a package (Shared). It is imported only by tests (the service
// packages and integration). It must not import package opes: opes imports
// opes/bypass, whose own tests import this package.
package enginetest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/internal/child"
)

// Test patterns the engines recognise.
const (
	// EICAR is the standard antivirus test file; the test clamd knows it
	// by MD5 as EicarSig.
	EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	// Token is found anywhere in a scanned file as TokenSig.
	Token = "MILTER-TESTBED-VIRUS-TOKEN"

	EicarSig = "Testbed.Eicar.MD5.UNOFFICIAL"
	TokenSig = "Testbed.Token.UNOFFICIAL"

	// GTUBE makes SpamAssassin score a message about 1000.
	GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
)

// The commands that install the engines, for the errors when one is missing.
const (
	ClamdAptHint = "apt-get install -y --no-install-recommends clamav-daemon (clamd is started by the tests, never as a system service)"
	SpamdAptHint = "apt-get install -y --no-install-recommends spamassassin spamd spamc"
)

// binDirs are searched after $PATH: the daemons live in /usr/sbin, often
// not on a user's PATH.
var binDirs = []string{"/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin", "/bin"}

// LookBin finds an executable by name in $PATH and then in the sbin/bin
// directories; the error names the apt command that installs it.
func LookBin(name, aptHint string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range binDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in $PATH or %s; install it with: %s", name, strings.Join(binDirs, ", "), aptHint)
}

// FreePort asks the kernel for an unused loopback port. Another process
// could take it before the daemon binds; startup then fails with a clear log.
func FreePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// workDir is opts' directory, or a new one (with a short path: unix socket
// paths must stay under 108 octets) that the daemon's Stop removes.
func workDir(dir, pattern string) (string, bool, error) {
	if dir != "" {
		return dir, false, nil
	}
	d, err := os.MkdirTemp("", pattern)
	return d, true, err
}

// TailFile returns the last n lines of a file (for failure reports).
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logs joins the tails of the named files in dir.
func logs(dir string, n int, files ...string) string {
	var b strings.Builder
	for _, f := range files {
		fmt.Fprintf(&b, "--- %s\n%s\n", f, TailFile(filepath.Join(dir, f), n))
	}
	return b.String()
}

// daemon is an engine's process: cmd is set by the engine, proc once it
// has started.
type daemon struct {
	cmd     *exec.Cmd
	proc    *child.Process
	dir     string
	ownsDir bool
}

// waitReady first gives started (if set) the pid of the daemon, which
// has just run, and then polls ready every interval until it answers
// (nil), the daemon exits, or a minute has passed since start; logs
// describes the failure.
func (d *daemon) waitReady(name string, start time.Time, every time.Duration, started func(pid int) error, ready func() error, logs func() string) error {
	if started != nil {
		if err := started(d.proc.Pid()); err != nil {
			return err
		}
	}
	for time.Since(start) < 60*time.Second {
		select {
		case <-d.proc.Done():
			return fmt.Errorf("%s exited during startup:\n%s", name, logs())
		case <-time.After(every):
		}
		if ready() == nil {
			return nil
		}
	}
	return fmt.Errorf("%s did not answer within 60 s:\n%s", name, logs())
}

// dropRootTo prepares the start as root of a daemon that refuses to keep
// root and changes to account, the system user its Debian package
// creates: dirs, where it writes, become the account's and d.dir is
// opened to it. engine and aptHint make the error when the account is
// missing.
func (d *daemon) dropRootTo(account, engine, aptHint string, dirs ...string) error {
	u, err := user.Lookup(account)
	if err != nil {
		return fmt.Errorf("%s as root needs the %s user (%v); install: %s", engine, account, err, aptHint)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, dir := range dirs {
		if err := os.Chown(dir, uid, gid); err != nil {
			return err
		}
	}
	return os.Chmod(d.dir, 0o755)
}

// endpoints are where a daemon listens: a free loopback TCP port and a
// unix socket in its directory.
type endpoints struct {
	addr string // 127.0.0.1:port
	sock string // unix socket path
}

// newEndpoints picks the port and names the socket file sockName in dir.
func newEndpoints(dir, sockName string) (endpoints, error) {
	port, err := FreePort()
	if err != nil {
		return endpoints{}, err
	}
	return endpoints{addr: "127.0.0.1:" + strconv.Itoa(port), sock: filepath.Join(dir, sockName)}, nil
}

// Addr is the daemon's TCP address, "127.0.0.1:PORT".
func (e endpoints) Addr() string { return e.addr }

// Socket is the path of the daemon's unix socket (mode 0666).
func (e endpoints) Socket() string { return e.sock }

// ask sends req to addr over TCP (bounded at 2 s) and returns a reader of
// the answer; the caller checks it and closes the connection.
func ask(addr, req string) (*bufio.Reader, net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		c.Close()
		return nil, nil, err
	}
	return bufio.NewReader(c), c, nil
}

// start runs cmd with its output in dir/outName.
func (d *daemon) start(outName string) error {
	p, err := child.Start(d.cmd, filepath.Join(d.dir, outName))
	if err != nil {
		return err
	}
	d.proc = p
	return nil
}

func (d *daemon) exited() bool { return d.proc != nil && d.proc.Exited() }

// stop sends SIGTERM, SIGKILL after grace, waits for the exit and removes
// the directory when it made it. It may be called more than once.
func (d *daemon) stop(grace time.Duration) {
	if d.proc != nil {
		d.proc.Stop(grace)
	}
	if d.ownsDir {
		_ = os.RemoveAll(d.dir)
	}
}

// kill stops the process at once, as a crash would, and waits for the exit.
func (d *daemon) kill() { d.proc.Kill() }
