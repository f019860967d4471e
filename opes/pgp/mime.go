package pgp

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// field is one header field of a MIME entity; value is the text after the
// colon (leading space and CRLF folding kept).
type field struct{ name, value string }

func isContentField(name string) bool {
	return len(name) > 8 && strings.EqualFold(name[:8], "content-")
}

// contentFields are the Content-* fields of the working header: with the
// body, the MIME entity that is signed or encrypted.
func contentFields(tx *opes.Transaction) []field {
	var out []field
	for _, f := range tx.Header.Fields() {
		if isContentField(f.Name) {
			out = append(out, field{f.Name, f.Value})
		}
	}
	return out
}

// replaceContentFields deletes the Content-* fields of the working header
// and adds fs. Only Content-* names are touched, so trace fields stay as
// they are; MIME-Version is added when missing, or a reader would not
// see the new multipart.
func replaceContentFields(tx *opes.Transaction, fs []field) error {
	seen := map[string]bool{}
	for _, f := range tx.Header.Fields() {
		if isContentField(f.Name) && !seen[strings.ToLower(f.Name)] {
			seen[strings.ToLower(f.Name)] = true
			tx.Header.Del(f.Name)
		}
	}
	for _, f := range fs {
		if err := tx.Header.Add(f.name, f.value); err != nil {
			return fmt.Errorf("set %s: %w", f.name, err)
		}
	}
	if tx.Header.Get("MIME-Version") == "" {
		if err := tx.Header.Add("MIME-Version", "1.0"); err != nil {
			return fmt.Errorf("add MIME-Version: %w", err)
		}
	}
	return nil
}

// writeFields renders fields in canonical form: CRLF line ends, one space
// after the colon when the value has none.
func writeFields(w io.Writer, fs []field) error {
	var b strings.Builder
	for _, f := range fs {
		v := strings.ReplaceAll(strings.ReplaceAll(f.value, "\r\n", "\n"), "\n", "\r\n")
		if v != "" && v[0] != ' ' && v[0] != '\t' {
			v = " " + v
		}
		b.WriteString(f.name + ":" + v + "\r\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// parseFields splits a header block (CRLF line ends, no blank line) into
// fields. A line without a colon is an error: the entity is not MIME.
func parseFields(head []byte) ([]field, error) {
	var out []field
	for _, line := range strings.Split(string(head), "\r\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(out) == 0 {
				return nil, errors.New("header starts with a continuation line")
			}
			out[len(out)-1].value += "\r\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("header line %.40q is not a field", line)
		}
		out = append(out, field{name, value})
	}
	return out, nil
}

// splitEntity splits canonical (CRLF) entity text into its header fields
// and body.
func splitEntity(e []byte) ([]field, []byte, error) {
	var head, body []byte
	if bytes.HasPrefix(e, []byte("\r\n")) {
		head, body = nil, e[2:]
	} else if i := bytes.Index(e, []byte("\r\n\r\n")); i >= 0 {
		head, body = e[:i], e[i+4:]
	} else {
		head, body = e, nil
	}
	fs, err := parseFields(head)
	return fs, body, err
}

func getField(fs []field, name string) string {
	for _, f := range fs {
		if strings.EqualFold(f.name, name) {
			return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(f.value))
		}
	}
	return ""
}

func setField(fs []field, name, value string) []field {
	for i := range fs {
		if strings.EqualFold(fs[i].name, name) {
			fs[i].value = " " + value
			return fs
		}
	}
	return append(fs, field{name, " " + value})
}

// crlf turns every line end (LF, CR or CRLF) into CRLF: MIME canonical
// form, which is what is signed and what is encrypted.
func crlf(b []byte) []byte {
	if !bytes.ContainsAny(b, "\r\n") {
		return b
	}
	out := make([]byte, 0, len(b)+len(b)/32)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}

// crlfWriter writes through crlf's conversion as a stream.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	out := make([]byte, 0, len(p)+len(p)/32)
	for _, b := range p {
		switch {
		case b == '\n' && c.lastCR:
			// second half of a CRLF already written
		case b == '\n':
			out = append(out, '\r', '\n')
		case b == '\r':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b)
		}
		c.lastCR = b == '\r'
	}
	if _, err := c.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// newBoundary returns a boundary that cannot occur in base64, armor or
// quoted-printable text ("=_" is not valid in either).
func newBoundary() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random boundary: %w", err)
	}
	return "=_opes-pgp_" + hex.EncodeToString(b[:]), nil
}

// multipartParts splits a canonical multipart body into its parts'
// bytes, the preamble and the epilogue. The CRLF before each delimiter
// belongs to the delimiter (RFC 2046 §5.1.1).
func multipartParts(body []byte, boundary string) (preamble []byte, parts [][]byte, epilogue []byte, err error) {
	if boundary == "" || len(boundary) > 70 {
		return nil, nil, nil, errors.New("multipart without a valid boundary")
	}
	delim := []byte("--" + boundary)
	// Positions of delimiter lines: at the start or after CRLF.
	type mark struct {
		start, after int // start of the CRLF (or line), start of next line
		close        bool
	}
	var marks []mark
	for pos := 0; pos < len(body); {
		i := bytes.Index(body[pos:], delim)
		if i < 0 {
			break
		}
		i += pos
		lineStart := i == 0 || (i >= 2 && body[i-2] == '\r' && body[i-1] == '\n')
		end := bytes.Index(body[i:], []byte("\r\n"))
		lineEnd := len(body)
		if end >= 0 {
			lineEnd = i + end
		}
		rest := strings.TrimRight(string(body[i+len(delim):lineEnd]), " \t")
		if lineStart && (rest == "" || rest == "--") {
			s := i
			if i > 0 {
				s = i - 2
			}
			after := lineEnd
			if end >= 0 {
				after += 2
			}
			marks = append(marks, mark{s, after, rest == "--"})
			if rest == "--" {
				break
			}
		}
		pos = lineEnd
		if end < 0 {
			break
		}
	}
	if len(marks) < 2 || !marks[len(marks)-1].close {
		return nil, nil, nil, errors.New("multipart body without a closing delimiter")
	}
	preamble = body[:marks[0].start]
	for i := 0; i+1 < len(marks); i++ {
		if marks[i].close {
			return nil, nil, nil, errors.New("multipart closing delimiter before the end")
		}
		parts = append(parts, body[marks[i].after:marks[i+1].start])
	}
	return preamble, parts, body[marks[len(marks)-1].after:], nil
}

