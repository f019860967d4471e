package integration

import (
	"errors"
	"fmt"
	"net"
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

// PostfixOptions configures StartPostfix.
type PostfixOptions struct {
	// Milter is the value of smtpd_milters and non_smtpd_milters, in
	// Postfix syntax: "inet:127.0.0.1:PORT" or "unix:/abs/path" (chroot is
	// off, so unix paths are absolute). Empty means no milter. smtpd runs
	// as user postfix: put a unix socket in TempDir(t) (short, mode 0755)
	// and make it writable by postfix (e.g. chmod 0666).
	Milter string
	// DefaultAction is milter_default_action: "tempfail" (the default),
	// "accept", "reject" or "quarantine".
	DefaultAction string
	// RelayTo is the next hop, "127.0.0.1:PORT" (usually Sink.Addr()); it
	// becomes relayhost = [127.0.0.1]:PORT. Empty means Postfix accepts
	// mail and keeps it in its queue, undelivered (defer_transports).
	RelayTo string
	// Extra main.cf parameters; they override the harness defaults.
	Extra map[string]string
	// ExtraMaster lines are appended to master.cf verbatim, e.g. a second
	// smtpd on FreeAddr(t) with "-o" overrides.
	ExtraMaster []string
}

// Postfix is a private Postfix instance: its own config, queue, data and log
// directories, smtpd on a free 127.0.0.1 port, no port 25, no DNS, no
// chroot, no local delivery; everything is relayed to RelayTo. Dir holds
// conf/, queue/, data/ and log/; LogPath is the maillog file.
type Postfix struct {
	mtaInstance
	opts     PostfixOptions
	confDir  string
	queueDir string

	postfixBin, postsuperBin, postqueueBin string

	wd        *watchdog
	masterPID int
	logOff    int64 // maillog size when the current start attempt began
}

// StartPostfix starts a private Postfix instance and registers its stop with
// t.Cleanup. It fails the test if Postfix cannot start; on a port race
// (another process bound the port between FreePort and Postfix) it retries
// on another port.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	Require(t, "postfix", "postsuper", "postqueue")
	if opts.DefaultAction == "" {
		opts.DefaultAction = "tempfail"
	}
	p := &Postfix{
		mtaInstance:  mtaInstance{t: t, name: "postfix", logName: "the maillog", token: randomToken()},
		opts:         opts,
		postfixBin:   mustBin(t, "postfix"),
		postsuperBin: mustBin(t, "postsuper"),
		postqueueBin: mustBin(t, "postqueue"),
	}
	// A short path under /tmp: the Postfix daemons (user postfix) must be
	// able to traverse it, and paths stay readable in logs.
	// Cleanups run last-registered first: stop, remove the directory, and
	// only then disarm the watchdog, so a crash at any point is covered.
	t.Cleanup(func() { p.wd.disarm() })
	p.dir = tempDir(t, false)
	p.confDir = filepath.Join(p.dir, "conf")
	p.queueDir = filepath.Join(p.dir, "queue")
	p.logPath = filepath.Join(p.dir, "log", "postfix.log")
	for _, d := range []string{p.confDir, p.queueDir, filepath.Join(p.dir, "log")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("integration: %v", err)
		}
	}
	// data_directory must belong to mail_owner.
	if err := mkdirPostfix(filepath.Join(p.dir, "data")); err != nil {
		t.Fatalf("integration: data dir: %v", err)
	}
	if err := p.writeFile("main.cf", p.mainCF()); err != nil {
		t.Fatalf("integration: main.cf: %v", err)
	}
	// Armed before the first start: if the test binary dies without
	// cleanups, the watchdog stops this instance and removes its directory.
	wd, err := startWatchdog(`"$1" -c "$2" stop >/dev/null 2>&1
rm -rf "$3"
`, p.postfixBin, p.confDir, p.dir)
	if err != nil {
		t.Fatalf("integration: watchdog: %v", err)
	}
	p.wd = wd
	t.Cleanup(p.cleanup)

	t0 := time.Now()
	err = startOnFreePort(t, "postfix", []string{p.logPath},
		func(addr string) error { p.addr = addr; return p.start() }, p.postfixStop)
	if err != nil {
		t.Fatalf("integration: postfix did not start: %v\nmaillog (%s):\n%s", err, p.logPath, tailFile(p.logPath, 30))
	}
	p.startDur = time.Since(t0)
	return p
}

