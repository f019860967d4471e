package integration

import (
	"strconv"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// The content engines the end-to-end tests scan with: a real clamd and a
// real spamd, both offline, private to the test that starts them, on free
// loopback ports, in directories under TempDir. internal/enginetest starts
// them, as for the opes/clamav and opes/spamd unit tests.

// Test patterns the engines recognise.
const (
	// EICAR is the standard antivirus test file; the test clamd knows it
	// by MD5 as ClamdEicarSig.
	EICAR = enginetest.EICAR
	// ClamdToken is found anywhere in a scanned file as ClamdTokenSig.
	ClamdToken = enginetest.Token

	ClamdEicarSig = enginetest.EicarSig
	ClamdTokenSig = enginetest.TokenSig

	// GTUBE makes SpamAssassin score a message about 1000.
	GTUBE = enginetest.GTUBE
)

// Clamd is a clamd started by a test with a two-signature database
// (EICAR by MD5, ClamdToken as a body pattern).
type Clamd = enginetest.Clamd

// StartClamd starts clamd in the foreground and waits until it answers
// PING. It fails the test, with the apt command, when clamd is missing.
// It is stopped at cleanup.
func StartClamd(t testing.TB) *Clamd {
	t.Helper()
	start := time.Now()
	c, err := enginetest.StartClamd(enginetest.ClamdOptions{Dir: TempDir(t)})
	if err != nil {
		t.Fatalf("integration: clamd is needed for this test: %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("clamd logs:\n%s", c.Logs())
		}
	})
	t.Logf("integration: clamd up on %s after %v", c.TCP(), time.Since(start).Round(time.Millisecond))
	return c
}

// Spamd is a SpamAssassin spamd started by a test, offline, with a
// watchdog that stops it if the test binary dies without its cleanups.
type Spamd struct {
	*enginetest.Spamd
	wd *watchdog
}

// StartSpamd starts spamd and waits until it answers PING (about 2 s). It
// fails the test, with the apt command, when spamd is missing. It is
// stopped at cleanup.
func StartSpamd(t testing.TB) *Spamd {
	t.Helper()
	s := &Spamd{}
	start := time.Now()
	var err error
	s.Spamd, err = enginetest.StartSpamd(enginetest.SpamdOptions{Dir: TempDir(t), Started: func(pid int) error {
		// spamd changes its user, which clears a parent-death signal: a
		// watchdog stops it if the test binary dies without its cleanups.
		var err error
		s.wd, err = startWatchdog(`if grep -q spamd "/proc/$1/cmdline" 2>/dev/null; then kill "$1"; fi
`, strconv.Itoa(pid))
		return err
	}})
	if err != nil {
		s.wd.disarm()
		t.Fatalf("integration: spamd is needed for this test: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("spamd logs:\n%s", s.Logs())
		}
	})
	t.Logf("integration: spamd up on %s and %s after %v", s.Addr(), s.Socket(), time.Since(start).Round(time.Millisecond))
	return s
}

// Stop stops spamd and then disarms the watchdog. It may be called more
// than once.
func (s *Spamd) Stop() {
	defer func() {
		s.wd.disarm()
		s.wd = nil
	}()
	s.Spamd.Stop()
}
