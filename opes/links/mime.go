package links

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/internal/linelen"
	"github.com/opesmilter/opes-milter/opes"
)

// Bounds of the walk that are not options.
const (
	maxDepth = 20
	maxParts = 1000
	maxLine  = 1 << 20 // a longer line is malformed: it guards part headers, which textproto does not bound
	maxName  = 100     // runes of a file name kept
)

var (
	errSigned    = errors.New("links: message is signed or encrypted")
	errMalformed = errors.New("links: malformed MIME structure")
)

// node is one MIME entity of the message, as the first read found it.
type node struct {
	parent      *node
	mediaType   string // lower case; "" when there was none
	params      map[string]string
	disposition string // lower case
	filename    string // cleaned; "" when the part has none
	cte         string // lower case Content-Transfer-Encoding
	multipart   bool
	children    []*node
	rawSize     int64 // encoded octets of a leaf

	// candidate: an attachment large enough that it may move.
	candidate bool
	// stored is set once the second read stored it: the part moves.
	stored *Stored
	link   string

	// Body text parts (text/plain, text/html that are not attachments).
	eligible bool  // decodes, in a charset our ASCII link text fits
	insertAt int64 // decoded offset where HTML gets the links
	decoded  int64 // decoded octets
	endsNL   bool  // decoded text ends with a line break
	lf       bool  // its line breaks are bare LF
}

// message is the structure of the whole message.
type message struct {
	root       *node
	candidates []*node
	parts      int
}

// moved returns the parts that were stored, in document order.
func (m *message) moved() []*node {
	var out []*node
	for _, n := range m.candidates {
		if n.stored != nil {
			out = append(out, n)
		}
	}
	return out
}

func (n *node) isBodyText() bool {
	return (n.mediaType == "text/plain" || n.mediaType == "text/html") && n.disposition != "attachment"
}

func (n *node) isAttachment() bool {
	return !n.multipart && !n.isBodyText() && (n.disposition == "attachment" || n.filename != "")
}

// contentType is what the store records and the handler serves: the
// media type, with the charset for text.
func (n *node) contentType() string {
	if n.mediaType == "" || !strings.Contains(n.mediaType, "/") {
		return "application/octet-stream"
	}
	if cs := n.params["charset"]; cs != "" && strings.HasPrefix(n.mediaType, "text/") {
		if v := mime.FormatMediaType(n.mediaType, map[string]string{"charset": cs}); v != "" {
			return v
		}
	}
	if v := mime.FormatMediaType(n.mediaType, nil); v != "" {
		return v
	}
	return "application/octet-stream"
}

// topHeader is the top-level entity's MIME header as the walk needs it.
func topHeader(h *opes.Header) textproto.Header {
	var th textproto.Header
	for _, name := range []string{"Content-Type", "Content-Transfer-Encoding", "Content-Disposition"} {
		if h != nil {
			if v := h.Get(name); v != "" {
				th.Set(name, v)
			}
		}
	}
	return th
}

func newNode(h textproto.Header, parent *node) *node {
	n := &node{parent: parent, params: map[string]string{}}
	if ct := h.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		switch {
		case err == nil:
			n.mediaType, n.params = mt, params
		case errors.Is(err, mime.ErrInvalidMediaParameter):
			n.mediaType = mt
		default:
			n.mediaType = "application/octet-stream"
		}
	} else if parent != nil && parent.mediaType == "multipart/digest" {
		n.mediaType = "message/rfc822"
	} else {
		n.mediaType = "text/plain"
	}
	n.multipart = strings.HasPrefix(n.mediaType, "multipart/")
	var dparams map[string]string
	if cd := h.Get("Content-Disposition"); cd != "" {
		d, p, err := mime.ParseMediaType(cd)
		if err == nil || errors.Is(err, mime.ErrInvalidMediaParameter) {
			n.disposition, dparams = d, p
		} else if i := strings.IndexByte(cd, ';'); i >= 0 {
			n.disposition = strings.ToLower(strings.TrimSpace(cd[:i]))
		} else {
			n.disposition = strings.ToLower(strings.TrimSpace(cd))
		}
	}
	name := dparams["filename"]
	if name == "" {
		name = n.params["name"]
	}
	if name != "" {
		n.filename = cleanName(name)
	}
	n.cte = strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	return n
}

