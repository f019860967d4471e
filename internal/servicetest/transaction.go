package servicetest

import (
	"context"
	"io"
	"testing"

	"github.com/opesmilter/opes-milter/opes"
)

// NewTransaction is a transaction built outside the processor, to hand a
// service directly: header fields as given (name, raw value) and body.
// The body spools to a file in t.TempDir() beyond 1 KiB, so a service
// reads large messages as it does in production; it is closed when the
// test ends. Conn is an empty connection and there is no envelope: set
// what the test needs.
func NewTransaction(t testing.TB, header [][2]string, body string) *opes.Transaction {
	t.Helper()
	tx := &opes.Transaction{
		Conn:   &opes.Connection{},
		Header: opes.NewHeader(),
		Body:   opes.NewBody(opes.BodyOptions{MaxMemory: 1024, TempDir: t.TempDir()}),
	}
	t.Cleanup(func() { _ = tx.Body.Close() })
	for _, f := range header {
		if err := tx.Header.Add(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.WriteString(tx.Body, body); err != nil {
		t.Fatal(err)
	}
	return tx
}

// EndOfMessage begins svc's work on tx and returns its end-of-message
// verdict, as the processor would ask for it.
func EndOfMessage(t testing.TB, svc opes.Service, tx *opes.Transaction) (opes.Verdict, error) {
	t.Helper()
	stx := svc.Begin(tx)
	defer stx.Close()
	return stx.EndOfMessage(context.Background())
}
