package enginetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// SpamdOptions configure StartSpamd.
type SpamdOptions struct {
	// Dir is the directory for the site configuration, home, socket and
	// logs. If empty, StartSpamd makes one and Stop removes it; a given Dir
	// is left to the caller.
	Dir string
	// Started, if set, is called with spamd's pid as soon as it runs, before
	// the readiness wait; an error stops spamd. spamd changes its user when
	// started as root, which clears a parent-death signal: this is where a
	// caller arms its own guard.
	Started func(pid int) error
}

// Spamd is a SpamAssassin spamd, offline: the rules the Debian package
// ships, local tests only (-L), no Bayes, no Razor/Pyzor, a private site
// configuration with required_score 5.0.
type Spamd struct {
	daemon
	endpoints
}

// StartSpamd starts spamd and waits until it answers PING (about 2 s). The
// error names the apt command when spamd is missing.
func StartSpamd(opts SpamdOptions) (*Spamd, error) {
	bin, err := LookBin("spamd", SpamdAptHint)
	if err != nil {
		return nil, err
	}
	pres, _ := filepath.Glob("/etc/spamassassin/*.pre")
	if len(pres) == 0 {
		return nil, fmt.Errorf("no /etc/spamassassin/*.pre plugin loaders; install: %s", SpamdAptHint)
	}
	dir, owns, err := workDir(opts.Dir, "opes-spamd-")
	if err != nil {
		return nil, err
	}
	s := &Spamd{daemon: daemon{dir: dir, ownsDir: owns}}
	if err := s.start(bin, pres, opts.Started); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Spamd) start(bin string, pres []string, started func(int) error) error {
	dir := s.dir
	site := filepath.Join(dir, "siteconfig")
	home := filepath.Join(dir, "home")
	for _, d := range []string{site, home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	// --siteconfigpath replaces /etc/spamassassin, which also holds the
	// *.pre files that load the plugins: copy them.
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
	var err error
	if s.endpoints, err = newEndpoints(dir, "spamd.sock"); err != nil {
		return err
	}
	args := []string{"-L", "-x", "-H", home, "--siteconfigpath=" + site,
		"--listen=" + s.addr, "--listen=" + s.sock, "--socketmode=0666",
		"--allowed-ips=127.0.0.1", "--max-children=2", "--min-children=1", "--min-spare=1", "--max-spare=2",
		"--syslog=" + filepath.Join(dir, "spamd.log")}
	if os.Geteuid() == 0 {
		// spamd refuses to keep root.
		if err := s.dropRootTo("debian-spamd", "spamd", SpamdAptHint, dir, home); err != nil {
			return err
		}
		args = append(args, "-u", "debian-spamd")
	}
	s.cmd = exec.Command(bin, args...)
	start := time.Now()
	if err := s.daemon.start("spamd.out"); err != nil {
		return err
	}
	return s.waitReady("spamd", start, 50*time.Millisecond, started, func() error { return SpamdPing(s.addr) }, s.Logs)
}

// Stop stops spamd (SIGTERM takes the preforked children down; SIGKILL
// after 10 s), waits for the exit and removes the directory StartSpamd
// made. It may be called more than once.
func (s *Spamd) Stop() { s.stop(10 * time.Second) }

// Logs returns the tails of spamd's output and log file.
func (s *Spamd) Logs() string { return logs(s.dir, 40, "spamd.out", "spamd.log") }

// SpamdPing speaks PING SPAMC/1.5 to addr, expecting "SPAMD/1.5 0 PONG".
func SpamdPing(addr string) error {
	br, c, err := ask(addr, "PING SPAMC/1.5\r\n\r\n")
	if err != nil {
		return err
	}
	defer c.Close()
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, "PONG") {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}
