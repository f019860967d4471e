package normalize

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Bounds on the structure of a message (Postfix's mime_nesting_limit is
// 100 as well); beyond them the message is left as it is and reported.
const (
	maxDepth         = 100
	maxParts         = 10000
	maxPartHeader    = 64 << 10 // octets of one part header
	maxPartHeaderLen = 1000     // lines of one part header
)

var errTooManyParts = errors.New("normalize: too many parts")

// result is what a rewrite found and did.
type result struct {
	rep         *report
	top         *partHeader // the message header with its repairs
	bodyChanged bool
}

// parser states.
const (
	stHeader  = iota // reading a part header
	stLeaf           // reading a leaf part's content
	stBetween        // in a multipart's preamble or epilogue
)

type frame struct {
	boundary string
	depth    int // depth of the multipart itself
	parts    int
	closed   bool
}

// rewriter reads the body line by line, keeps the multipart structure on
// a stack of frames, and writes the repaired body. Memory is bounded: one
// line fragment, one part header, the frames; leaf content is spooled.
type rewriter struct {
	on    repairSet
	rep   *report
	out   *outWriter
	fixer headerFixer
	res   *result

	frames []*frame
	state  int
	depth  int  // depth of the part being read
	isMsg  bool // the header being read starts an encapsulated message
	hdr    []string
	hdrLen int
	leaf   *leafState
	parts  int
	frag   bool // the previous line goes on
}

// rewrite reads the body from in and writes the normalised body to out;
// top is the message header, repaired in place. out receives a complete
// body even when nothing changed; res.bodyChanged says whether it
// differs.
func rewrite(in io.ReadSeeker, out io.Writer, top *partHeader, on repairSet, utf8ok bool) (*result, error) {
	res := &result{rep: newReport(), top: top}
	delims, err := scanDelims(in)
	if err != nil {
		return res, fmt.Errorf("scan body: %w", err)
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return res, fmt.Errorf("rewind body: %w", err)
	}
	bw := bufio.NewWriterSize(out, 64<<10)
	r := &rewriter{on: on, rep: res.rep, out: &outWriter{w: bw}, res: res}
	r.fixer = headerFixer{on: on, rep: res.rep, delims: delims, changed: func() { res.bodyChanged = true }, utf8ok: utf8ok}
	r.fixer.repair(top, true)
	if err := r.beginBody(top); err != nil {
		return res, err
	}
	lr := newLineReader(in)
	for {
		l, e, more, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("read body: %w", err)
		}
		if err := r.line(l, e, more); err != nil {
			if errors.Is(err, errTooManyParts) {
				res.rep.fail("too-many-parts")
				res.bodyChanged = false
				return res, nil
			}
			return res, err
		}
	}
	if err := r.finish(); err != nil {
		return res, err
	}
	if err := bw.Flush(); err != nil {
		return res, fmt.Errorf("write body: %w", err)
	}
	return res, nil
}

func (r *rewriter) changed(repair string) {
	r.rep.fix(repair)
	r.res.bodyChanged = true
}

func (r *rewriter) openBoundaries() []string {
	var out []string
	for _, f := range r.frames {
		if !f.closed {
			out = append(out, f.boundary)
		}
	}
	return out
}

// opaqueType says a part cannot take a content transfer encoding other
// than the identity ones (RFC 2045 §6.4, RFC 2046 §5.2).
func opaqueType(h *partHeader) bool {
	switch h.mt {
	case "message/rfc822", "message/partial", "message/external-body", "message/global":
		return true
	}
	return strings.HasPrefix(h.mt, "multipart/")
}

// beginBody decides how the body of the part whose header is h is read.
func (r *rewriter) beginBody(h *partHeader) error {
	if isSigned(h.mt) {
		return errSigned
	}
	identity := h.cte == "" || h.cte == "7bit" || h.cte == "8bit" || h.cte == "binary"
	switch {
	case strings.HasPrefix(h.mt, "multipart/") && h.boundary != "" && r.depth < maxDepth:
		r.emitHeader(h)
		r.frames = append(r.frames, &frame{boundary: h.boundary, depth: r.depth})
		r.state = stBetween
		return nil
	case h.mt == "message/rfc822" && identity && r.depth < maxDepth:
		r.emitHeader(h)
		r.startHeader(r.depth+1, true)
		return nil
	}
	if opaqueType(h) && r.depth >= maxDepth {
		r.rep.fail("nesting-too-deep")
	}
	r.leaf = newLeaf(h, opaqueType(h))
	r.state = stLeaf
	return nil
}

