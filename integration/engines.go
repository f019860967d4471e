package integration

import (
	"bufio"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes/clamav"
)

// The content engines the end-to-end tests scan with: a real clamd and a
// real spamd, both offline, private to the test that starts them, on free
// loopback ports, in directories under TempDir. The recipes are those of
// the opes/clamav and opes/spamd unit tests.

// Test patterns the engines recognise.
const (
	// EICAR is the standard antivirus test file; the test clamd knows it
	// by MD5 as ClamdEicarSig.
	EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	// ClamdToken is found anywhere in a scanned file as ClamdTokenSig.
	ClamdToken = "MILTER-TESTBED-VIRUS-TOKEN"

	ClamdEicarSig = "Testbed.Eicar.MD5.UNOFFICIAL"
	ClamdTokenSig = "Testbed.Token.UNOFFICIAL"

	// GTUBE makes SpamAssassin score a message about 1000.
	GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
)

const (
	clamdAptHint = "apt-get install -y --no-install-recommends clamav-daemon (clamd is started by the tests, never as a system service)"
	spamdAptHint = "apt-get install -y --no-install-recommends spamassassin spamd spamc"
)

// Clamd is a clamd started by a test with a two-signature database
// (EICAR by MD5, ClamdToken as a body pattern); no official database is
// loaded, so it starts in a fraction of a second.
type Clamd struct {
	dir  string
	unix string // "unix:/..."
	tcp  string // "tcp:127.0.0.1:port"
	cmd  *exec.Cmd
	done chan struct{}
}

