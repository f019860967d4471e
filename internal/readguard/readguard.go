// Package readguard wraps a message reader for go-msgauth's DKIM verifier.
// The verifier checks several signatures through pipes and leaves its
// goroutines blocked when the source fails mid-body; a Reader ends the
// stream with a clean EOF at the first read error or when its context is
// done, so they finish (with a failed body hash), and keeps the error for
// the caller.
package readguard

import (
	"context"
	"io"
)

// Reader is an io.Reader that turns failures into EOF and remembers them.
type Reader struct {
	ctx context.Context
	r   io.Reader
	err error
}

// New guards r, stopping when ctx is done.
func New(ctx context.Context, r io.Reader) *Reader { return &Reader{ctx: ctx, r: r} }

// Err is the read error or context error that ended the stream, if any.
func (g *Reader) Err() error { return g.err }

func (g *Reader) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, io.EOF
	}
	if err := g.ctx.Err(); err != nil {
		g.err = err
		return 0, io.EOF
	}
	n, err := g.r.Read(p)
	if err != nil && err != io.EOF {
		g.err = err
		err = io.EOF
	}
	return n, err
}
