package opes

import "testing"

// BenchmarkTraceOnlyEOM is the processor's own share of a trace-only message:
// a session, a transaction and the end of message with the two trace fields.
func BenchmarkTraceOnlyEOM(b *testing.B) {
	proc, err := NewProcessor(&Policy{System: System{URI: testSystem}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s := proc.NewSession()
		o := s.EndOfMessage(ctx, "4ABCD12")
		if len(o.HeaderChanges) != 2 {
			b.Fatal(o.HeaderChanges)
		}
		s.Finish()
		s.Close()
	}
}
