package attachments

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/internal/linelen"
	"github.com/opesmilter/opes-milter/opes"
)

// Bounds that are not options.
const (
	sniffLen    = 512     // decoded octets kept per part
	maxLine     = 1 << 20 // longest line read; guards part headers, which go-message does not bound
	maxName     = 64      // octets of a file name in a reason
	maxNameSeen = 1024    // longer file names are cut before they are checked
)

// errStop unwinds the walk once a finding is made.
var errStop = errors.New("attachments: finding made")

var (
	errTooLarge    = errors.New("message larger than max_scan_size")
	errLineTooLong = errors.New("line longer than 1 MiB")
)

// Scan walks the message of tx and returns the first finding, or nil if
// nothing is to be blocked. An error means the message could not be read
// (the spool failed, or ctx ended), not that it is malformed.
func (s *Service) Scan(ctx context.Context, tx *opes.Transaction) (*Finding, error) {
	var th textproto.Header
	for _, name := range []string{"Content-Type", "Content-Transfer-Encoding", "Content-Disposition"} {
		if tx.Header != nil {
			if v := tx.Header.Get(name); v != "" {
				th.Set(name, v)
			}
		}
	}
	var body io.Reader = strings.NewReader("")
	if cur := tx.CurrentBody(); cur != nil { // what will be delivered
		body = cur.Reader()
	}
	sc := &scanner{s: s, ctx: ctx, frozen: -1, in: &guardReader{r: body, ctx: ctx, limit: s.limits.scanSize}}
	e, err := message.New(message.Header{Header: th}, sc.in)
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		err = sc.malformed(err)
	} else {
		err = sc.entity(e, 0)
	}
	if errors.Is(err, errStop) {
		return sc.finding, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, nil
}

type scanner struct {
	s       *Service
	ctx     context.Context
	in      *guardReader
	parts   int
	finding *Finding
	// path is the index of each multipart child on the way to the
	// current part; frozen is its length at the outermost attached
	// message, -1 outside one: a finding inside a message replaces the
	// whole attached message.
	path   []int
	frozen int
}

// found records f and stops the walk.
func (sc *scanner) found(kind, name, detail string) error {
	sc.finding = &Finding{Kind: kind, Name: sanitize(name, maxName), Detail: sanitize(detail, maxName)}
	path := sc.path
	if sc.frozen >= 0 {
		path = path[:sc.frozen]
	}
	sc.finding.path = append([]int(nil), path...)
	return errStop
}

// malformed turns a parse or read error into a finding, unless the cause
// is the input itself: a failing spool or an ended context is an error,
// an exceeded bound is its own finding.
func (sc *scanner) malformed(err error) error {
	switch {
	case sc.in.srcErr != nil:
		return fmt.Errorf("attachments: read body: %w", sc.in.srcErr)
	case sc.in.tooLarge:
		return sc.found(FindingTooLarge, "", "")
	case sc.in.lineTooLong:
		return sc.found(FindingMalformed, "", errLineTooLong.Error())
	}
	return sc.found(FindingMalformed, "", shortError(err))
}

// shortError keeps a parse error's message, but not the input it may
// quote: go-message puts the offending header line in it.
func shortError(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "line:"); i >= 0 {
		msg = msg[:i+4]
	}
	if i := strings.Index(msg, "key:"); i >= 0 {
		msg = msg[:i+3]
	}
	return msg
}

func usable(e *message.Entity, err error) bool {
	return e != nil && (err == nil || message.IsUnknownCharset(err) || message.IsUnknownEncoding(err))
}

func (sc *scanner) entity(e *message.Entity, depth int) error {
	if err := sc.ctx.Err(); err != nil {
		return err
	}
	sc.parts++
	if sc.parts > sc.s.limits.parts {
		return sc.found(FindingTooManyParts, "", fmt.Sprintf("more than %d", sc.s.limits.parts))
	}
	if depth > sc.s.limits.depth {
		return sc.found(FindingTooDeep, "", fmt.Sprintf("more than %d levels", sc.s.limits.depth))
	}
	mt, params, _ := e.Header.ContentType()
	mt = strings.ToLower(mt)
	if strings.HasPrefix(mt, "multipart/") {
		if params["boundary"] == "" {
			return sc.found(FindingMalformed, "", "multipart without boundary")
		}
		mr := e.MultipartReader()
		for i := 0; ; i++ {
			p, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if !usable(p, err) {
				return sc.malformed(err)
			}
			sc.path = append(sc.path, i)
			err = sc.entity(p, depth+1)
			sc.path = sc.path[:len(sc.path)-1]
			if err != nil {
				return err
			}
		}
	}
	names := fileNames(e.Header)
	if err := sc.checkNames(names, ""); err != nil {
		return err
	}
	if sc.s.types[mt] {
		return sc.found(FindingType, firstOf(names), mt)
	}
	if mt == "message/rfc822" || mt == "message/global" {
		if sc.frozen < 0 {
			sc.frozen = len(sc.path)
			defer func() { sc.frozen = -1 }()
		}
		inner, err := message.Read(e.Body)
		if !usable(inner, err) {
			return sc.malformed(err)
		}
		return sc.entity(inner, depth+1)
	}
	return sc.leaf(e, mt, names)
}

// leaf reads one part through: its first octets are sniffed, a zip is
// spooled and listed, the rest is only counted.
func (sc *scanner) leaf(e *message.Entity, mt string, names []string) error {
	head := make([]byte, sniffLen)
	n, err := io.ReadFull(e.Body, head)
	head = head[:n]
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return sc.malformed(err)
	}
	if sniffed := sniff(head); sc.s.types[sniffed] {
		return sc.found(FindingType, firstOf(names), sniffed)
	}
	isZip := bytes.HasPrefix(head, []byte("PK\x03\x04"))
	if isZip {
		return sc.archive(e.Body, head, firstOf(names))
	}
	if _, err := io.Copy(io.Discard, e.Body); err != nil {
		return sc.malformed(err)
	}
	return nil
}

