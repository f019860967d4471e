package clamav

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The tests run against a real clamd, offline: a signature database of
// two custom signatures is enough for clamd to start (in ~0.1 s), and no
// official database is ever downloaded.
const (
	eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	token = "MILTER-TESTBED-VIRUS-TOKEN"

	eicarSig = "Testbed.Eicar.MD5.UNOFFICIAL"
	tokenSig = "Testbed.Token.UNOFFICIAL"

	// streamMax is the test clamd's StreamMaxLength: above the 30 MB
	// message of TestLargeMessage.
	streamMax = 64 << 20
)

// clamd is one running test daemon.
type clamd struct {
	dir  string
	unix string // "unix:/..."
	tcp  string // "tcp:127.0.0.1:port"
	cmd  *exec.Cmd
	done chan struct{}
}

// shared is the daemon most tests use; TestMain starts it.
var shared *clamd

func TestMain(m *testing.M) {
	var err error
	shared, err = startClamd(streamMax)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: opes/clamav tests need a real clamd: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// clamdPath finds clamd; it lives in /usr/sbin, often not on a user's PATH.
func clamdPath() (string, error) {
	if p, err := exec.LookPath("clamd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/clamd", "/usr/local/sbin/clamd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("clamd not found on PATH or in /usr/sbin; install it with: apt-get install --no-install-recommends clamav-daemon (it is started by the tests, never as a system service)")
}

// startClamd writes the signature database and a config into a fresh
// directory and starts clamd in the foreground on a unix socket and a
// free loopback TCP port.
func startClamd(maxStream int) (*clamd, error) {
	bin, err := clamdPath()
	if err != nil {
		return nil, err
	}
	// Not t.TempDir: a unix socket path must stay under 108 octets.
	dir, err := os.MkdirTemp("", "clamd")
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"db", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	sum := md5.Sum([]byte(eicar))
	files := map[string]string{
		"db/testbed.hdb": fmt.Sprintf("%x:%d:Testbed.Eicar.MD5\n", sum, len(eicar)),
		"db/testbed.ndb": "Testbed.Token:0:*:" + hex.EncodeToString([]byte(token)) + "\n",
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "clamd.sock")
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
		fmt.Sprintf("StreamMaxLength %d", maxStream),
		"MaxScanSize 200M",
		"MaxFileSize 200M",
		"ScanMail yes",
		"SelfCheck 0",
		"Bytecode no",
		"",
	}, "\n")
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "clamd.conf"))
	out, err := os.Create(filepath.Join(dir, "clamd.out"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = out, out
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &clamd{dir: dir, unix: "unix:" + sock, tcp: fmt.Sprintf("tcp:127.0.0.1:%d", port), cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = out.Close(); close(c.done) }()
	client, _ := NewClient(c.unix)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-c.done:
			log, _ := os.ReadFile(filepath.Join(dir, "clamd.out"))
			return nil, fmt.Errorf("clamd exited at start: %s", log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := client.Ping(ctx)
		cancel()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("clamd did not answer PING within 20 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops the daemon at once, as a crash would.
func (c *clamd) kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

func (c *clamd) stop() {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(os.Interrupt)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			c.kill()
		}
	}
	_ = os.RemoveAll(c.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
