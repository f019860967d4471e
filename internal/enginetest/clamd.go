package enginetest

import (
	"bufio"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ClamdOptions configure StartClamd.
type ClamdOptions struct {
	// MaxStreamLength is clamd's StreamMaxLength in bytes; 0 means 64 MiB.
	MaxStreamLength int
	// Dir is the directory for the database, config, sockets and logs. If
	// empty, StartClamd makes one and Stop removes it; a given Dir is left
	// to the caller.
	Dir string
}

// Clamd is a clamd with a two-signature database (EICAR by MD5, Token as a
// body pattern); no official database is loaded, so it starts in a fraction
// of a second.
type Clamd struct {
	daemon
	unix string // "unix:/..."
	tcp  string // "tcp:127.0.0.1:port"
}

// StartClamd writes the signature database and a config, starts clamd in
// the foreground on a unix socket and a free loopback TCP port, and waits
// until it answers PING. The error names the apt command when clamd is
// missing.
func StartClamd(opts ClamdOptions) (*Clamd, error) {
	bin, err := LookBin("clamd", ClamdAptHint)
	if err != nil {
		return nil, err
	}
	if opts.MaxStreamLength == 0 {
		opts.MaxStreamLength = 64 << 20
	}
	dir, owns, err := workDir(opts.Dir, "clamd")
	if err != nil {
		return nil, err
	}
	c := &Clamd{daemon: daemon{dir: dir, ownsDir: owns}}
	if err := c.start(bin, opts.MaxStreamLength); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Clamd) start(bin string, maxStream int) error {
	dir := c.dir
	for _, sub := range []string{"db", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	sum := md5.Sum([]byte(EICAR))
	files := map[string]string{
		"db/testbed.hdb": fmt.Sprintf("%x:%d:Testbed.Eicar.MD5\n", sum, len(EICAR)),
		"db/testbed.ndb": "Testbed.Token:0:*:" + hex.EncodeToString([]byte(Token)) + "\n",
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	sock := filepath.Join(dir, "clamd.sock")
	c.unix, c.tcp = "unix:"+sock, fmt.Sprintf("tcp:127.0.0.1:%d", port)
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
			return err
		}
	}
	c.cmd = exec.Command(bin, "-c", filepath.Join(dir, "clamd.conf"))
	dieWithParent(c.cmd)
	if err := c.daemon.start("clamd.out"); err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c.exited() {
			return fmt.Errorf("clamd exited at start:\n%s", TailFile(filepath.Join(dir, "clamd.out"), 30))
		}
		err := clamdPing(sock)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clamd did not answer PING within 20 s: %v\n%s", err, TailFile(filepath.Join(dir, "clamd.out"), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clamdPing speaks zPING on the unix socket, expecting "PONG".
func clamdPing(sock string) error {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("zPING\x00")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString(0)
	if err != nil {
		return err
	}
	if reply = strings.TrimRight(reply, "\x00"); reply != "PONG" {
		return fmt.Errorf("unexpected answer %q", reply)
	}
	return nil
}

// TCP is the clamd socket on loopback in the clamav service's syntax
// ("tcp:127.0.0.1:PORT").
func (c *Clamd) TCP() string { return c.tcp }

// Unix is the clamd unix socket in the clamav service's syntax
// ("unix:/path"); it is mode 0600, for clamd's user.
func (c *Clamd) Unix() string { return c.unix }

// Stop stops clamd (SIGTERM, SIGKILL after 5 s), waits for the exit and
// removes the directory StartClamd made. It may be called more than once.
func (c *Clamd) Stop() { c.stop(5 * time.Second) }

// Kill stops clamd at once, as a crash would.
func (c *Clamd) Kill() { c.kill() }

// Logs returns the tails of clamd's output and log file.
func (c *Clamd) Logs() string { return logs(c.dir, 30, "clamd.out", "clamd.log") }
