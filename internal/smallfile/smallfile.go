// Package smallfile reads files that must be small — keys, policies —
// whole, without reading more than the bound from a file that is not:
// a configuration mistake pointing at /dev/zero or a mailbox fails fast
// instead of filling memory.
package smallfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is wrapped by Read's error for a file above the bound.
var ErrTooLarge = errors.New("file too large")

// Read returns the contents of path, at most max octets; a longer file
// is an error wrapping ErrTooLarge that names the path and the bound.
func Read(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > max {
		return nil, fmt.Errorf("%s is larger than %d octets: %w", path, max, ErrTooLarge)
	}
	return data, nil
}
