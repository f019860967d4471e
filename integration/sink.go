package integration

import (
	"bytes"
	"fmt"
	"net"
	"net/mail"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Sink is a running smtp-sink (from the postfix package) that accepts every
// message and dumps each one to its own file.
type Sink struct {
	dir     string // base dir (removed at cleanup)
	dumpDir string // one file per message, written by user postfix
	logPath string // smtp-sink's stdout and stderr
	addr    string
	token   string

	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd.Wait returns
	waitErr  error
	wd       *watchdog
	stopped  bool
	startDur time.Duration
}

// StartSink starts smtp-sink on a free 127.0.0.1 port and stops it at
// cleanup. It fails the test if smtp-sink cannot start.
//
// Dump files are named DUMPDIR/YYYYmmddHHMMSS.RANDOMHEX (smtp-sink appends a
// pseudo-random hex number to the strftime template). A file exists, and is
// held open by smtp-sink, from the start of the transaction; Messages only
// returns files smtp-sink has closed.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	Require(t, "smtp-sink")
	bin := mustBin(t, "smtp-sink")
	s := &Sink{token: randomToken()}
	// Cleanups run last-registered first: stop, remove the directory, and
	// only then disarm the watchdog, so a crash at any point is covered.
	t.Cleanup(func() { s.wd.disarm() })
	s.dir = tempDir(t, false)
	s.dumpDir = filepath.Join(s.dir, "dump")
	s.logPath = filepath.Join(s.dir, "smtp-sink.log")
	if err := mkdirPostfix(s.dumpDir); err != nil {
		t.Fatalf("integration: sink dump dir: %v", err)
	}
	t.Cleanup(s.Stop)

	t0 := time.Now()
	err := startOnFreePort(t, "smtp-sink", []string{s.logPath},
		func(addr string) error { s.addr = addr; return s.start(bin) }, s.kill)
	if err != nil {
		t.Fatalf("integration: smtp-sink did not start: %v\nsmtp-sink log:\n%s", err, tailFile(s.logPath, 20))
	}
	s.startDur = time.Since(t0)

	wd, err := startWatchdog(`if grep -q smtp-sink "/proc/$1/cmdline" 2>/dev/null; then kill "$1"; fi
rm -rf "$2"
`, strconv.Itoa(s.cmd.Process.Pid), s.dir)
	if err != nil {
		t.Fatalf("integration: watchdog: %v", err)
	}
	s.wd = wd
	return s
}

func (s *Sink) start(bin string) error {
	logOff := fileSize(s.logPath) // the log is appended to: this attempt's part starts here
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// -u is mandatory as root; -h puts our token in the greeting; -d dumps
	// one file per message; 256 is the listen backlog.
	cmd := exec.Command(bin, "-4", "-u", PostfixUser, "-h", "sink-"+s.token+".test",
		"-d", filepath.Join(s.dumpDir, "%Y%m%d%H%M%S."), s.addr, "256")
	cmd.Stdout = logf // a file, not a pipe: Wait must not depend on copying goroutines
	cmd.Stderr = logf
	// Own process group: a ^C to the terminal reaches the watchdog's
	// cleanup path, not a half-killed sink.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { s.waitErr = cmd.Wait(); close(s.exited) }()
	_, err = waitBanner(s.addr, s.token, 5*time.Second, func() error {
		select {
		case <-s.exited:
			return fmt.Errorf("smtp-sink exited: %v", s.waitErr)
		default:
		}
		// smtp-sink sleeps 1 s before it exits on a fatal error
		if l := readFrom(s.logPath, logOff); strings.Contains(l, "fatal:") {
			return fmt.Errorf("smtp-sink: %s", strings.TrimSpace(l))
		}
		return nil
	})
	return err
}

