// Package linelen bounds the length of lines in a stream read in pieces:
// MIME walkers use it to guard part headers, which their parsers do not
// bound, against a line that never ends.
package linelen

import "bytes"

// Counter follows the length of the line open at the end of what it has
// been given; the zero value is at the start of a line.
type Counter struct {
	open int // octets of the current line so far, without its LF
}

// Add counts p, the next octets of the stream, and reports whether a line
// (one that p ends or the one left open) is longer than max octets. Once
// it has reported true it keeps doing so: the stream is malformed.
func (c *Counter) Add(p []byte, max int) bool {
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.open += len(p)
			break
		}
		if c.open+i > max {
			c.open += i
			break
		}
		c.open, p = 0, p[i+1:]
	}
	return c.open > max
}
