package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/policy"
)

// debPackage is the package `make deb` builds.
const debPackage = "opes-milter"

// debFiles are paths the package must install.
var debFiles = []string{
	"/usr/bin/opes-milter",
	"/usr/bin/opesctl",
	"/usr/bin/opes-callout",
	"/lib/systemd/system/opes-milter.service",
	"/usr/lib/tmpfiles.d/opes-milter.conf",
	"/etc/opes-milter/policy.toml",
	"/usr/share/doc/opes-milter/copyright",
	"/usr/share/doc/opes-milter/changelog.Debian.gz",
	"/usr/share/doc/opes-milter/README.md",
	"/usr/share/man/man8/opes-milter.8.gz",
	"/usr/share/man/man8/opesctl.8.gz",
	"/usr/share/man/man8/opes-callout.8.gz",
}

// TestDebianPackage builds the Debian package with `make deb`, runs
// lintian on it (any E: fails), installs it on this machine with dpkg -i,
// checks what it installed and runs the installed daemon as its system
// user with the installed policy. The package is purged at the end; the
// system user stays, as Debian leaves system users.
func TestDebianPackage(t *testing.T) {
	t.Parallel()
	Require(t, "make", "dpkg", "dpkg-deb", "dpkg-query", "lintian", "adduser")
	if st := debStatus(); strings.Contains(st, "installed") {
		t.Fatalf("package %s is already on this machine (%s); this test installs and purges it: "+
			"remove it first (dpkg --purge %s)", debPackage, st, debPackage)
	}

	dist := TempDir(t)
	out := debRun(t, 5*time.Minute, "make", "-C", "..", "deb", "DIST="+dist, "COMPRESS=-Zgzip")
	debs, _ := filepath.Glob(filepath.Join(dist, debPackage+"_*_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v in %s:\n%s", debs, dist, out)
	}
	deb := debs[0]
	t.Logf("built %s", filepath.Base(deb))
	if !regexp.MustCompile(`^opes-milter_[0-9][A-Za-z0-9.+~]*-1_[a-z0-9]+\.deb$`).MatchString(filepath.Base(deb)) {
		t.Errorf("package file name %s: want opes-milter_<version>-1_<arch>.deb", filepath.Base(deb))
	}

	debLintian(t, deb)
	debCopyrightNamesModules(t, deb)

	t.Cleanup(func() {
		if b, err := exec.Command("dpkg", "--purge", debPackage).CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge %s: %v\n%s", debPackage, err, b)
		}
		if st := debStatus(); st != "" {
			t.Errorf("after dpkg --purge: %s is still %q", debPackage, st)
		}
		if _, err := os.Stat("/etc/opes-milter"); err == nil {
			t.Errorf("after dpkg --purge: /etc/opes-milter still exists")
		}
	})
	debRun(t, 2*time.Minute, "dpkg", "-i", deb)
	if st := debStatus(); st != "install ok installed" {
		t.Fatalf("dpkg -i: status %q", st)
	}

	for _, f := range debFiles {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if out := debRun(t, time.Minute, "dpkg-query", "-W", "-f=${Conffiles}", debPackage); !strings.Contains(out, "/etc/opes-milter/policy.toml ") {
		t.Errorf("/etc/opes-milter/policy.toml is not a conffile: %q", out)
	}
	unit, _ := os.ReadFile("/lib/systemd/system/opes-milter.service")
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/opes-milter -config /etc/opes-milter/policy.toml") {
		t.Errorf("the unit does not start /usr/bin/opes-milter with /etc/opes-milter/policy.toml:\n%s", unit)
	}

	u, err := user.Lookup("opes-milter")
	if err != nil {
		t.Fatalf("postinst did not create the system user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 || uid >= 1000 {
		t.Errorf("user opes-milter has uid %d, want a system uid (1..999)", uid)
	}

	// Nothing may have been started: no systemd runs here, and where it
	// does, policy-rc.d decides (deb-systemd-invoke).
	if pids := debDaemons(); len(pids) > 0 {
		t.Errorf("installing started /usr/bin/opes-milter (pids %v)", pids)
	}

	if out := debRun(t, time.Minute, "/usr/bin/opesctl", "check", "-config", "/etc/opes-milter/policy.toml"); !strings.Contains(out, "ok") {
		t.Errorf("opesctl check: %s", out)
	}
	cfg, err := policy.Load("/etc/opes-milter/policy.toml")
	if err != nil {
		t.Fatalf("installed policy: %v", err)
	}
	debRunDaemon(t, uint32(uid), uint32(gid), cfg.Policy.System.URI)
}

// debStatus is dpkg's status of the package, "" when dpkg does not know it.
func debStatus() string {
	b, err := exec.Command("dpkg-query", "-W", "-f=${Status}", debPackage).Output()
	if err != nil {
		return ""
	}
	st := strings.TrimSpace(string(b))
	if st == "unknown ok not-installed" {
		return ""
	}
	return st
}

// debRun runs a command and fails the test unless it exits 0.
func debRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	b, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}

