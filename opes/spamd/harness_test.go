package spamd

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

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

var testSpamd struct {
	once sync.Once
	err  error
	s    *enginetest.Spamd
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testSpamd.s != nil {
		testSpamd.s.Stop()
	}
	os.Exit(code)
}

// needSpamd returns the TCP address and unix socket path of the shared
// spamd, failing the test (not skipping it) when spamd cannot run.
func needSpamd(t testing.TB) (tcp, sock string) {
	t.Helper()
	testSpamd.once.Do(func() {
		start := time.Now()
		testSpamd.s, testSpamd.err = enginetest.StartSpamd(enginetest.SpamdOptions{})
		if testSpamd.err == nil {
			fmt.Fprintf(os.Stderr, "spamd test server up on %s and %s after %v\n", testSpamd.s.Addr(), testSpamd.s.Socket(), time.Since(start).Round(time.Millisecond))
		}
	})
	if testSpamd.err != nil {
		t.Fatalf("spamd for the tests: %v", testSpamd.err)
	}
	return testSpamd.s.Addr(), testSpamd.s.Socket()
}
