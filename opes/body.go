package opes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// BodyOptions bound the memory a body may take before it goes to disk.
type BodyOptions struct {
	MaxMemory int    // bytes kept in RAM before spooling; 0 means 256 KiB
	TempDir   string // directory for spool files; empty means os.TempDir()
}

// Body is a message body, held in memory up to a threshold and spooled to
// a temporary file above it, so large messages never sit in RAM.
type Body struct {
	opts BodyOptions
	mem  bytes.Buffer
	file *os.File
	size int64
}

// NewBody returns an empty body.
func NewBody(opts BodyOptions) *Body {
	b := &Body{}
	b.init(opts)
	return b
}

// init prepares a zero Body, for callers that embed one.
func (b *Body) init(opts BodyOptions) {
	if opts.MaxMemory <= 0 {
		opts.MaxMemory = 256 << 10
	}
	b.opts = opts
}

// Write appends p.
func (b *Body) Write(p []byte) (int, error) {
	if b.file == nil && b.mem.Len()+len(p) > b.opts.MaxMemory {
		f, err := os.CreateTemp(b.opts.TempDir, "opes-body-*")
		if err != nil {
			return 0, fmt.Errorf("opes: spool body: %w", err)
		}
		// Unlink at once: the open descriptor keeps the data, and nothing
		// is left behind if the process dies.
		_ = os.Remove(f.Name())
		if _, err := f.Write(b.mem.Bytes()); err != nil {
			_ = f.Close()
			return 0, fmt.Errorf("opes: spool body: %w", err)
		}
		b.mem = bytes.Buffer{}
		b.file = f
	}
	var n int
	var err error
	if b.file != nil {
		n, err = b.file.WriteAt(p, b.size)
	} else {
		n, err = b.mem.Write(p)
	}
	b.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("opes: spool body: %w", err)
	}
	return n, nil
}

// Size is the number of octets written.
func (b *Body) Size() int64 { return b.size }

// Spooled reports whether the body went to disk.
func (b *Body) Spooled() bool { return b.file != nil }

// Reader returns a reader over the whole body; readers are independent.
func (b *Body) Reader() io.ReadSeeker {
	if b.file != nil {
		return io.NewSectionReader(b.file, 0, b.size)
	}
	return bytes.NewReader(b.mem.Bytes())
}

// Close releases the spool file.
func (b *Body) Close() error {
	if b.file == nil {
		return nil
	}
	err := b.file.Close()
	b.file = nil
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}