// mainCF returns main.cf: harness defaults overridden by opts.Extra.
func (p *Postfix) mainCF() string {
	type kv struct{ k, v string }
	relayhost, deferTransports := "", ""
	if p.opts.RelayTo != "" {
		relayhost = p.opts.RelayTo
		if host, port, err := net.SplitHostPort(relayhost); err == nil && !strings.HasPrefix(host, "[") {
			relayhost = "[" + host + "]:" + port // [] = no MX lookup
		}
	} else {
		// accept and queue, never deliver (an error:/retry: transport would
		// make smtpd reject the RCPT instead)
		deferTransports = "smtp, relay"
	}
	params := []kv{
		{"compatibility_level", "3.6"},
		{"config_directory", p.confDir},
		{"queue_directory", p.queueDir},
		{"data_directory", filepath.Join(p.dir, "data")},
		// no syslog here: log to a file through the postlog service
		{"maillog_file", p.logPath},
		{"maillog_file_prefixes", filepath.Dir(p.logPath)},
		{"myhostname", "mta.example.test"},
		{"mydomain", "example.test"},
		{"myorigin", "$myhostname"},
		// the token tells our smtpd from anything else on the port
		{"smtpd_banner", "$myhostname ESMTP Postfix opes-it-" + p.token},
		{"inet_interfaces", "127.0.0.1"},
		{"inet_protocols", "ipv4"},
		{"mynetworks", "127.0.0.0/8"},
		{"mydestination", ""},
		{"local_recipient_maps", ""},
		{"local_transport", "error:5.1.1 local delivery disabled in tests"},
		{"alias_maps", ""},
		{"alias_database", ""},
		{"relayhost", relayhost},
		{"defer_transports", deferTransports},
		{"smtpd_relay_restrictions", "permit_mynetworks, reject"},
		{"smtpd_recipient_restrictions", "permit_mynetworks, reject"},
		{"smtp_tls_security_level", "none"},
		{"smtpd_tls_security_level", "none"},
		{"smtpd_peername_lookup", "no"},
		{"smtp_dns_support_level", "disabled"},
		{"biff", "no"},
		{"append_dot_mydomain", "no"},
		{"readme_directory", "no"},
		{"maximal_queue_lifetime", "1h"},
		{"bounce_queue_lifetime", "1h"},
		// tests send many failing commands per session: no penalty sleeps
		{"smtpd_error_sleep_time", "0"},
		{"in_flow_delay", "0"},
		// a deferred message is retried soon, not after minutes
		{"queue_run_delay", "1s"},
		{"minimal_backoff_time", "1s"},
		{"maximal_backoff_time", "5s"},
		{"smtpd_milters", p.opts.Milter},
		{"non_smtpd_milters", p.opts.Milter},
		{"milter_default_action", p.opts.DefaultAction},
		{"milter_protocol", "6"},
		{"milter_connect_timeout", "5s"},
		{"milter_command_timeout", "10s"},
		{"milter_content_timeout", "30s"},
	}
	if deferTransports == "" {
		params = slicesDelete(params, func(x kv) bool { return x.k == "defer_transports" })
	}
	seen := map[string]bool{}
	var b strings.Builder
	b.WriteString("# generated by github.com/opesmilter/opes-milter/integration\n")
	for _, x := range params {
		v := x.v
		if e, ok := p.opts.Extra[x.k]; ok {
			v = e
		}
		seen[x.k] = true
		fmt.Fprintf(&b, "%s = %s\n", x.k, v)
	}
	var extra []string
	for k := range p.opts.Extra {
		if !seen[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		fmt.Fprintf(&b, "%s = %s\n", k, p.opts.Extra[k])
	}
	return b.String()
}

func slicesDelete[T any](s []T, del func(T) bool) []T {
	out := s[:0]
	for _, x := range s {
		if !del(x) {
			out = append(out, x)
		}
	}
	return out
}

// masterCF has chroot "n" everywhere (no jail to populate; unix milter
// paths are absolute), smtpd only on our port and no "smtp inet" (port 25).
func (p *Postfix) masterCF() string {
	var b strings.Builder
	b.WriteString("# service type  private unpriv chroot wakeup maxproc command\n")
	fmt.Fprintf(&b, "%s inet n - n - - smtpd\n", p.addr)
	b.WriteString(`pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
`)
	for _, l := range p.opts.ExtraMaster {
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

// writeFile writes a config file and backdates it: Postfix (dict_load_file)
// does not trust a file modified within the last ~2 s and sleeps in 300 ms
// steps until it is older, which costs seconds per start.
func (p *Postfix) writeFile(name, content string) error {
	path := filepath.Join(p.confDir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return err
	}
	past := time.Now().Add(-10 * time.Second)
	return os.Chtimes(path, past, past)
}

func (p *Postfix) start() error {
	if err := p.writeFile("master.cf", p.masterCF()); err != nil {
		return err
	}
	p.logOff = fileSize(p.logPath)
	out, err := p.runDaemonizing(p.postfixBin, "-c", p.confDir, "start")
	if err != nil {
		// With stderr not a tty, postfix reports to the maillog only.
		var fatal []string
		for _, l := range strings.Split(readFrom(p.logPath, p.logOff), "\n") {
			if strings.Contains(l, "fatal:") {
				fatal = append(fatal, l)
			}
		}
		return fmt.Errorf("postfix start: %v: %s", err, strings.TrimSpace(out+"\n"+strings.Join(fatal, "\n")))
	}
	p.masterPID = p.readMasterPID()
	_, err = waitBanner(p.addr, p.token, 15*time.Second, func() error {
		if p.masterPID > 0 && !pidAlive(p.masterPID) {
			return fmt.Errorf("postfix master (pid %d) exited", p.masterPID)
		}
		if p.logContains("Address already in use") {
			return errors.New("address already in use")
		}
		return nil
	})
	if errors.Is(err, errForeign) && p.masterPID > 0 {
		// A milter that refuses the connection turns the greeting into
		// "554 HOST ESMTP not accepting connections", without our token.
		// The greeting is still ours if our master holds the listener.
		_, port, _ := net.SplitHostPort(p.addr)
		if n, _ := strconv.Atoi(port); listensOn(p.masterPID, n) {
			return nil
		}
	}
	return err
}

// runDaemonizing runs a command whose children may outlive it (postfix start
// forks the master): output goes to a file, not a pipe, so that waiting for
// the command does not wait for the daemon to close the pipe.
func (p *Postfix) runDaemonizing(bin string, args ...string) (string, error) {
	f, err := os.CreateTemp(p.dir, "cmd-*.out")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}

func (p *Postfix) run(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *Postfix) readMasterPID() int {
	b, err := os.ReadFile(filepath.Join(p.queueDir, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// logContains reports whether the maillog, from the current start attempt
// on, contains s.
func (p *Postfix) logContains(s string) bool {
	return strings.Contains(readFrom(p.logPath, p.logOff), s)
}

// postfixStop runs "postfix stop" (it waits up to 5 s for the master), then
// makes sure, by PID, that the master and every daemon in its session are
// gone.
func (p *Postfix) postfixStop() {
	if pid := p.readMasterPID(); pid > 0 {
		p.masterPID = pid
	}
	if p.masterPID == 0 || !pidAlive(p.masterPID) {
		return
	}
	if out, err := p.runDaemonizing(p.postfixBin, "-c", p.confDir, "stop"); err != nil {
		p.t.Logf("integration: postfix stop: %v: %s", err, strings.TrimSpace(out))
	}
	if !waitGone(p.masterPID, 3*time.Second) {
		p.t.Logf("integration: postfix master %d survived postfix stop; killing it", p.masterPID)
		syscall.Kill(p.masterPID, syscall.SIGKILL)
		waitGone(p.masterPID, 2*time.Second)
	}
	// The master SIGTERMs its process group on exit; kill any straggler
	// individually, after checking it is a Postfix daemon.
	for _, pid := range sessionMembers(p.masterPID) {
		if exe := procExe(pid); strings.HasPrefix(exe, "/usr/lib/postfix/") {
			p.t.Logf("integration: killing leftover postfix daemon %d (%s)", pid, exe)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cleanup reports the queue and the maillog of a failed test, then stops.
func (p *Postfix) cleanup() {
	p.logAtFailure(p.Queue)
	p.Stop()
}

// Stop deletes the queue (postsuper -d ALL) and stops the instance. It is
// idempotent and runs at cleanup; Log and Queue stay usable afterwards
// (postqueue then reads the queue directory directly).
func (p *Postfix) Stop() {
	p.stopOnce(func() {
		if p.masterPID > 0 && pidAlive(p.masterPID) {
			if out, err := p.run(p.postsuperBin, "-c", p.confDir, "-d", "ALL"); err != nil {
				p.t.Logf("integration: postsuper -d ALL: %v: %s", err, strings.TrimSpace(out))
			}
		}
		p.postfixStop()
	})
}

// ConfigDir returns the directory to pass to "postfix -c", "postconf -c" etc.
func (p *Postfix) ConfigDir() string { return p.confDir }

// MasterPID is the PID of the Postfix master daemon.
func (p *Postfix) MasterPID() int { return p.masterPID }

// Queue returns "postqueue -p" output ("Mail queue is empty" when empty).
func (p *Postfix) Queue() string {
	out, err := p.run(p.postqueueBin, "-c", p.confDir, "-p")
	if err != nil {
		return fmt.Sprintf("postqueue -p: %v: %s", err, out)
	}
	return out
}

// QueueEmpty reports whether postqueue -p says the queue is empty.
func (p *Postfix) QueueEmpty() bool {
	return strings.Contains(p.Queue(), "Mail queue is empty")
}

// Flush asks Postfix to retry deferred mail now (postqueue -f).
func (p *Postfix) Flush() error {
	out, err := p.run(p.postqueueBin, "-c", p.confDir, "-f")
	if err != nil {
		return fmt.Errorf("postqueue -f: %v: %s", err, out)
	}
	return nil
}