func (r *rewriter) startHeader(depth int, message bool) {
	r.state, r.depth, r.isMsg = stHeader, depth, message
	r.hdr, r.hdrLen = r.hdr[:0], 0
}

// line takes the next line (or fragment) of the body.
func (r *rewriter) line(l []byte, e eol, more bool) error {
	cont := r.frag
	r.frag = more
	if !more && (e == eolLF || e == eolCR) && r.on.has(RepairLineEndings) {
		r.changed(RepairLineEndings)
	}
	if !cont && len(l) >= 2 && l[0] == '-' && l[1] == '-' {
		if k, closing := r.matchDelim(l); k >= 0 {
			return r.delimiter(k, closing)
		}
	}
	return r.dispatch(l, e, more, cont)
}

func (r *rewriter) dispatch(l []byte, e eol, more, cont bool) error {
	switch r.state {
	case stHeader:
		return r.headerLine(l, e, more, cont)
	case stLeaf:
		return r.leaf.add(l, e, more, cont)
	}
	r.betweenLine(l, more)
	return nil
}

// matchDelim finds the multipart that l delimits. The outermost one wins,
// as in readers that hand each part's content to the nested parser.
func (r *rewriter) matchDelim(l []byte) (int, bool) {
	for k, f := range r.frames {
		if f.closed {
			continue
		}
		rest, ok := bytes.CutPrefix(l[2:], []byte(f.boundary))
		if !ok {
			continue
		}
		closing := false
		if t, ok := bytes.CutPrefix(rest, []byte("--")); ok {
			rest, closing = t, true
		}
		if len(bytes.TrimLeft(rest, " \t")) == 0 {
			return k, closing
		}
	}
	return -1, false
}

// delimiter ends the current part and starts the next one of frame k, or
// closes it.
func (r *rewriter) delimiter(k int, closing bool) error {
	if err := r.endPart(true); err != nil {
		return err
	}
	for len(r.frames) > k+1 {
		r.closeFrame(r.frames[len(r.frames)-1])
		r.frames = r.frames[:len(r.frames)-1]
	}
	f := r.frames[k]
	if closing {
		r.out.str("--" + f.boundary + "--\r\n")
		f.closed = true
		r.state = stBetween
		return nil
	}
	r.parts++
	if r.parts > maxParts {
		return errTooManyParts
	}
	r.out.str("--" + f.boundary + "\r\n")
	f.parts++
	r.startHeader(f.depth+1, false)
	return nil
}

// closeFrame writes the close delimiter a multipart lacks, after an empty
// part if it had none (RFC 2046 requires one).
func (r *rewriter) closeFrame(f *frame) {
	if f.closed {
		return
	}
	if f.parts == 0 {
		r.out.str("--" + f.boundary + "\r\n\r\n")
	}
	r.out.str("--" + f.boundary + "--\r\n")
	f.closed = true
	r.changed(RepairBoundaries)
}

// endPart finishes the part being read: its header (a part that ends in
// its header has an empty body) and its content.
func (r *rewriter) endPart(byDelim bool) error {
	for i := 0; r.state == stHeader && i <= maxDepth+1; i++ {
		if err := r.endHeader(); err != nil {
			return err
		}
	}
	if r.state == stLeaf {
		if err := r.finishLeaf(byDelim); err != nil {
			return err
		}
	}
	return nil
}

func (r *rewriter) finish() error {
	if err := r.endPart(false); err != nil {
		return err
	}
	if r.out.n > 0 && !r.out.endsCRLF() {
		r.out.str("\r\n")
	}
	for i := len(r.frames) - 1; i >= 0; i-- {
		r.closeFrame(r.frames[i])
	}
	return nil
}

// betweenLine copies a preamble or epilogue line. Readers ignore that
// text, so long lines are simply cut and NULs dropped.
func (r *rewriter) betweenLine(l []byte, more bool) {
	if bytes.IndexByte(l, 0) >= 0 && r.on.has(RepairEncodings) {
		l = bytes.ReplaceAll(l, []byte{0}, nil)
		r.changed(RepairEncodings)
	}
	if (len(l) > maxLine || more) && r.on.has(RepairLongLines) {
		r.changed(RepairLongLines)
		for len(l) > maxLine {
			_, _ = r.out.Write(l[:maxLine])
			r.out.str("\r\n")
			l = l[maxLine:]
		}
	}
	_, _ = r.out.Write(l)
	r.out.str("\r\n")
}

