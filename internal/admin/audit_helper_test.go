package admin

import (
	"testing"

	"github.com/opesmilter/opes-milter/internal/audit"
)

// openAudit opens the real audit log in a test directory.
func openAudit(t *testing.T, path string) *audit.Log {
	t.Helper()
	l, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}
