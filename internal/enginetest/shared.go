package enginetest

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// Engine is what Shared needs of a started engine: where it listens, for
// the start message, and how to stop it.
type Engine interface {
	Addr() string
	Socket() string
	Stop()
}

// Shared is the engine of one test package: the first test that needs it
// starts it, so that the tests that do not (parsers, fuzz targets) do not
// pay for the start, and the package's TestMain stops it through Run.
// Declare it as a package variable with Name and Start set.
type Shared[E Engine] struct {
	Name  string            // for the messages: "spamd", "rspamd"
	Start func() (E, error) // starts the engine, private to the package

	once    sync.Once
	engine  E
	err     error
	started bool
}

// Get returns the engine, starting it on the first call. It fails the
// test, not skips it, when the engine cannot run: a test that needs the
// engine and skips would pass without testing anything.
func (s *Shared[E]) Get(t testing.TB) E {
	t.Helper()
	s.once.Do(func() {
		begin := time.Now()
		s.engine, s.err = s.Start()
		if s.err == nil {
			s.started = true
			fmt.Fprintf(os.Stderr, "%s test server up on %s and %s after %v\n", s.Name, s.engine.Addr(), s.engine.Socket(), time.Since(begin).Round(time.Millisecond))
		}
	})
	if s.err != nil {
		t.Fatalf("%s for the tests: %v", s.Name, s.err)
	}
	return s.engine
}

// Run runs the package's tests and stops the engine if one of them
// started it; TestMain passes the result to os.Exit.
func (s *Shared[E]) Run(m *testing.M) int {
	code := m.Run()
	if s.started {
		s.engine.Stop()
	}
	return code
}