// signedType reports the media types whose content a change would break.
func signedType(mt string) bool {
	switch mt {
	case "multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime",
		"application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-encrypted",
		"application/pgp-signature":
		return true
	}
	return false
}

// cleanName makes a file name from the sender safe to show, to put in a
// URL and to serve in Content-Disposition: RFC 2047 decoded, no
// directories, no control or format characters (U+202E would disguise
// the extension), no leading dots, bounded.
func cleanName(v string) string {
	if d, err := new(mime.WordDecoder).DecodeHeader(v); err == nil {
		v = d
	}
	v = strings.ToValidUTF8(v, "_")
	if i := strings.LastIndexAny(v, `/\`); i >= 0 {
		v = v[i+1:]
	}
	v = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			return '_'
		}
		return r
	}, v)
	v = strings.Trim(strings.TrimSpace(v), ". ")
	if r := []rune(v); len(r) > maxName {
		ext := ""
		if i := strings.LastIndexByte(v, '.'); i >= 0 && len(v)-i <= 16 {
			ext = v[i:]
		}
		e := []rune(ext)
		v = string(r[:maxName-len(e)]) + ext
	}
	if v == "" {
		return "attachment"
	}
	return v
}

// asciiCompatible reports whether text in charset cs keeps its meaning
// when ASCII octets are appended: true for UTF-8, the ISO 8859 and
// Windows families, ISO-2022 (which ends in ASCII) and the rest, false
// for the UTF-16/32 and UTF-7 encodings.
func asciiCompatible(cs string) bool {
	cs = strings.ToLower(cs)
	for _, p := range []string{"utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4", "utf-7", "utf7", "unicode"} {
		if strings.HasPrefix(cs, p) {
			return false
		}
	}
	return true
}

func knownCTE(cte string) bool {
	switch cte {
	case "", "7bit", "8bit", "binary", "quoted-printable", "base64":
		return true
	}
	return false
}

// decode returns the decoded content of a part with transfer encoding
// cte; knownCTE(cte) must hold.
func decode(cte string, r io.Reader) io.Reader {
	switch cte {
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &spaceDropper{r: r})
	}
	return r
}

// spaceDropper turns spaces and tabs into line breaks, which the base64
// decoder skips: some mailers indent base64 lines.
type spaceDropper struct{ r io.Reader }

func (s *spaceDropper) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	for i, c := range p[:n] {
		if c == ' ' || c == '\t' {
			p[i] = '\n'
		}
	}
	return n, err
}

// guardReader is the message as a walk reads it: it stops when ctx ends,
// bounds the line length, and remembers why it failed, so that a failing
// spool is told apart from a malformed message.
type guardReader struct {
	r     io.Reader
	ctx   context.Context
	lines linelen.Counter

	srcErr  error
	tooLong bool
}

var errLineTooLong = fmt.Errorf("%w: line longer than %d octets", errMalformed, maxLine)

func (g *guardReader) Read(p []byte) (int, error) {
	if err := g.ctx.Err(); err != nil {
		g.srcErr = err
		return 0, err
	}
	n, err := g.r.Read(p)
	if g.lines.Add(p[:n], maxLine) {
		g.tooLong = true
		return n, errLineTooLong
	}
	if err != nil && err != io.EOF {
		g.srcErr = err
	}
	return n, err
}

// failed returns the error that is not the message's fault, or the line
// bound; nil when the reader is fine.
func (g *guardReader) failed() error {
	switch {
	case g.srcErr != nil:
		return fmt.Errorf("links: read body: %w", g.srcErr)
	case g.tooLong:
		return errLineTooLong
	}
	return nil
}

// classify turns an error met while walking into errMalformed unless the
// reader itself failed.
func (g *guardReader) classify(err error) error {
	if err == nil {
		return nil
	}
	if f := g.failed(); f != nil {
		return f
	}
	if errors.Is(err, errMalformed) || errors.Is(err, errSigned) {
		return err
	}
	return fmt.Errorf("%w: %v", errMalformed, err)
}

// eachChild reads the parts of multipart n from body and calls fn with
// each part's node (from the first read) and raw content.
func eachChild(n *node, body io.Reader, fn func(i int, child *node, h textproto.Header, body io.Reader) error) error {
	mr := textproto.NewMultipartReader(body, n.params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != len(n.children) {
				return fmt.Errorf("%w: part count changed between reads", errMalformed)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if i >= len(n.children) {
			return fmt.Errorf("%w: part count changed between reads", errMalformed)
		}
		if err := fn(i, n.children[i], p.Header, p); err != nil {
			return err
		}
	}
}

// analyze is the first read: it builds the tree, finds the attachments
// that may move and measures the body text parts that may get links.
func analyze(ctx context.Context, top textproto.Header, body io.Reader, minSize int64) (*message, error) {
	g := &guardReader{r: body, ctx: ctx}
	m := &message{}
	root, err := m.parse(top, g, nil, 0, minSize)
	if err != nil {
		return nil, g.classify(err)
	}
	m.root = root
	return m, nil
}

func (m *message) parse(h textproto.Header, body io.Reader, parent *node, depth int, minSize int64) (*node, error) {
	m.parts++
	if m.parts > maxParts {
		return nil, fmt.Errorf("%w: more than %d parts", errMalformed, maxParts)
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: more than %d levels", errMalformed, maxDepth)
	}
	n := newNode(h, parent)
	if signedType(n.mediaType) {
		return nil, errSigned
	}
	if n.multipart {
		if n.params["boundary"] == "" {
			return nil, fmt.Errorf("%w: multipart without boundary", errMalformed)
		}
		mr := textproto.NewMultipartReader(body, n.params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return nil, err
			}
			c, err := m.parse(p.Header, p, n, depth+1, minSize)
			if err != nil {
				return nil, err
			}
			n.children = append(n.children, c)
		}
	}
	cr := &countReader{r: body}
	if n.isBodyText() && knownCTE(n.cte) && asciiCompatible(n.params["charset"]) {
		sc := &textScan{lastBody: -1, lastHTML: -1}
		_, err := io.Copy(sc, decode(n.cte, cr))
		if err == nil {
			n.eligible = true
			n.decoded = sc.off
			n.endsNL = sc.last == '\n'
			n.lf = sc.sawNL && !sc.crlf
			n.insertAt = sc.off
			if n.mediaType == "text/html" {
				if sc.lastBody >= 0 {
					n.insertAt = sc.lastBody
				} else if sc.lastHTML >= 0 {
					n.insertAt = sc.lastHTML
				}
			}
		}
		// A decoding error only makes the part ineligible; an error of
		// the structure shows again below.
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, err
	}
	n.rawSize = cr.n
	if n.isAttachment() && knownCTE(n.cte) && n.rawSize >= minSize {
		// Decoding never makes content larger, so a part whose encoded
		// size is below min_size cannot reach it.
		n.candidate = true
		m.candidates = append(m.candidates, n)
	}
	return n, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// textScan measures decoded text as it streams by: its length, its last
// octet, whether line breaks are CRLF, and the offsets of the last
// "</body" and "</html" (ASCII case-insensitive; the charset is
// ASCII-compatible).
type textScan struct {
	off                int64
	tail               []byte // last octets of the previous write, shorter than a tag
	last               byte
	sawNL, crlf        bool
	lastBody, lastHTML int64
}

func (s *textScan) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	buf := make([]byte, 0, len(s.tail)+len(p))
	buf = append(buf, s.tail...)
	buf = append(buf, p...)
	lower := asciiLower(buf)
	base := s.off - int64(len(s.tail))
	for _, t := range []struct {
		tag string
		at  *int64
	}{{"</body", &s.lastBody}, {"</html", &s.lastHTML}} {
		if i := bytes.LastIndex(lower, []byte(t.tag)); i >= 0 {
			*t.at = base + int64(i)
		}
	}
	if !s.sawNL {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			s.sawNL = true
			s.crlf = i > 0 && buf[i-1] == '\r'
		}
	}
	s.off += int64(len(p))
	s.last = p[len(p)-1]
	keep := min(len(buf), 5) // shorter than "</body": a match is never counted twice
	s.tail = append(s.tail[:0], buf[len(buf)-keep:]...)
	return len(p), nil
}

// asciiLower lowers A-Z only, so offsets stay those of the input.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}
