// Package optiontest gives service tests what the policy loader hands a
// service constructor: a decoder for the [options] table of a TOML text.
package optiontest

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// Decoder parses src, which must hold an options table (e.g.
// "[options]\nheader = ..."), and returns a function that decodes that
// table into a service's option struct, as policy does.
func Decoder(t testing.TB, src string) func(v any) error {
	t.Helper()
	var wrap struct {
		Options toml.Primitive `toml:"options"`
	}
	md, err := toml.Decode(src, &wrap)
	if err != nil {
		t.Fatalf("test TOML: %v", err)
	}
	return func(v any) error { return md.PrimitiveDecode(wrap.Options, v) }
}
