// Package servicetest holds what the tests of the built-in service kinds
// (opes/acl, opes/clamav, opes/icap, ...) share: building a service from
// a TOML options table as the policy loader does, checking the errors of
// bad options, a transaction to hand a service directly, and a processor
// with one rule to run a service in the real pipeline. It is imported
// only from _test.go files.
package servicetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

// Constructor is a service kind's New, as opes/builtin registers it.
type Constructor func(decode func(v any) error) (opes.Service, error)

// MustNew builds a service from src, a TOML text with an [options]
// table, and fails the test if the options are refused.
func MustNew(t testing.TB, newService Constructor, src string) opes.Service {
	t.Helper()
	s, err := newService(optiontest.Decoder(t, src))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// WantFieldError checks that newService refuses src with an
// *opes.FieldError naming field whose message mentions msg.
func WantFieldError(t testing.TB, newService Constructor, src, field, msg string) {
	t.Helper()
	_, err := newService(optiontest.Decoder(t, src))
	var fe *opes.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *opes.FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("Field = %q, want %q (%v)", fe.Field, field, fe.Err)
	}
	if !strings.Contains(fe.Err.Error(), msg) {
		t.Errorf("error %q does not mention %q", fe.Err, msg)
	}
}

// WantDecodeError checks that newService refuses src, an options table
// of the wrong TOML types, with the decoder's error wrapped as
// "<kind>: decode options".
func WantDecodeError(t testing.TB, newService Constructor, src, kind string) {
	t.Helper()
	_, err := newService(optiontest.Decoder(t, src))
	if want := kind + ": decode options"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("type error: %v, want a wrapped decode error (%q)", err, want)
	}
}
