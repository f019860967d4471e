package normalize

import (
	"bufio"
	"bytes"
	"io"
)

// eol is how a line ended in the input.
type eol uint8

const (
	eolNone eol = iota // end of input, or the line goes on in the next fragment
	eolCRLF
	eolLF // bare LF
	eolCR // bare CR
)

func (e eol) bytes() []byte {
	switch e {
	case eolCRLF:
		return []byte("\r\n")
	case eolLF:
		return []byte("\n")
	case eolCR:
		return []byte("\r")
	}
	return nil
}

// maxFrag bounds the memory one line may take: longer lines come in
// fragments.
const maxFrag = 64 << 10

// lineReader splits input at CRLF, bare LF and bare CR alike.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, maxFrag)}
}

// next returns the next line without its end (the slice is reused by the
// next call), how it ended, and whether it goes on in the next call
// (longer than maxFrag). At the end of input it returns io.EOF.
func (r *lineReader) next() (line []byte, end eol, more bool, err error) {
	r.buf = r.buf[:0]
	for {
		if _, err := r.br.Peek(1); err != nil {
			if len(r.buf) > 0 && err == io.EOF {
				return r.buf, eolNone, false, nil
			}
			return nil, eolNone, false, err
		}
		avail, _ := r.br.Peek(r.br.Buffered())
		// Two IndexByte scans (vectorised) beat IndexAny; each stops at
		// the end of the current line.
		i := bytes.IndexByte(avail, '\n')
		if i < 0 {
			i = len(avail)
		}
		if j := bytes.IndexByte(avail[:i], '\r'); j >= 0 {
			i = j
		}
		take := min(i, maxFrag-len(r.buf))
		r.buf = append(r.buf, avail[:take]...)
		_, _ = r.br.Discard(take)
		if len(r.buf) >= maxFrag {
			return r.buf, eolNone, true, nil
		}
		if take < len(avail) {
			c, _ := r.br.ReadByte()
			if c == '\n' {
				return r.buf, eolLF, false, nil
			}
			if nx, _ := r.br.Peek(1); len(nx) == 1 && nx[0] == '\n' {
				_, _ = r.br.Discard(1)
				return r.buf, eolCRLF, false, nil
			}
			return r.buf, eolCR, false, nil
		}
	}
}

// delimSet holds every line of the body that could be a boundary
// delimiter, so a multipart whose boundary never occurs can be recognised
// before its body is read.
type delimSet struct {
	m    map[string]bool
	full bool // too many to keep: every boundary counts as present
}

// Bounds of the delimiter scan.
const (
	maxDelims     = 20000
	maxDelimLine  = 2 + 200 + 2
	maxBoundaryIn = 200
)

func (d *delimSet) has(b string) bool {
	return d == nil || d.full || d.m[b]
}

// scanDelims reads the body once and records the candidate delimiters.
func scanDelims(r io.Reader) (*delimSet, error) {
	d := &delimSet{m: map[string]bool{}}
	lr := newLineReader(r)
	cont := false
	for {
		l, _, more, err := lr.next()
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return nil, err
		}
		if !cont && len(l) > 2 && len(l) <= maxDelimLine && l[0] == '-' && l[1] == '-' && !d.full {
			s := string(bytes.TrimRight(l[2:], " \t"))
			d.m[s] = true
			if t, ok := bytes.CutSuffix([]byte(s), []byte("--")); ok {
				d.m[string(t)] = true
			}
			if len(d.m) >= maxDelims {
				d.full = true
			}
		}
		cont = more
	}
}

// outWriter remembers the last octets written, to end the body with CRLF.
type outWriter struct {
	w    *bufio.Writer
	n    int64
	last [2]byte
}

func (o *outWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.n += int64(n)
	if n >= 2 {
		o.last = [2]byte{p[n-2], p[n-1]}
	} else if n == 1 {
		o.last = [2]byte{o.last[1], p[0]}
	}
	return n, err
}

func (o *outWriter) str(s string) { _, _ = io.WriteString(o, s) }

func (o *outWriter) endsCRLF() bool { return o.last == [2]byte{'\r', '\n'} }

// wrap76 breaks base64 output into lines of 76 characters.
type wrap76 struct {
	w   io.Writer
	col int
}

func (l *wrap76) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if l.col == 76 {
			if _, err := l.w.Write([]byte("\r\n")); err != nil {
				return total, err
			}
			l.col = 0
		}
		n := min(len(p), 76-l.col)
		m, err := l.w.Write(p[:n])
		total += m
		l.col += m
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}