// debLintian fails on lintian errors (E:) and logs everything else.
func debLintian(t *testing.T, deb string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, "lintian", "--fail-on", "error", deb).CombinedOutput()
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "E: ") {
			errs = append(errs, l)
		}
	}
	t.Logf("lintian %s:\n%s", filepath.Base(deb), b)
	if len(errs) > 0 || err != nil {
		t.Errorf("lintian (%v) reports errors:\n%s", err, strings.Join(errs, "\n"))
	}
}

// debCopyrightNamesModules checks that the package's copyright file names
// every Go module linked into the daemon: a new dependency must be added
// there with its license.
func debCopyrightNamesModules(t *testing.T, deb string) {
	t.Helper()
	dir := t.TempDir()
	debRun(t, time.Minute, "dpkg-deb", "-x", deb, dir)
	copyright, err := os.ReadFile(filepath.Join(dir, "usr/share/doc/opes-milter/copyright"))
	if err != nil {
		t.Fatal(err)
	}
	out := debRun(t, time.Minute, "go", "version", "-m", filepath.Join(dir, "usr/bin/opes-milter"))
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "dep" {
			continue
		}
		if !strings.Contains(string(copyright), f[1]) {
			t.Errorf("the copyright file (packaging/copyright) does not name the linked module %s", f[1])
		}
	}
}

// debDaemons lists processes running /usr/bin/opes-milter.
func debDaemons() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procExe(pid) == "/usr/bin/opes-milter" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// debRunDaemon starts the installed daemon as the package's user with
// the installed policy on a free loopback port, sends it one message as
// an MTA would (go-milter's client), wants it accepted with the policy's
// OPES-System trace inserted, and stops the daemon with SIGTERM.
func debRunDaemon(t *testing.T, uid, gid uint32, system string) {
	t.Helper()
	port := FreePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var mu sync.Mutex
	var log bytes.Buffer
	adminAddr := FreeAddr(t)
	cmd := exec.Command("/usr/bin/opes-milter", "-config", "/etc/opes-milter/policy.toml",
		"-listen", fmt.Sprintf("inet:%d@127.0.0.1", port), "-admin-listen", adminAddr)
	cmd.Stdout = syncWriter{&mu, &log}
	cmd.Stderr = syncWriter{&mu, &log}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uid, Gid: gid},
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start /usr/bin/opes-milter: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	daemonLog := func() string { mu.Lock(); defer mu.Unlock(); return log.String() }
	exited := false
	defer func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case err := <-done:
			exited = true
			t.Fatalf("/usr/bin/opes-milter exited at start (%v):\n%s", err, daemonLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/usr/bin/opes-milter not listening on %s after 10 s:\n%s", addr, daemonLog())
		}
		time.Sleep(20 * time.Millisecond)
	}

	mods, act, err := debTransaction(addr)
	if err != nil {
		t.Errorf("milter session with the installed daemon: %v\n%s", err, daemonLog())
	} else {
		if act.Type != gomilter.ActionAccept {
			t.Errorf("end of message: %+v, want accept\n%s", act, daemonLog())
		}
		traced := false
		for _, m := range mods {
			if m.Type == gomilter.ActionInsertHeader && m.HeaderName == "OPES-System" &&
				strings.HasPrefix(strings.TrimLeft(m.HeaderValue, " "), system+"; id=") {
				traced = true
			}
		}
		if !traced {
			t.Errorf("no OPES-System %s trace inserted; changes: %v", system, mods)
		}
	}

	// The packaged policy enables the admin listener.
	if code, body := httpGet(t, "http://"+adminAddr+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz of the installed daemon: %d %q", code, body)
	}

	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Errorf("/usr/bin/opes-milter exit on SIGTERM: %v\n%s", err, daemonLog())
		}
	case <-time.After(10 * time.Second):
		t.Errorf("/usr/bin/opes-milter did not stop on SIGTERM:\n%s", daemonLog())
	}
}

// debTransaction sends one ordinary message from a documentation address
// through the milter at addr.
func debTransaction(addr string) ([]gomilter.ModifyAction, *gomilter.Action, error) {
	s, err := gomilter.NewClient("tcp", addr).Session(nil)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	steps := []func() (*gomilter.Action, error){
		func() (*gomilter.Action, error) {
			return s.Conn("mail.example.org", gomilter.FamilyInet, 25, "198.51.100.7")
		},
		func() (*gomilter.Action, error) { return s.Helo("mail.example.org") },
		func() (*gomilter.Action, error) { return s.Mail("<alice@example.org>", "") },
		func() (*gomilter.Action, error) { return s.Rcpt("<bob@example.net>", "") },
		func() (*gomilter.Action, error) { return s.DataStart() },
		func() (*gomilter.Action, error) { return s.HeaderField("From", "alice@example.org", nil) },
		func() (*gomilter.Action, error) { return s.HeaderField("Subject", "package test", nil) },
		func() (*gomilter.Action, error) { return s.HeaderEnd() },
		func() (*gomilter.Action, error) { return s.BodyChunk([]byte("Hello.\r\n")) },
	}
	for i, step := range steps {
		act, err := step()
		if err != nil {
			return nil, nil, fmt.Errorf("step %d: %w", i, err)
		}
		if act.Type != gomilter.ActionContinue {
			return nil, nil, fmt.Errorf("step %d: %+v, want continue", i, act)
		}
	}
	return s.End()
}
