package opes

import "fmt"

// FieldError is a configuration error in one option of a service or rule.
// Field is the dotted path below the object being built, with 1-based
// list indexes, e.g. "entry[2].client[1]"; the policy loader turns it into
// a file:line:column position.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %v", e.Field, e.Err) }

func (e *FieldError) Unwrap() error { return e.Err }

// FieldErrorf builds a FieldError.
func FieldErrorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}
