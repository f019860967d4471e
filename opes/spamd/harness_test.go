package spamd

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
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests run against a real spamd: the point of the package is to
// speak its protocol, and a fake would only test our reading of the
// documentation. One spamd serves the whole package (it takes about 2 s
// to start); it is started on first use, so the parser tests and the fuzz
// target do not pay for it.
//
// The setup is offline: the rules the Debian package ships, -L (local
// tests only, no DNS/RBL), no sa-update, no Bayes, a temporary site
// configuration. Packages: spamassassin spamd spamc.

const aptHint = "apt-get install -y --no-install-recommends spamassassin spamd spamc"

var testSpamd struct {
	once    sync.Once
	err     error
	dir     string
	tcp     string // 127.0.0.1:port
	sock    string // unix socket path
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopSpamd()
	os.Exit(code)
}

// needSpamd returns the TCP address and unix socket path of the shared
// spamd, failing the test (not skipping it) when spamd cannot run.
func needSpamd(t testing.TB) (tcp, sock string) {
	t.Helper()
	testSpamd.once.Do(func() { testSpamd.err = startSpamd() })
	if testSpamd.err != nil {
		t.Fatalf("spamd for the tests: %v", testSpamd.err)
	}
	return testSpamd.tcp, testSpamd.sock
}

func startSpamd() error {
	bin, err := exec.LookPath("spamd")
	if err != nil {
		return fmt.Errorf("spamd is not installed (%v); install it with: %s", err, aptHint)
	}
	dir, err := os.MkdirTemp("", "opes-spamd-test-")
	if err != nil {
		return err
	}
	testSpamd.dir = dir
	site := filepath.Join(dir, "siteconfig")
	home := filepath.Join(dir, "home")
	for _, d := range []string{site, home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	// --siteconfigpath replaces /etc/spamassassin, which also holds the
	// *.pre files that load the plugins: copy them.
	pres, _ := filepath.Glob("/etc/spamassassin/*.pre")
	if len(pres) == 0 {
		return fmt.Errorf("no /etc/spamassassin/*.pre plugin loaders; install: %s", aptHint)
	}
	for _, p := range pres {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(site, filepath.Base(p)), b, 0o644); err != nil {
			return err
		}
	}
	local := "dns_available no\nskip_rbl_checks 1\nuse_bayes 0\nbayes_auto_learn 0\n" +
		"use_razor2 0\nuse_pyzor 0\nrequired_score 5.0\n"
	if err := os.WriteFile(filepath.Join(site, "local.cf"), []byte(local), 0o644); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	testSpamd.tcp = "127.0.0.1:" + strconv.Itoa(port)
	testSpamd.sock = filepath.Join(dir, "spamd.sock")
	testSpamd.logPath = filepath.Join(dir, "spamd.log")
	args := []string{"-L", "-x", "-H", home, "--siteconfigpath=" + site,
		"--listen=" + testSpamd.tcp, "--listen=" + testSpamd.sock, "--socketmode=0666",
		"--allowed-ips=127.0.0.1", "--max-children=2", "--min-children=1", "--min-spare=1", "--max-spare=2",
		"--syslog=" + testSpamd.logPath}
	if os.Geteuid() == 0 {
		// spamd refuses to keep root; the Debian package creates this user.
		u, err := user.Lookup("debian-spamd")
		if err != nil {
			return fmt.Errorf("running as root needs the debian-spamd user (%v); install: %s", err, aptHint)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, d := range []string{dir, home} {
			if err := os.Chown(d, uid, gid); err != nil {
				return err
			}
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
		args = append(args, "-u", "debian-spamd")
	}
	cmd := exec.Command(bin, args...)
	out, err := os.Create(filepath.Join(dir, "spamd.out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start spamd: %w", err)
	}
	testSpamd.cmd = cmd
	testSpamd.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(testSpamd.exited) }()
	for time.Since(start) < 60*time.Second {
		select {
		case <-testSpamd.exited:
			return fmt.Errorf("spamd exited during startup:\n%s", spamdLogs())
		case <-time.After(50 * time.Millisecond):
		}
		if ping(testSpamd.tcp) == nil {
			fmt.Fprintf(os.Stderr, "spamd test server up on %s and %s after %v\n", testSpamd.tcp, testSpamd.sock, time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
	return fmt.Errorf("spamd did not answer PING within 60 s:\n%s", spamdLogs())
}

func spamdLogs() string {
	var b strings.Builder
	for _, f := range []string{"spamd.out", "spamd.log"} {
		data, _ := os.ReadFile(filepath.Join(testSpamd.dir, f))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "--- %s\n%s", f, data)
	}
	return b.String()
}

func stopSpamd() {
	if testSpamd.cmd != nil {
		// The parent takes its preforked children down on SIGTERM.
		_ = testSpamd.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-testSpamd.exited:
		case <-time.After(10 * time.Second):
			_ = testSpamd.cmd.Process.Kill()
			<-testSpamd.exited
		}
	}
	if testSpamd.dir != "" {
		_ = os.RemoveAll(testSpamd.dir)
	}
}

// ping speaks PING SPAMC/1.5, expecting "SPAMD/1.5 0 PONG".
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING SPAMC/1.5\r\n\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, "PONG") {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}

// freePort asks the kernel for an unused loopback port. Another process
// could take it before spamd binds; startup then fails with a clear log.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
