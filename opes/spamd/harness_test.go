package spamd

import (
	"os"
	"testing"

	"github.com/opesmilter/opes-milter/internal/enginetest"
)

// The tests run against a real spamd: the point of the package is to
// speak its protocol, and a fake would only test our reading of the
// documentation. One spamd serves the whole package (it takes about 2 s
// to start); it is started on first use, so the parser tests and the fuzz
// target do not pay for it.
//
// The setup is offline (internal/enginetest): the rules the Debian package
// ships, -L (local tests only, no DNS/RBL), no sa-update, no Bayes, a
// temporary site configuration. Packages: spamassassin spamd spamc.

var testSpamd = enginetest.Shared[*enginetest.Spamd]{Name: "spamd", Start: func() (*enginetest.Spamd, error) {
	return enginetest.StartSpamd(enginetest.SpamdOptions{})
}}

func TestMain(m *testing.M) { os.Exit(testSpamd.Run(m)) }

// needSpamd returns the TCP address and unix socket path of the shared
// spamd, failing the test (not skipping it) when spamd cannot run.
func needSpamd(t testing.TB) (tcp, sock string) {
	t.Helper()
	s := testSpamd.Get(t)
	return s.Addr(), s.Socket()
}
