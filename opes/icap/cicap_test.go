package icap

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// The tests run against a real c-icap (Debian's c-icap with
// libc-icap-mod-contentfiltering and libc-icap-mod-virus-scan), started
// by TestMain in a temporary directory on a free loopback port, with
// three services:
//
//   - echo: returns every message unchanged;
//   - srv_cfg_filter (content filtering): blocks a message containing
//     blockWord and replaces every "secret-<digits>" by "[redacted]";
//   - virus_scan: asks a real clamd (internal/enginetest) and blocks the
//     EICAR test file and the test token.
const (
	cicapAptHint = "apt-get install -y --no-install-recommends c-icap libc-icap-mod-contentfiltering libc-icap-mod-virus-scan"
	blockWord    = "FORBIDDEN-WORD-4711"
	redacted     = "[redacted]"
)

// shared is the c-icap most tests use; sharedErr says why there is none.
var (
	shared    *cicap
	sharedErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs the fuzz target only: no daemons.
		os.Exit(m.Run())
	}
	code := func() int {
		bin, err := enginetest.LookBin("c-icap", cicapAptHint)
		if err != nil {
			sharedErr = err
			return m.Run() // the tests that need c-icap skip, saying why
		}
		clamd, err := enginetest.StartClamd(enginetest.ClamdOptions{})
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: opes/icap tests need a real clamd for c-icap's virus_scan: %v\n", err)
			return 1
		}
		defer clamd.Stop()
		began := time.Now()
		shared, err = startCICAP(bin, strings.TrimPrefix(clamd.Unix(), "unix:"))
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: start c-icap: %v\n", err)
			return 1
		}
		defer shared.stop()
		fmt.Fprintf(os.Stderr, "c-icap answered OPTIONS %s after start\n", time.Since(began).Round(time.Millisecond))
		return m.Run()
	}()
	os.Exit(code)
}

// needCICAP skips a test when the c-icap binary is not installed.
func needCICAP(t testing.TB) *cicap {
	t.Helper()
	if shared == nil {
		t.Skipf("c-icap is not installed: %v", sharedErr)
	}
	return shared
}

// cicap is a c-icap process of the tests.
type cicap struct {
	dir  string
	addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	done chan struct{}
}

// url returns the ICAP URI of one of the services.
func (c *cicap) url(service string) string { return "icap://" + c.addr + "/" + service }

func startCICAP(bin, clamdSocket string) (*cicap, error) {
	dir, err := os.MkdirTemp("", "cicap")
	if err != nil {
		return nil, err
	}
	port, err := enginetest.FreePort()
	if err != nil {
		return nil, err
	}
	c := &cicap{dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	modules := "/usr/lib/x86_64-linux-gnu/c_icap"
	if m, _ := filepath.Glob("/usr/lib/*/c_icap/srv_echo.so"); len(m) > 0 {
		modules = filepath.Dir(m[0])
	}
	for _, so := range []string{"srv_echo.so", "srv_content_filtering.so", "virus_scan.so", "clamd_mod.so"} {
		if _, err := os.Stat(filepath.Join(modules, so)); err != nil {
			return nil, fmt.Errorf("c-icap module %s not found in %s; install the modules with: %s", so, modules, cicapAptHint)
		}
	}
	conf := []string{
		"PidFile " + filepath.Join(dir, "c-icap.pid"),
		"CommandsSocket " + filepath.Join(dir, "c-icap.ctl"),
		"Port " + c.addr,
		"TmpDir " + dir,
		"ServerLog " + filepath.Join(dir, "server.log"),
		"AccessLog " + filepath.Join(dir, "access.log"),
		"ModulesDir " + modules,
		"ServicesDir " + modules,
		"TemplateDir /usr/share/c_icap/templates/",
		"LoadMagicFile /etc/c-icap/c-icap.magic",
		"Timeout 30",
		"KeepAliveTimeout 60",
		"StartServers 1",
		"MaxServers 1",
		"ThreadsPerChild 16",
		"MinSpareThreads 2",
		"MaxSpareThreads 16",
		"DebugLevel 1",
		"Service echo srv_echo.so",

		"Service srv_cfg_filter srv_content_filtering.so",
		"acl loopback src 127.0.0.0/255.0.0.0",
		"srv_content_filtering.MaxBodyData 8M",
		"srv_content_filtering.Match Forbidden body /" + blockWord + "/ score=10",
		"srv_content_filtering.Match Secret body /secret-[0-9]+/g score=5 info{R}=" + redacted,
		"srv_content_filtering.Profile mail block score{Forbidden>5}",
		"srv_content_filtering.Profile mail replace score{Secret>1} replaceInfo=R",
		"srv_content_filtering.ProfileOption mail AnyContentType",
		"srv_content_filtering.ProfileAccess mail loopback",

		"Module common clamd_mod.so",
		"clamd_mod.ClamdSocket " + clamdSocket,
		"Service antivirus_module virus_scan.so",
		"virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE",
		"virus_scan.MaxObjectSize 20M",
		"",
	}
	if err := os.WriteFile(filepath.Join(dir, "c-icap.conf"), []byte(strings.Join(conf, "\n")), 0o644); err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(dir, "c-icap.out"))
	if err != nil {
		return nil, err
	}
	// -N: stay in the foreground, so the test owns the process. c-icap
	// forks its worker children into the same process group, which
	// stop signals as a whole. It runs as root here without a User
	// directive (it then keeps the caller's identity), and as any
	// other user just as well: every path it writes is in dir.
	c.cmd = exec.Command(bin, "-N", "-f", filepath.Join(dir, "c-icap.conf"))
	c.cmd.Stdout, c.cmd.Stderr = out, out
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); _ = out.Close(); close(c.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-c.done:
			err := fmt.Errorf("c-icap exited at start:\n%s", c.logs())
			c.stop()
			return nil, err
		default:
		}
		err := optionsPing(c.addr, c.url("echo"))
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("c-icap did not answer OPTIONS within 20 s: %v\n%s", err, c.logs())
			c.stop()
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// optionsPing asks for the OPTIONS of a service and wants a 200.
func optionsPing(addr, uri string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "OPTIONS %s ICAP/1.0\r\nHost: %s\r\n\r\n", uri, addr); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "ICAP/1.0 200") {
		return fmt.Errorf("OPTIONS answered %q", strings.TrimSpace(line))
	}
	return nil
}

// stop ends c-icap's process group: SIGTERM, SIGKILL after 5 s.
func (c *cicap) stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		pgid := c.cmd.Process.Pid
		select {
		case <-c.done:
		default:
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				<-c.done
			}
		}
		// Children that outlived the monitor process.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	_ = os.RemoveAll(c.dir)
}

func (c *cicap) logs() string {
	var b strings.Builder
	for _, f := range []string{"c-icap.out", "server.log"} {
		fmt.Fprintf(&b, "--- %s\n%s\n", f, enginetest.TailFile(filepath.Join(c.dir, f), 30))
	}
	return b.String()
}
