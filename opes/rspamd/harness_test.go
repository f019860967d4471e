package rspamd

import (
	"os"
	"testing"

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

var testRspamd = enginetest.Shared[*enginetest.Rspamd]{Name: "rspamd", Start: func() (*enginetest.Rspamd, error) {
	return enginetest.StartRspamd(enginetest.RspamdOptions{})
}}

func TestMain(m *testing.M) { os.Exit(testRspamd.Run(m)) }

// needRspamd returns the TCP address and unix socket path of the shared
// rspamd; it skips when rspamd is not installed and fails when it is but
// cannot run.
func needRspamd(t testing.TB) (tcp, sock string) {
	t.Helper()
	if _, err := enginetest.LookBin("rspamd", enginetest.RspamdAptHint); err != nil {
		t.Skipf("rspamd is not installed: %v", err)
	}
	r := testRspamd.Get(t)
	return r.Addr(), r.Socket()
}
