package icap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Bounds on what is read from an ICAP server. Everything an ICAP server
// sends is untrusted input of bounded size: a peer that sends more is
// broken or hostile, and the exchange fails.
const (
	maxLine        = 8 << 10  // one status, header or chunk-size line
	maxICAPHeader  = 64 << 10 // the whole ICAP header block
	maxHTTPHeader  = 64 << 10 // one encapsulated HTTP header section
	maxHeaderLines = 512      // fields in one header block
)

// errProtocol marks an answer that is not ICAP as RFC 3507 defines it.
var errProtocol = errors.New("protocol error")

func protoErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}

// readLine reads one line ending in LF (CRLF or bare LF) of at most max
// octets and returns it without the line end.
func readLine(r *bufio.Reader, max int) (string, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max {
			return "", protoErrorf("line longer than %d octets", max)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return "", io.EOF
			}
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
	return string(line), nil
}

// field is one header field with its value unfolded: continuation lines
// are kept, joined by "\n", so that multi-line values such as
// X-Violations-Found can still be read line by line.
type field struct {
	name, value string
}

// header is an ordered list of fields (ICAP or encapsulated HTTP).
type header []field

// get returns the first value of name, or "".
func (h header) get(name string) string {
	for _, f := range h {
		if strings.EqualFold(f.name, name) {
			return f.value
		}
	}
	return ""
}

// has reports whether a field named name is present.
func (h header) has(name string) bool {
	for _, f := range h {
		if strings.EqualFold(f.name, name) {
			return true
		}
	}
	return false
}

// readHeader reads header fields up to the empty line, at most max octets.
func readHeader(r *bufio.Reader, max int) (header, error) {
	var h header
	total := 0
	for {
		line, err := readLine(r, maxLine)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		total += len(line) + 2
		if total > max {
			return nil, protoErrorf("header longer than %d octets", max)
		}
		if line == "" {
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(h) == 0 {
				return nil, protoErrorf("header starts with a continuation line")
			}
			h[len(h)-1].value += "\n" + strings.TrimSpace(line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || !isToken(name) {
			return nil, protoErrorf("malformed header line %q", clip(line))
		}
		if len(h) >= maxHeaderLines {
			return nil, protoErrorf("more than %d header fields", maxHeaderLines)
		}
		h = append(h, field{name: name, value: strings.TrimSpace(value)})
	}
}

// isToken reports whether s is an RFC 7230 token (a field name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// clip shortens peer text quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// parseStatusLine parses "ICAP/1.0 200 OK" or "HTTP/1.1 403 Forbidden"
// for the given protocol name.
func parseStatusLine(line, proto string) (code int, reason string, err error) {
	version, rest, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(version, proto+"/1.") {
		return 0, "", protoErrorf("status line %q is not %s/1.x", clip(line), proto)
	}
	codeText, reason, _ := strings.Cut(rest, " ")
	code, err = strconv.Atoi(codeText)
	if err != nil || len(codeText) != 3 || code < 100 {
		return 0, "", protoErrorf("status line %q has no 3-digit code", clip(line))
	}
	return code, strings.TrimSpace(reason), nil
}

// section is one entry of the Encapsulated header.
type section struct {
	name   string // req-hdr, res-hdr, req-body, res-body, null-body, opt-body
	offset int
}

// parseEncapsulated parses "req-hdr=0, res-hdr=137, res-body=296". The
// header sections must come first, in increasing offsets, and exactly
// one body entry must end the list (RFC 3507 §4.4.1).
func parseEncapsulated(v string) ([]section, error) {
	if strings.TrimSpace(v) == "" {
		return nil, protoErrorf("no Encapsulated header")
	}
	var out []section
	for _, part := range strings.Split(v, ",") {
		name, off, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(strings.TrimSpace(off))
		if !ok || err != nil || n < 0 {
			return nil, protoErrorf("malformed Encapsulated entry %q", clip(part))
		}
		name = strings.ToLower(strings.TrimSpace(name))
		switch name {
		case "req-hdr", "res-hdr", "req-body", "res-body", "null-body", "opt-body":
		default:
			return nil, protoErrorf("unknown Encapsulated entry %q", clip(name))
		}
		if len(out) > 0 {
			prev := out[len(out)-1]
			if strings.HasSuffix(prev.name, "-body") {
				return nil, protoErrorf("Encapsulated entry %q after the body", name)
			}
			if n < prev.offset {
				return nil, protoErrorf("Encapsulated offsets decrease")
			}
		}
		out = append(out, section{name: name, offset: n})
	}
	if last := out[len(out)-1].name; !strings.HasSuffix(last, "-body") {
		return nil, protoErrorf("Encapsulated ends with %q, not a body entry", last)
	}
	return out, nil
}

// chunkedWriter writes HTTP/1.1 chunked data (RFC 7230 §4.1).
type chunkedWriter struct{ w io.Writer }

func (c chunkedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if _, err := fmt.Fprintf(c.w, "%x\r\n", len(p)); err != nil {
		return 0, err
	}
	if _, err := c.w.Write(p); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(c.w, "\r\n"); err != nil {
		return 0, err
	}
	return len(p), nil
}

// chunkedReader decodes a chunked body, reads at most limit data octets
// (more is errTooLarge) and consumes the last chunk and the trailer, so
// that the connection is positioned at the next response.
type chunkedReader struct {
	r     *bufio.Reader
	left  int64 // octets left in the current chunk
	total int64
	limit int64
	ieof  bool // the last chunk carried the "ieof" extension
	done  bool
	err   error
}

var errTooLarge = errors.New("encapsulated body larger than max_size")

func newChunkedReader(r *bufio.Reader, limit int64) *chunkedReader {
	return &chunkedReader{r: r, limit: limit}
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		if err := c.next(); err != nil {
			c.err = err
			return 0, err
		}
		if c.done {
			return 0, io.EOF
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		c.err = err
		return n, err
	}
	if c.left == 0 {
		if err := c.crlf(); err != nil {
			c.err = err
			return n, err
		}
	}
	return n, nil
}

// next reads a chunk-size line; for the last chunk, the trailer too.
func (c *chunkedReader) next() error {
	line, err := readLine(c.r, maxLine)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	sizeText, ext, _ := strings.Cut(line, ";")
	sizeText = strings.TrimSpace(sizeText)
	size, err := strconv.ParseInt(sizeText, 16, 64)
	if err != nil || size < 0 || sizeText == "" || len(sizeText) > 15 {
		return protoErrorf("bad chunk size line %q", clip(line))
	}
	if size == 0 {
		c.ieof = strings.EqualFold(strings.TrimSpace(ext), "ieof")
		if _, err := readHeader(c.r, maxHTTPHeader); err != nil { // trailer
			return fmt.Errorf("chunk trailer: %w", err)
		}
		c.done = true
		return nil
	}
	if c.total+size > c.limit {
		return errTooLarge
	}
	c.total += size
	c.left = size
	return nil
}

func (c *chunkedReader) crlf() error {
	b, err := c.r.ReadByte()
	if err == nil && b == '\r' {
		b, err = c.r.ReadByte()
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if b != '\n' {
		return protoErrorf("chunk data not followed by CRLF")
	}
	return nil
}

// drain reads the rest of the body, up to the reader's limit.
func (c *chunkedReader) drain() error {
	_, err := io.Copy(io.Discard, c)
	return err
}