// headerLine collects one line of a part header.
func (r *rewriter) headerLine(l []byte, e eol, more, cont bool) error {
	switch {
	case cont:
		if len(r.hdr) > 0 && r.hdrLen+len(l) <= maxPartHeader {
			r.hdr[len(r.hdr)-1] += string(l)
			r.hdrLen += len(l)
			return nil
		}
	case len(l) == 0 && !more:
		return r.endHeader()
	case l[0] == ' ' || l[0] == '\t':
		if len(r.hdr) > 0 && r.hdrLen+len(l) <= maxPartHeader && len(r.hdr) < maxPartHeaderLen {
			r.hdr[len(r.hdr)-1] += "\r\n" + string(l)
			r.hdrLen += len(l) + 2
			return nil
		}
	case validFieldLine(l) && r.hdrLen+len(l) <= maxPartHeader && len(r.hdr) < maxPartHeaderLen:
		r.hdr = append(r.hdr, string(l))
		r.hdrLen += len(l)
		return nil
	}
	// Not a header line (or one too many): the header ended without its
	// empty line, and this is the first line of the content.
	if r.hdrLen+len(l) > maxPartHeader || len(r.hdr) >= maxPartHeaderLen {
		r.rep.fail("part-header-too-large")
	}
	r.changed(RepairPartHeaders)
	if err := r.endHeader(); err != nil {
		return err
	}
	return r.dispatch(l, e, more, cont)
}

// validFieldLine is "name:" with a name of printable ASCII (RFC 5322
// ftext; white space before the colon is the obsolete syntax, accepted).
func validFieldLine(l []byte) bool {
	i := bytes.IndexByte(l, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(l[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// endHeader parses and repairs the collected header, then starts its
// body.
func (r *rewriter) endHeader() error {
	h := &partHeader{}
	for _, l := range r.hdr {
		name, value, _ := strings.Cut(l, ":")
		h.fields = append(h.fields, hfield{name: strings.TrimRight(name, " \t"), value: value})
	}
	r.hdr = r.hdr[:0]
	r.fixer.ancestors = r.openBoundaries()
	r.fixer.repair(h, r.isMsg)
	r.isMsg = false
	return r.beginBody(h)
}

// emitHeader writes a part header and the empty line after it.
func (r *rewriter) emitHeader(h *partHeader) {
	if h.top {
		return // the processor changes the message header
	}
	for _, f := range h.fields {
		if f.deleted {
			continue
		}
		if f.changed {
			r.out.str(f.name + ": " + strings.TrimLeft(f.value, " \t") + "\r\n")
			continue
		}
		r.out.str(f.name + ":" + f.value + "\r\n")
	}
	r.out.str("\r\n")
}

// finishLeaf writes the leaf part that just ended: its header, with the
// new transfer encoding if the content is re-encoded, then the content.
func (r *rewriter) finishLeaf(byDelim bool) error {
	s := r.leaf
	r.leaf = nil
	r.state = stBetween
	defer s.spool.Close()
	if !byDelim && s.lines > 0 && s.pend != eolNone {
		if _, err := s.w.Write(s.pend.bytes()); err != nil {
			return err
		}
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool part: %w", err)
	}
	mode, newCTE, repairs := s.plan(r.on, r.rep)
	for _, rp := range repairs {
		if s.h.top {
			r.rep.fix(rp)
			if mode != modeVerbatim {
				r.res.bodyChanged = true
			}
		} else {
			r.changed(rp)
		}
	}
	if newCTE != "" && newCTE != s.h.cte {
		s.h.set("Content-Transfer-Encoding", newCTE)
		if s.h.top && s.h.index("MIME-Version") < 0 {
			s.h.set("MIME-Version", "1.0")
			r.rep.fix(RepairMIMEVersion)
		}
	}
	r.emitHeader(s.h)
	start := r.out.n
	if err := s.write(r.out, mode, r.on); err != nil {
		return fmt.Errorf("write part: %w", err)
	}
	switch {
	case byDelim && s.lines > 0:
		r.out.str("\r\n")
	case !byDelim && r.out.n > start && !r.out.endsCRLF():
		r.out.str("\r\n")
	}
	return nil
}
