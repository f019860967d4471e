package integration

import (
	"os"
	"strings"
	"testing"
	"time"
)

// mtaInstance is what a Postfix and a Sendmail instance have in common: a
// private directory, an SMTP address whose greeting carries a random
// token, a log file, and the timings of start and stop. Postfix and
// Sendmail embed it, so these methods are theirs.
type mtaInstance struct {
	t       testing.TB
	name    string // "postfix" or "sendmail", in the harness's own log lines
	logName string // the log in a WaitLog failure, e.g. "the maillog"
	dir     string
	logPath string
	token   string
	addr    string

	stopped  bool
	startDur time.Duration
	stopDur  time.Duration
}

// Addr returns the SMTP address, "127.0.0.1:PORT".
func (m *mtaInstance) Addr() string { return m.addr }

// Dir returns the instance directory.
func (m *mtaInstance) Dir() string { return m.dir }

// LogPath returns the path of the instance's mail log.
func (m *mtaInstance) LogPath() string { return m.logPath }

// BannerToken is the random token in this instance's 220 greeting.
func (m *mtaInstance) BannerToken() string { return "opes-it-" + m.token }

// StartupTime is how long the Start function took until the instance
// listened (for Sendmail without fetching the packages).
func (m *mtaInstance) StartupTime() time.Duration { return m.startDur }

// StopTime is how long Stop took (0 before Stop).
func (m *mtaInstance) StopTime() time.Duration { return m.stopDur }

// Log returns the mail log so far. It is written asynchronously (Postfix's
// postlogd, Sendmail's syslog): use WaitLog for a line that must appear.
func (m *mtaInstance) Log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// WaitLog polls the mail log until it contains substr and returns the log.
// It fails the test on timeout.
func (m *mtaInstance) WaitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return waitContains(t, m.logName, m.Log, substr, timeout)
}

// stopOnce runs stop the first time only and times it for StopTime: Stop
// is called by tests and again at cleanup.
func (m *mtaInstance) stopOnce(stop func()) {
	if m.stopped {
		return
	}
	m.stopped = true
	t0 := time.Now()
	stop()
	m.stopDur = time.Since(t0)
}

// logAtFailure reports, for a failed test, where the instance listens
// and lives, its queue and the tail of its log. A stopped instance's queue
// is not listed: only the log is sure to stay readable.
func (m *mtaInstance) logAtFailure(queue func() string) {
	if !m.t.Failed() {
		return
	}
	q := "(stopped)"
	if !m.stopped {
		q = strings.TrimSpace(queue())
	}
	m.t.Logf("integration: %s %s (%s) at failure:\nqueue:\n%s\nmaillog tail:\n%s",
		m.name, m.addr, m.dir, q, tailFile(m.logPath, 40))
}
