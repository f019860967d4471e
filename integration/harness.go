// Package integration runs real MTAs, Postfix and Sendmail, with Postfix's
// smtp-sink as the next hop, inside Go tests, so that the milter can be
// tested end to end the way an MTA drives it. Scenarios are written as data
// in cases/*.case (cases/README.md) and run against both MTAs by TestCases.
//
// Everything is private to the test that asks for it: every instance gets
// its own directory (short paths under os.TempDir, removed at cleanup), free
// ports on 127.0.0.1 and a random token in its SMTP greeting, so that the
// harness can tell its own server from another process that may have grabbed
// the same port. Every process is stopped by PID in t.Cleanup; a small
// watchdog shell process per instance also stops it if the test binary dies
// without running its cleanups (go test timeout, SIGINT, os.Exit).
//
// The harness needs root (Postfix's ownership model, smtp-sink -u,
// Sendmail's private namespace) and the Debian "postfix" package (postfix,
// postsuper, postqueue, smtp-sink). Sendmail (sendmail.go) is not installed:
// it is fetched with "apt-get download" into a cache under os.TempDir and
// needs the "m4" package and util-linux's unshare. [Require] fails the
// test, rather than skipping it, when anything is missing: a CI job that
// silently skipped the MTA tests would prove nothing.
//
// Typical use:
//
//	sink := integration.StartSink(t)
//	pf := integration.StartPostfix(t, integration.PostfixOptions{
//		Milter:  "inet:" + milterAddr,
//		RelayTo: sink.Addr(),
//	})
//	sm := integration.StartSendmail(t, integration.SendmailOptions{
//		Milter:  "inet:" + milterPort + "@127.0.0.1",
//		RelayTo: sink.Addr(),
//	})
//	tr := integration.SendMail(t, pf.Addr(), "a@example.test", []string{"b@example.net"}, msg)
//	d := sink.WaitDump(t, integration.HasHeader("Subject", subject), 5*time.Second)
package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// PostfixUser is the unprivileged account the Postfix daemons and smtp-sink
// run as. Directories they write to are chowned to it.
const PostfixUser = "postfix"

// Binaries the harness runs. Require(t, PostfixBinaries...) checks them all.
var PostfixBinaries = []string{"postfix", "postsuper", "postqueue", "smtp-sink"}