// kill stops the current smtp-sink process, SIGTERM then SIGKILL.
func (s *Sink) kill() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(2 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Stop stops smtp-sink (by PID). It is called at cleanup; tests may call it
// earlier to make the next hop unavailable. The dump files stay readable.
func (s *Sink) Stop() {
	if s.stopped {
		return
	}
	s.stopped = true
	s.kill()
}

// Addr returns "127.0.0.1:PORT".
func (s *Sink) Addr() string { return s.addr }

// Port returns the TCP port.
func (s *Sink) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Dir returns the dump directory.
func (s *Sink) Dir() string { return s.dumpDir }

// StartupTime is how long StartSink took to see the greeting.
func (s *Sink) StartupTime() time.Duration { return s.startDur }

// Messages returns the raw dump files of all complete messages, oldest
// first. A dump is complete when smtp-sink no longer holds the file open.
func (s *Sink) Messages() [][]byte {
	names := s.complete()
	out := make([][]byte, 0, len(names))
	for _, n := range names {
		if b, err := os.ReadFile(n); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// Dumps is Messages, parsed.
func (s *Sink) Dumps() []Dump {
	var out []Dump
	for _, raw := range s.Messages() {
		out = append(out, ParseDump(raw))
	}
	return out
}

func (s *Sink) complete() []string {
	ents, err := os.ReadDir(s.dumpDir)
	if err != nil {
		return nil
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		files = append(files, file{filepath.Join(s.dumpDir, e.Name()), fi.ModTime()})
	}
	// List first, then look at the open files: a dump file is created open,
	// so a listed file that is not open any more is finished.
	var open map[string]bool
	if s.cmd != nil && pidAlive(s.cmd.Process.Pid) {
		open, _ = openFiles(s.cmd.Process.Pid)
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].path < files[j].path
	})
	var out []string
	for _, f := range files {
		if !open[f.path] {
			out = append(out, f.path)
		}
	}
	return out
}

// WaitMessage polls the dump directory until a complete message for which
// match returns true (nil matches any) appears, and returns its raw dump.
// It fails the test on timeout, listing what did arrive.
func (s *Sink) WaitMessage(t testing.TB, match func(raw []byte) bool, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := s.Messages()
		for _, m := range msgs {
			if match == nil || match(m) {
				return m
			}
		}
		if time.Now().After(deadline) {
			var sum []string
			for _, m := range msgs {
				d := ParseDump(m)
				sum = append(sum, fmt.Sprintf("from=<%s> to=%v subject=%q", d.Mail, d.Rcpts, d.Header().Get("Subject")))
			}
			t.Fatalf("integration: no matching message at the sink %s within %v; %d message(s) there:\n  %s",
				s.addr, timeout, len(msgs), strings.Join(sum, "\n  "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitDump is WaitMessage with a matcher on the parsed dump.
func (s *Sink) WaitDump(t testing.TB, match func(Dump) bool, timeout time.Duration) Dump {
	t.Helper()
	raw := s.WaitMessage(t, func(raw []byte) bool { return match == nil || match(ParseDump(raw)) }, timeout)
	return ParseDump(raw)
}

// HasHeader returns a Dump matcher: the message has a header field name
// whose value equals value.
func HasHeader(name, value string) func(Dump) bool {
	return func(d Dump) bool {
		for _, v := range d.Header()[textproto.CanonicalMIMEHeaderKey(name)] {
			if strings.TrimSpace(v) == value {
				return true
			}
		}
		return false
	}
}

// Dump is one smtp-sink dump file, split into the envelope smtp-sink
// recorded and the message as received.
type Dump struct {
	ClientAddr string     // X-Client-Addr
	Proto      string     // X-Client-Proto: SMTP, ESMTP or LMTP
	Helo       string     // X-Helo-Args
	Mail       string     // MAIL FROM address, without <>
	MailParams []string   // ESMTP parameters of MAIL, e.g. "SIZE=123", "BODY=8BITMIME"
	Rcpts      []string   // RCPT TO addresses, without <>, in order
	RcptParams [][]string // ESMTP parameters of each RCPT
	// Message is the message as received (header and body), dot-unstuffed,
	// with "\n" line ends as smtp-sink writes them. It excludes the X-*
	// lines and the Received header smtp-sink prepends, and the empty line
	// it appends.
	Message []byte
	Raw     []byte // the whole file
}

// ParseDump splits an smtp-sink dump file. The file holds, in this order:
// X-Client-Addr, X-Client-Proto, X-Helo-Args (if any), X-Mail-Args, one
// X-Rcpt-Args per RCPT, a three-line "Received: ... (smtp-sink) ..." header,
// the message, and an empty line.
func ParseDump(raw []byte) Dump {
	d := Dump{Raw: raw}
	rest := raw
	for len(rest) > 0 {
		line, after, found := bytes.Cut(rest, []byte("\n"))
		if !found {
			break
		}
		name, val, ok := strings.Cut(string(line), ": ")
		if !ok {
			break
		}
		switch name {
		case "X-Client-Addr":
			d.ClientAddr = val
		case "X-Client-Proto":
			d.Proto = val
		case "X-Helo-Args":
			d.Helo = val
		case "X-Mail-Args":
			d.Mail, d.MailParams = splitPathArgs(val)
		case "X-Rcpt-Args":
			a, p := splitPathArgs(val)
			d.Rcpts = append(d.Rcpts, a)
			d.RcptParams = append(d.RcptParams, p)
		case "Received":
			// smtp-sink's own Received header: "from ...", "\tby HOST
			// (smtp-sink) with PROTO id ID;", "\tDATE". Skip it and its
			// continuation lines, only if it really is smtp-sink's.
			next := after
			isSink := false
			for len(next) > 0 && (next[0] == '\t' || next[0] == ' ') {
				l, a2, _ := bytes.Cut(next, []byte("\n"))
				if bytes.Contains(l, []byte("(smtp-sink)")) {
					isSink = true
				}
				next = a2
			}
			if isSink {
				rest = next
			}
			goto done
		default:
			goto done
		}
		rest = after
	}
done:
	if len(rest) > 0 && rest[len(rest)-1] == '\n' {
		// the empty line smtp-sink appends
		if bytes.HasSuffix(rest, []byte("\n\n")) {
			rest = rest[:len(rest)-1]
		}
	}
	d.Message = rest
	return d
}

// splitPathArgs splits "<a@b> SIZE=1 BODY=8BITMIME" into "a@b" and params.
func splitPathArgs(s string) (string, []string) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return "", nil
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(f[0], "<"), ">")
	if len(f) == 1 {
		return addr, nil
	}
	return addr, f[1:]
}

// Header parses the message header (net/mail, so keys are canonical and
// values unfolded). It returns an empty header if the message does not parse.
func (d Dump) Header() mail.Header {
	m, err := mail.ReadMessage(bytes.NewReader(d.Message))
	if err != nil {
		return mail.Header{}
	}
	return m.Header
}

// Body returns the message body (after the first empty line).
func (d Dump) Body() []byte {
	if i := bytes.Index(d.Message, []byte("\n\n")); i >= 0 {
		return d.Message[i+2:]
	}
	return nil
}

// HeaderLines returns the raw header lines of the message in order,
// continuation lines kept as they are, e.g. to check where a header field was
// inserted.
func (d Dump) HeaderLines() []string {
	h, _, _ := bytes.Cut(d.Message, []byte("\n\n"))
	if len(h) == 0 {
		return nil
	}
	return strings.Split(string(h), "\n")
}