// checkNames applies the extension rule to each name; member is the
// archive a name belongs to, "" for a part's own names.
func (sc *scanner) checkNames(names []string, archive string) error {
	for _, name := range names {
		if len(name) > maxNameSeen {
			name = name[len(name)-maxNameSeen:]
		}
		last, prev := extensions(name)
		if last == "" || !sc.s.extensions[last] {
			continue
		}
		shown := name
		if archive != "" {
			shown = archive + ": " + name
		}
		if prev != "" {
			return sc.found(FindingDoubleExtension, shown, "."+prev+"."+last)
		}
		return sc.found(FindingExtension, shown, "."+last)
	}
	return nil
}

// extensions returns the last and the second last extension of the base
// name, lower case. Trailing dots and spaces are dropped, as Windows does
// when it opens a file.
func extensions(name string) (last, prev string) {
	if i := strings.LastIndexAny(name, "/\\"); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ToLower(strings.TrimRight(name, ". \t"))
	parts := strings.Split(name, ".")
	if len(parts) < 2 || parts[0] == "" && len(parts) == 2 {
		return "", ""
	}
	last = strings.TrimSpace(parts[len(parts)-1])
	if len(parts) >= 3 {
		p := strings.TrimSpace(parts[len(parts)-2])
		if p != "" && len(p) <= 5 {
			prev = p
		}
	}
	return last, prev
}

// fileNames returns the file names a part declares: the
// Content-Disposition filename and the Content-Type name, RFC 2231
// (encoded, continued) and RFC 2047 encodings decoded.
func fileNames(h message.Header) []string {
	var out []string
	add := func(v string) {
		v = strings.TrimSpace(v)
		if v == "" {
			return
		}
		if d, err := new(mime.WordDecoder).DecodeHeader(v); err == nil {
			v = d
		}
		for _, o := range out {
			if o == v {
				return
			}
		}
		out = append(out, v)
	}
	for _, f := range []struct{ field, param string }{
		{"Content-Disposition", "filename"},
		{"Content-Type", "name"},
	} {
		raw := h.Get(f.field)
		if raw == "" {
			continue
		}
		_, params, err := mime.ParseMediaType(raw)
		if err == nil {
			add(params[f.param])
			continue
		}
		// Not parseable as a whole: mail clients still find the name, so
		// the filter must too.
		for _, seg := range strings.Split(raw, ";") {
			k, v, ok := strings.Cut(seg, "=")
			k = strings.ToLower(strings.TrimSpace(k))
			if ok && (k == f.param || strings.HasPrefix(k, f.param+"*")) {
				v = strings.Trim(strings.TrimSpace(v), `"`)
				if strings.HasPrefix(k, f.param+"*") {
					if i := strings.LastIndex(v, "''"); i >= 0 {
						v = v[i+2:]
					}
					if u, err := percentDecode(v); err == nil {
						v = u
					}
				}
				add(v)
			}
		}
	}
	return out
}

func percentDecode(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("short escape")
		}
		var c byte
		for _, h := range []byte(s[i+1 : i+3]) {
			switch {
			case h >= '0' && h <= '9':
				c = c<<4 | (h - '0')
			case h >= 'a' && h <= 'f':
				c = c<<4 | (h - 'a' + 10)
			case h >= 'A' && h <= 'F':
				c = c<<4 | (h - 'A' + 10)
			default:
				return "", errors.New("bad escape")
			}
		}
		b.WriteByte(c)
		i += 2
	}
	return b.String(), nil
}

func firstOf(names []string) string {
	if len(names) > 0 {
		return names[0]
	}
	return ""
}

// sniff returns the media type of the first octets of a part: magic
// numbers of executables and archives first, then net/http's sniffer.
func sniff(b []byte) string {
	switch {
	case len(b) >= 64 && b[0] == 'M' && b[1] == 'Z':
		return "application/x-msdownload"
	case bytes.HasPrefix(b, []byte("\x7fELF")):
		return "application/x-executable"
	case bytes.HasPrefix(b, []byte("PK\x03\x04")):
		return "application/zip"
	case len(b) == 0:
		return ""
	}
	mt, _, _ := strings.Cut(http.DetectContentType(b), ";")
	return mt
}

// guardReader is the message as the walk reads it: it bounds the octets
// and the line length, stops when ctx ends, and remembers why it failed.
type guardReader struct {
	r     io.Reader
	ctx   context.Context
	limit int64
	n     int64
	lines linelen.Counter

	srcErr      error
	tooLarge    bool
	lineTooLong bool
}

func (g *guardReader) Read(p []byte) (int, error) {
	if err := g.ctx.Err(); err != nil {
		g.srcErr = err
		return 0, err
	}
	if g.n >= g.limit {
		// A message of exactly limit octets is not too large.
		var one [1]byte
		n, err := g.r.Read(one[:])
		switch {
		case n > 0:
			g.tooLarge = true
			return 0, errTooLarge
		case err != nil && err != io.EOF:
			g.srcErr = err
		}
		return 0, err
	}
	if int64(len(p)) > g.limit-g.n {
		p = p[:g.limit-g.n]
	}
	n, err := g.r.Read(p)
	g.n += int64(n)
	if g.lines.Add(p[:n], maxLine) {
		g.lineTooLong = true
		return 0, errLineTooLong
	}
	if err != nil && err != io.EOF {
		g.srcErr = err
	}
	return n, err
}