// binDirs are searched after $PATH: a non-login root shell may lack /usr/sbin.
var binDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// LookBin finds an executable by name in $PATH and then in the sbin/bin
// directories. A name containing a slash is checked as is.
func LookBin(name string) (string, error) {
	if strings.Contains(name, "/") {
		if isExec(name) {
			return name, nil
		}
		return "", fmt.Errorf("%s: not an executable file", name)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range binDirs {
		p := filepath.Join(d, name)
		if isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in $PATH or %s", name, strings.Join(binDirs, ", "))
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// binaryPackage names the Debian package of each binary the harness runs,
// for Require's message.
var binaryPackage = map[string]string{
	"postfix": "postfix", "postsuper": "postfix", "postqueue": "postfix", "smtp-sink": "postfix",
	"m4": "m4", "unshare": "util-linux", "mount": "mount", "hostname": "hostname", "mknod": "coreutils",
	"apt-get": "apt", "dpkg-deb": "dpkg",
}

// Require fails the test (it does not skip it) with a clear message unless
// the process runs as root and every named binary exists. With no names it
// checks PostfixBinaries. When a Postfix binary is needed it also checks
// that the postfix user exists.
func Require(t testing.TB, binaries ...string) {
	t.Helper()
	if len(binaries) == 0 {
		binaries = PostfixBinaries
	}
	var problems []string
	if uid := os.Geteuid(); uid != 0 {
		problems = append(problems, fmt.Sprintf(
			"the test runs as uid %d, but the MTA harness must run as root "+
				"(postfix start, smtp-sink -u and Sendmail's private namespace need it); run the integration tests as root", uid))
	}
	var pkgs []string
	needPostfix := false
	for _, b := range binaries {
		pkg := binaryPackage[b]
		needPostfix = needPostfix || pkg == "postfix"
		if _, err := LookBin(b); err != nil {
			problems = append(problems, fmt.Sprintf("required binary missing: %v (Debian package %s)", err, pkg))
			if pkg != "" && !slices.Contains(pkgs, pkg) {
				pkgs = append(pkgs, pkg)
			}
		}
	}
	if needPostfix {
		if _, err := user.Lookup(PostfixUser); err != nil {
			problems = append(problems, fmt.Sprintf("user %q missing: %v", PostfixUser, err))
			if !slices.Contains(pkgs, "postfix") {
				pkgs = append(pkgs, "postfix")
			}
		}
	}
	if len(problems) > 0 {
		hint := ""
		if len(pkgs) > 0 {
			hint = "\nInstall what is missing as CI does:\n"
			if slices.Contains(pkgs, "postfix") {
				hint += "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections\n"
			}
			hint += "  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
		}
		t.Fatalf("integration: this machine cannot run the MTA tests:\n  - %s%s",
			strings.Join(problems, "\n  - "), hint)
	}
}

func mustBin(t testing.TB, name string) string {
	t.Helper()
	p, err := LookBin(name)
	if err != nil {
		t.Fatalf("integration: %v", err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: it
// binds port 0, reads the port and closes the listener. Someone else may take
// it before the caller binds it; the Start functions retry on that race.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("integration: free port: %v", err)
	}
	return p
}

// FreeAddr is FreePort as "127.0.0.1:PORT".
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// pickPort is how the Start functions choose a port (a variable so that the
// harness's own tests can simulate the race).
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startOnFreePort runs start on a free 127.0.0.1 address and returns its
// error, trying up to five ports: a port picked free may be taken before the
// server binds it. After a failed attempt it runs undo (stop what did start)
// and tries another port only when the failure was that race: a server
// without our token answered (errForeign), or one of the logs says
// "Address already in use" since the attempt began. name is the server in
// the test log. It fails the test when it cannot pick a port.
func startOnFreePort(t testing.TB, name string, logs []string, start func(addr string) error, undo func()) error {
	t.Helper()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		port, perr := pickPort()
		if perr != nil {
			t.Fatalf("integration: free port: %v", perr)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		offsets := make([]int64, len(logs))
		for i, l := range logs {
			offsets[i] = fileSize(l)
		}
		if err = start(addr); err == nil {
			return nil
		}
		undo()
		var since strings.Builder
		for i, l := range logs {
			since.WriteString(readFrom(l, offsets[i]))
		}
		if !errors.Is(err, errForeign) && !strings.Contains(since.String(), "Address already in use") {
			return err
		}
		t.Logf("integration: %s on %s: %v; retrying on another port", name, addr, err)
	}
	return err
}

// TempDir returns a new directory with a short path under os.TempDir
// (opes-it-XXXXXXXX), mode 0755 so that the postfix user can traverse it,
// removed at cleanup. Use it for milter unix sockets: t.TempDir paths carry
// the test name and are mode 0700 below /tmp, so they can exceed the 108-byte
// sun_path limit and are closed to Postfix's unprivileged smtpd.
//
// If the test binary dies without running its cleanups, a watchdog process
// removes the directory.
func TempDir(t testing.TB) string {
	t.Helper()
	return tempDir(t, true)
}

// tempDir is TempDir; watch=false leaves the removal on a crash to the
// caller's own watchdog (which must stop its daemons before removing).
func tempDir(t testing.TB, watch bool) string {
	t.Helper()
	d, err := os.MkdirTemp("", "opes-it-")
	if err != nil {
		t.Fatalf("integration: temp dir: %v", err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatalf("integration: chmod %s: %v", d, err)
	}
	var wd *watchdog
	if watch {
		if wd, err = startWatchdog(`rm -rf "$1"`+"\n", d); err != nil {
			os.RemoveAll(d)
			t.Fatalf("integration: watchdog: %v", err)
		}
	}
	t.Cleanup(func() {
		defer wd.disarm()
		if os.Getenv("OPES_IT_KEEP") != "" {
			t.Logf("integration: OPES_IT_KEEP set, keeping %s", d)
			return
		}
		removeAll(t, d)
	})
	return d
}

// removeAll retries: a Postfix daemon that is just exiting may still create
// a file in the queue directory.
func removeAll(t testing.TB, d string) {
	var err error
	for i := 0; i < 20; i++ {
		if err = os.RemoveAll(d); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("integration: remove %s: %v", d, err)
}

func postfixIDs() (uid, gid int, err error) {
	u, err := user.Lookup(PostfixUser)
	if err != nil {
		return 0, 0, err
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, err
	}
	gid, err = strconv.Atoi(u.Gid)
	return uid, gid, err
}

// mkdirPostfix creates dir (0755) owned by the postfix user.
func mkdirPostfix(dir string) error {
	uid, gid, err := postfixIDs()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Chown(dir, uid, gid)
}

func randomToken() string {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// --- processes -----------------------------------------------------------

// procStat returns the fields of /proc/PID/stat after the command name:
// [0] state, [1] ppid, [2] pgrp, [3] session, ...
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	return strings.Fields(string(b[i+1:])), nil
}

// pidAlive reports whether pid runs. A zombie counts as dead: PID 1 in this
// kind of sandbox reaps orphans late, and kill(pid, 0) succeeds on zombies.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	f, err := procStat(pid)
	if err != nil || len(f) == 0 {
		return false
	}
	return f[0] != "Z" && f[0] != "X"
}

func procExe(pid int) string {
	p, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return p
}

// waitGone polls until pid is dead or the timeout passes.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !pidAlive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessionMembers lists the live processes whose session ID is sid (the
// Postfix master calls setsid, so its daemons are in its session).
func sessionMembers(sid int) []int { return procsWith(statSession, sid) }

// Fields of procStat's result (after the command name): state, ppid,
// process group, session.
const (
	statPgrp    = 2
	statSession = 3
)

// procsWith lists the live (not zombie) processes whose procStat field
// is id.
func procsWith(field, id int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := strconv.Itoa(id)
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil || len(f) <= field || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if f[field] == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// openFiles returns the paths pid has open (needs root for other users).
func openFiles(pid int) (map[string]bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	m := make(map[string]bool, len(ents))
	for _, e := range ents {
		if p, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			m[p] = true
		}
	}
	return m, nil
}

// --- watchdog ------------------------------------------------------------

// watchdog is a /bin/sh process in its own session that reads its stdin, a
// pipe whose write end only this test process holds. disarm writes "done"
// and the shell exits. If the test process dies first (timeout panic,
// SIGINT, os.Exit: no t.Cleanup runs), the pipe hits EOF and the shell runs
// the cleanup script with the given arguments.
type watchdog struct {
	w   *os.File
	cmd *exec.Cmd
}

const watchdogPrologue = `trap '' INT HUP TERM PIPE
IFS= read -r line
[ "$line" = done ] && exit 0
`

func startWatchdog(script string, args ...string) (*watchdog, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", watchdogPrologue + script, "opes-it-watchdog"}, args...)...)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, err
	}
	return &watchdog{w: w, cmd: cmd}, nil
}

func (wd *watchdog) disarm() {
	if wd == nil {
		return
	}
	fmt.Fprintln(wd.w, "done")
	wd.w.Close()
	done := make(chan struct{})
	go func() { wd.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		wd.cmd.Process.Kill()
		<-done
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the contents of path from byte offset off on.
func readFrom(path string, off int64) string {
	b, _ := os.ReadFile(path)
	if off > int64(len(b)) {
		off = 0 // truncated
	}
	return string(b[off:])
}

// tailFile returns the last n lines of a file (for failure reports).
func tailFile(path string, n int) string { return enginetest.TailFile(path, n) }

// readBanner connects to addr and returns the first line the server sends.
func readBanner(addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for !bytes.Contains(buf, []byte("\n")) {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			if len(buf) > 0 {
				break
			}
			return "", err
		}
	}
	c.Write([]byte("QUIT\r\n"))
	line, _, _ := bytes.Cut(buf, []byte("\n"))
	return strings.TrimRight(string(line), "\r"), nil
}

var errForeign = errors.New("port answered with another server's greeting")

// waitBanner waits until addr greets with a 220 line containing token.
// It stops early when dead reports an error (the server process failed) or
// when a server without our token answers (errForeign: the port was taken).
func waitBanner(addr, token string, timeout time.Duration, dead func() error) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if err := dead(); err != nil {
			return time.Since(start), err
		}
		line, err := readBanner(addr, 500*time.Millisecond)
		if err == nil {
			if strings.HasPrefix(line, "220") && strings.Contains(line, token) {
				return time.Since(start), nil
			}
			return time.Since(start), fmt.Errorf("%w: %q (want token %s)", errForeign, line, token)
		}
		last = err
		time.Sleep(15 * time.Millisecond)
	}
	return time.Since(start), fmt.Errorf("no 220 greeting with token %s on %s within %v (last: %v)", token, addr, timeout, last)
}

// waitContains polls read until its text contains substr and returns that
// text; on timeout it fails the test with the last 30 lines.
func waitContains(t testing.TB, what string, read func() string, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		text := read()
		if strings.Contains(text, substr) {
			return text
		}
		if time.Now().After(deadline) {
			lines := strings.Split(text, "\n")
			t.Fatalf("integration: %q not in %s within %v; tail:\n%s", substr, what, timeout, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
