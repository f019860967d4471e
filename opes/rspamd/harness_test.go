package rspamd

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// The tests run against a real rspamd: the point of the package is to
// speak its HTTP API and read its answers, and a fake would only test our
// reading of the documentation. One rspamd serves the whole package; it is
// started on first use, so the parser tests and the fuzz target do not pay
// for it.
//
// The setup is offline (internal/enginetest): a configuration of its own
// with one normal worker, no Redis, no stock rules or maps, the GTUBE test
// patterns, and test rules whose tokens give a message a known score.
// Package: rspamd.

var testRspamd struct {
	once sync.Once
	err  error
	r    *enginetest.Rspamd
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testRspamd.r != nil {
		testRspamd.r.Stop()
	}
	os.Exit(code)
}

// needRspamd returns the TCP address and unix socket path of the shared
// rspamd; it skips when rspamd is not installed and fails when it is but
// cannot run.
func needRspamd(t testing.TB) (tcp, sock string) {
	t.Helper()
	if _, err := enginetest.LookBin("rspamd", enginetest.RspamdAptHint); err != nil {
		t.Skipf("rspamd is not installed: %v", err)
	}
	testRspamd.once.Do(func() {
		start := time.Now()
		testRspamd.r, testRspamd.err = enginetest.StartRspamd(enginetest.RspamdOptions{})
		if testRspamd.err == nil {
			fmt.Fprintf(os.Stderr, "rspamd test server up on %s and %s after %v\n", testRspamd.r.Addr(), testRspamd.r.Socket(), time.Since(start).Round(time.Millisecond))
		}
	})
	if testRspamd.err != nil {
		t.Fatalf("rspamd for the tests: %v", testRspamd.err)
	}
	return testRspamd.r.Addr(), testRspamd.r.Socket()
}