// errUnencodable: the entity has 8-bit data where no transfer encoding may
// be applied (a header, a message/* part); it cannot be made 7bit.
var errUnencodable = errors.New("8-bit data that no transfer encoding can carry")

// maxDepth bounds multipart nesting.
const maxDepth = 30

// to7bit returns the entity (fields, canonical body) made safe for
// signing (RFC 3156 §3, §5): 7bit only, no line over 76 octets that was
// not already encoded, no trailing white space and no line starting
// with "From " (which some MTAs alter). Parts that need it get
// quoted-printable (text) or base64; multiparts are rebuilt part by
// part; anything already safe keeps its bytes.
func to7bit(fs []field, body []byte, depth int) ([]field, []byte, error) {
	if depth > maxDepth {
		return nil, nil, errors.New("MIME nesting too deep")
	}
	for _, f := range fs {
		if !is7bit([]byte(f.name + f.value)) {
			return nil, nil, errUnencodable
		}
	}
	mt, params, err := mime.ParseMediaType(getField(fs, "Content-Type"))
	if err != nil || mt == "" {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		pre, parts, epi, err := multipartParts(body, params["boundary"])
		if err != nil {
			return nil, nil, err
		}
		var b bytes.Buffer
		if safeLines(pre) {
			b.Write(pre)
			if len(pre) > 0 {
				b.WriteString("\r\n")
			}
		}
		for _, p := range parts {
			pfs, pbody, err := splitEntity(p)
			if err != nil {
				return nil, nil, err
			}
			if pfs, pbody, err = to7bit(pfs, pbody, depth+1); err != nil {
				return nil, nil, err
			}
			b.WriteString("--" + params["boundary"] + "\r\n")
			if err := writeFields(&b, pfs); err != nil {
				return nil, nil, err
			}
			b.WriteString("\r\n")
			b.Write(pbody)
			b.WriteString("\r\n")
		}
		b.WriteString("--" + params["boundary"] + "--\r\n")
		if safeLines(epi) {
			b.Write(epi)
		}
		if getField(fs, "Content-Transfer-Encoding") != "" {
			fs = setField(fs, "Content-Transfer-Encoding", "7bit")
		}
		return fs, b.Bytes(), nil
	}
	cte := strings.ToLower(getField(fs, "Content-Transfer-Encoding"))
	if safeLines(body) {
		return fs, body, nil
	}
	if strings.HasPrefix(mt, "message/") {
		return nil, nil, errUnencodable
	}
	raw := body
	switch cte {
	case "base64":
		if raw, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, bytes.NewReader(bytes.ReplaceAll(body, []byte("\r\n"), nil)))); err != nil {
			return nil, nil, fmt.Errorf("part with broken base64: %w", err)
		}
	case "quoted-printable":
		if raw, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body))); err != nil {
			return nil, nil, fmt.Errorf("part with broken quoted-printable: %w", err)
		}
	}
	var b bytes.Buffer
	if strings.HasPrefix(mt, "text/") {
		w := quotedprintable.NewWriter(&b)
		if _, err := w.Write(raw); err != nil {
			return nil, nil, err
		}
		if err := w.Close(); err != nil {
			return nil, nil, err
		}
		// "From " at a line start is altered by some MTAs (">From ").
		enc := bytes.ReplaceAll(b.Bytes(), []byte("\r\nFrom "), []byte("\r\n=46rom "))
		if bytes.HasPrefix(enc, []byte("From ")) {
			enc = append([]byte("=46"), enc[1:]...)
		}
		if bytes.HasSuffix(body, []byte("\r\n")) && !bytes.HasSuffix(enc, []byte("\r\n")) {
			enc = append(enc, '\r', '\n')
		}
		return setField(fs, "Content-Transfer-Encoding", "quoted-printable"), enc, nil
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	if enc != "" {
		b.WriteString(enc + "\r\n")
	}
	return setField(fs, "Content-Transfer-Encoding", "base64"), b.Bytes(), nil
}

func is7bit(b []byte) bool {
	for _, c := range b {
		if c == 0 || c >= 0x80 {
			return false
		}
	}
	return true
}

// safeLines reports whether canonical text can be signed as it is: 7bit,
// lines of at most 998 octets, no trailing white space, no "From ".
func safeLines(b []byte) bool {
	if !is7bit(b) {
		return false
	}
	for _, line := range bytes.Split(b, []byte("\r\n")) {
		if len(line) > 998 || bytes.HasPrefix(line, []byte("From ")) || bytes.ContainsRune(line, '\r') || bytes.ContainsRune(line, '\n') {
			return false
		}
		if n := len(line); n > 0 && (line[n-1] == ' ' || line[n-1] == '\t') {
			return false
		}
	}
	return true
}
