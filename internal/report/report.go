// Package report writes the processor's per-transaction records as JSON
// lines (RFC 4496 §4.3, logging and reporting): one line per transaction,
// appended to a file that log rotation may move away (Reopen on SIGHUP).
// How much of the envelope addresses is kept is configuration, disclosed
// on the policy page.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/opesmilter/opes-milter/opes"
)

// Addresses says how much of envelope addresses a record keeps.
type Addresses string

// Address privacy levels.
const (
	AddressesFull   Addresses = "full"   // as given
	AddressesDomain Addresses = "domain" // "@example.org" only
	AddressesNone   Addresses = "none"   // dropped; counts remain
)

// ParseAddresses accepts full, domain or none.
func ParseAddresses(s string) (Addresses, error) {
	switch a := Addresses(s); a {
	case AddressesFull, AddressesDomain, AddressesNone:
		return a, nil
	}
	return "", fmt.Errorf("addresses %q: want full, domain or none", s)
}

// Redact reduces the envelope addresses of records to the configured
// level before passing them on; every reporter sits behind it.
type Redact struct {
	Level Addresses
	Next  opes.Reporter
}

// Report implements opes.Reporter. The caller's record is not changed.
func (r Redact) Report(rec *opes.TransactionRecord) {
	if r.Level == AddressesFull || r.Level == "" {
		r.Next.Report(rec)
		return
	}
	c := *rec
	c.Sender = r.address(c.Sender)
	c.Recipients = make([]opes.RecipientInfo, len(rec.Recipients))
	for i, rc := range rec.Recipients {
		c.Recipients[i] = opes.RecipientInfo{Addr: r.address(rc.Addr), Refused: rc.Refused}
	}
	r.Next.Report(&c)
}

func (r Redact) address(a string) string {
	if r.Level == AddressesDomain {
		if i := strings.LastIndexByte(a, '@'); i >= 0 {
			return a[i:]
		}
	}
	return ""
}

// Writer appends records to a file. It is safe for concurrent use.
type Writer struct {
	path    string
	onError func(error)

	mu sync.Mutex
	f  *os.File
}

// Open opens (creating, mode 0640) the file for appending. onError is
// told about write failures, which never hold up mail.
func Open(path string, onError func(error)) (*Writer, error) {
	w := &Writer{path: path, onError: onError}
	if err := w.Reopen(); err != nil {
		return nil, err
	}
	return w, nil
}

// Reopen closes and reopens the file: after rotation the new records go
// to a new file at the same path.
func (w *Writer) Reopen() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("report: open %s: %w", w.path, err)
	}
	w.mu.Lock()
	old := w.f
	w.f = f
	w.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Report implements opes.Reporter.
func (w *Writer) Report(rec *opes.TransactionRecord) {
	line, err := json.Marshal(rec)
	if err != nil {
		w.onError(fmt.Errorf("report: encode: %w", err))
		return
	}
	line = append(line, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	// One write per line: O_APPEND keeps lines whole even if another
	// process appends to the same file.
	if _, err := w.f.Write(line); err != nil {
		w.onError(fmt.Errorf("report: write %s: %w", w.path, err))
	}
}