// StartClamd starts clamd in the foreground and waits until it answers
// PING. It fails the test, with the apt command, when clamd is missing.
// It is stopped at cleanup.
func StartClamd(t testing.TB) *Clamd {
	t.Helper()
	bin, err := LookBin("clamd")
	if err != nil {
		t.Fatalf("integration: clamd is needed for this test (%v); install it with: %s", err, clamdAptHint)
	}
	dir := TempDir(t)
	for _, sub := range []string{"db", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sum := md5.Sum([]byte(EICAR))
	files := map[string]string{
		"db/testbed.hdb": fmt.Sprintf("%x:%d:Testbed.Eicar.MD5\n", sum, len(EICAR)),
		"db/testbed.ndb": "Testbed.Token:0:*:" + hex.EncodeToString([]byte(ClamdToken)) + "\n",
	}
	sock := filepath.Join(dir, "clamd.sock")
	port := FreePort(t)
	files["clamd.conf"] = strings.Join([]string{
		"DatabaseDirectory " + filepath.Join(dir, "db"),
		"OfficialDatabaseOnly no",
		"LocalSocket " + sock,
		"LocalSocketMode 600",
		"FixStaleSocket yes",
		fmt.Sprintf("TCPSocket %d", port),
		"TCPAddr 127.0.0.1",
		"Foreground yes",
		"PidFile " + filepath.Join(dir, "clamd.pid"),
		"LogFile " + filepath.Join(dir, "clamd.log"),
		"LogTime yes",
		"TemporaryDirectory " + filepath.Join(dir, "tmp"),
		"MaxThreads 4",
		"StreamMaxLength 64M",
		"MaxScanSize 200M",
		"MaxFileSize 200M",
		"ScanMail yes",
		"SelfCheck 0",
		"Bytecode no",
		"",
	}, "\n")
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := os.Create(filepath.Join(dir, "clamd.out"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Clamd{dir: dir, unix: "unix:" + sock, tcp: fmt.Sprintf("tcp:127.0.0.1:%d", port), done: make(chan struct{})}
	c.cmd = exec.Command(bin, "-c", filepath.Join(dir, "clamd.conf"))
	c.cmd.Stdout, c.cmd.Stderr = out, out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := c.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("integration: start %s: %v", bin, err)
	}
	go func() { _ = c.cmd.Wait(); _ = out.Close(); close(c.done) }()
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("clamd log:\n%s", tailFile(filepath.Join(dir, "clamd.log"), 30))
		}
	})
	client, err := clamav.NewClient(c.tcp)
	if err != nil {
		t.Fatal(err)
	}
	deadline := start.Add(20 * time.Second)
	for {
		select {
		case <-c.done:
			t.Fatalf("integration: clamd exited at start:\n%s", tailFile(filepath.Join(dir, "clamd.out"), 30))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := client.Ping(ctx)
		cancel()
		if err == nil {
			t.Logf("integration: clamd up on %s after %v", c.tcp, time.Since(start).Round(time.Millisecond))
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("integration: clamd did not answer PING within 20 s: %v\n%s", err, tailFile(filepath.Join(dir, "clamd.out"), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TCP is the clamd socket on loopback in the clamav service's syntax
// ("tcp:127.0.0.1:PORT").
func (c *Clamd) TCP() string { return c.tcp }

// Unix is the clamd unix socket in the clamav service's syntax
// ("unix:/path"); it is mode 0600, for root.
func (c *Clamd) Unix() string { return c.unix }

// Stop stops clamd (SIGTERM, SIGKILL after 5 s) and waits for the exit.
// It may be called more than once.
func (c *Clamd) Stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Spamd is a SpamAssassin spamd started by a test, offline: the rules the
// Debian package ships, local tests only (-L), no Bayes, no Razor/Pyzor,
// a private site configuration with required_score 5.0.
type Spamd struct {
	dir    string
	addr   string // 127.0.0.1:port
	sock   string // unix socket path
	cmd    *exec.Cmd
	exited chan struct{}
	wd     *watchdog
}

// StartSpamd starts spamd and waits until it answers PING (about 2 s). It
// fails the test, with the apt command, when spamd is missing. It is
// stopped at cleanup.
func StartSpamd(t testing.TB) *Spamd {
	t.Helper()
	bin, err := LookBin("spamd")
	if err != nil {
		t.Fatalf("integration: spamd is needed for this test (%v); install it with: %s", err, spamdAptHint)
	}
	pres, _ := filepath.Glob("/etc/spamassassin/*.pre")
	if len(pres) == 0 {
		t.Fatalf("integration: no /etc/spamassassin/*.pre plugin loaders; install: %s", spamdAptHint)
	}
	dir := TempDir(t)
	site := filepath.Join(dir, "siteconfig")
	home := filepath.Join(dir, "home")
	for _, d := range []string{site, home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// --siteconfigpath replaces /etc/spamassassin, which also holds the
	// *.pre files that load the plugins: copy them.
	for _, p := range pres {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(site, filepath.Base(p)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	local := "dns_available no\nskip_rbl_checks 1\nuse_bayes 0\nbayes_auto_learn 0\n" +
		"use_razor2 0\nuse_pyzor 0\nrequired_score 5.0\n"
	if err := os.WriteFile(filepath.Join(site, "local.cf"), []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Spamd{dir: dir, addr: FreeAddr(t), sock: filepath.Join(dir, "spamd.sock"), exited: make(chan struct{})}
	args := []string{"-L", "-x", "-H", home, "--siteconfigpath=" + site,
		"--listen=" + s.addr, "--listen=" + s.sock, "--socketmode=0666",
		"--allowed-ips=127.0.0.1", "--max-children=2", "--min-children=1", "--min-spare=1", "--max-spare=2",
		"--syslog=" + filepath.Join(dir, "spamd.log")}
	if os.Geteuid() == 0 {
		// spamd refuses to keep root; the Debian package creates this user.
		u, err := user.Lookup("debian-spamd")
		if err != nil {
			t.Fatalf("integration: spamd as root needs the debian-spamd user (%v); install: %s", err, spamdAptHint)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, d := range []string{dir, home} {
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args, "-u", "debian-spamd")
	}
	out, err := os.Create(filepath.Join(dir, "spamd.out"))
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	// spamd changes its user, which clears a parent-death signal: a
	// watchdog stops it if the test binary dies without its cleanups.
	start := time.Now()
	if err := s.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("integration: start spamd: %v", err)
	}
	go func() { _ = s.cmd.Wait(); _ = out.Close(); close(s.exited) }()
	s.wd, err = startWatchdog(`if grep -q spamd "/proc/$1/cmdline" 2>/dev/null; then kill "$1"; fi
`, strconv.Itoa(s.cmd.Process.Pid))
	if err != nil {
		s.Stop()
		t.Fatalf("integration: watchdog: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("spamd logs:\n%s", s.logs())
		}
	})
	for time.Since(start) < 60*time.Second {
		select {
		case <-s.exited:
			t.Fatalf("integration: spamd exited during startup:\n%s", s.logs())
		case <-time.After(50 * time.Millisecond):
		}
		if spamdPing(s.addr) == nil {
			t.Logf("integration: spamd up on %s and %s after %v", s.addr, s.sock, time.Since(start).Round(time.Millisecond))
			return s
		}
	}
	t.Fatalf("integration: spamd did not answer PING within 60 s:\n%s", s.logs())
	return nil
}

// Addr is spamd's TCP address, "127.0.0.1:PORT".
func (s *Spamd) Addr() string { return s.addr }

// Socket is the path of spamd's unix socket (mode 0666).
func (s *Spamd) Socket() string { return s.sock }

// Stop stops spamd (SIGTERM takes the preforked children down; SIGKILL
// after 10 s). It may be called more than once.
func (s *Spamd) Stop() {
	defer func() {
		s.wd.disarm()
		s.wd = nil
	}()
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *Spamd) logs() string {
	var b strings.Builder
	for _, f := range []string{"spamd.out", "spamd.log"} {
		fmt.Fprintf(&b, "--- %s\n%s\n", f, tailFile(filepath.Join(s.dir, f), 40))
	}
	return b.String()
}

// spamdPing speaks PING SPAMC/1.5, expecting "SPAMD/1.5 0 PONG".
func spamdPing(addr string) error {
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
