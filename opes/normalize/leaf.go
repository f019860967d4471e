package normalize

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"mime/quotedprintable"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// leafState is a part whose content is being read: spooled (memory, then
// disk) while the problems are counted, so that its header can say the
// new transfer encoding before the content is written.
type leafState struct {
	h      *partHeader
	spool  *opes.Body
	w      *bufio.Writer // batches small writes: a spooled body writes to its file per call
	lines  int
	pend   eol // end of the last complete line, written when another follows
	curLen int
	long   bool // a line over maxLine octets
	nul    bool
	high   bool // 8-bit octets
	bare   bool // bare CR or LF
	uu     uuState
	uuBad  int
	text   bool // text/* or a textual message/*
	opaque bool // cannot take another transfer encoding (multipart, message/rfc822)
}

func newLeaf(h *partHeader, opaque bool) *leafState {
	mt := h.mt
	text := strings.HasPrefix(mt, "text/") || (strings.HasPrefix(mt, "message/") && !opaque)
	spool := opes.NewBody(opes.BodyOptions{})
	return &leafState{h: h, spool: spool, w: bufio.NewWriterSize(spool, 32<<10), text: text, opaque: opaque}
}

func (s *leafState) identity() bool {
	if strings.HasPrefix(s.h.mt, "multipart/") {
		return true // a transfer encoding on a multipart is ignored by readers
	}
	switch s.h.cte {
	case "", "7bit", "8bit", "binary":
		return true
	}
	return false
}

func (s *leafState) uuCTE() bool {
	switch s.h.cte {
	case "x-uuencode", "uuencode", "x-uue":
		return true
	}
	return false
}

// add takes one line or fragment. cont says it continues the previous
// fragment.
func (s *leafState) add(l []byte, e eol, more, cont bool) error {
	if !cont {
		if s.lines > 0 {
			if _, err := s.w.Write(s.pend.bytes()); err != nil {
				return err
			}
		}
		s.lines++
		s.curLen = 0
		if s.text && s.identity() && isInlinePGP(l) {
			return errSigned
		}
		if (s.text && s.identity()) || s.uuCTE() {
			if s.uu.check(l) {
				s.uuBad++
			}
		}
	}
	if _, err := s.w.Write(l); err != nil {
		return err
	}
	s.curLen += len(l)
	if s.curLen > maxLine {
		s.long = true
	}
	if bytes.IndexByte(l, 0) >= 0 {
		s.nul = true
	}
	if !s.high {
		for _, c := range l {
			if c >= 0x80 {
				s.high = true
				break
			}
		}
	}
	if !more {
		s.pend = e
		if e == eolLF || e == eolCR {
			s.bare = true
		}
	}
	return nil
}

func isInlinePGP(l []byte) bool {
	return bytes.HasPrefix(l, []byte("-----BEGIN PGP SIGNED MESSAGE-----")) || bytes.HasPrefix(l, []byte("-----BEGIN PGP MESSAGE-----"))
}

// content modes of a leaf in the output.
type leafMode uint8

const (
	modeVerbatim   leafMode = iota
	modeNormalize           // line ends to CRLF (and uuencode lines fixed)
	modeQPText              // normalised text → quoted-printable
	modeB64Raw              // raw octets → base64
	modeLenientQP           // decode quoted-printable leniently, encode again
	modeLenientB64          // decode base64 leniently, encode again
)

// plan decides how the leaf is written and which repairs that makes.
func (s *leafState) plan(on repairSet, rep *report) (mode leafMode, newCTE string, repairs []string) {
	lineEnds := s.bare && on.has(RepairLineEndings)
	uuFix := s.uuBad > 0 && on.has(RepairUuencode)
	switch {
	case s.identity():
		var why []string
		if s.long && on.has(RepairLongLines) {
			why = append(why, RepairLongLines)
		}
		if s.nul && on.has(RepairEncodings) {
			why = append(why, RepairEncodings)
		}
		if len(why) > 0 && s.opaque {
			rep.fail("cannot-reencode:" + s.h.mt)
			why = nil
		}
		switch {
		case len(why) > 0 && s.text:
			mode, newCTE, repairs = modeQPText, "quoted-printable", why
			if uuFix {
				repairs = append(repairs, RepairUuencode)
			}
		case len(why) > 0:
			mode, newCTE, repairs = modeB64Raw, "base64", why
		case lineEnds && !s.text && !s.opaque:
			mode, newCTE, repairs = modeB64Raw, "base64", []string{RepairLineEndings}
		case lineEnds || uuFix:
			mode = modeNormalize
			if lineEnds {
				repairs = append(repairs, RepairLineEndings)
			}
			if uuFix {
				repairs = append(repairs, RepairUuencode)
			}
			if s.h.cte == "binary" {
				newCTE = "7bit"
				if s.high {
					newCTE = "8bit"
				}
			}
		}
		if (mode == modeVerbatim || mode == modeNormalize) && s.h.cte == "7bit" && s.high && on.has(RepairEncodings) {
			newCTE = "8bit"
			repairs = append(repairs, RepairEncodings)
		}
	case s.h.cte == "quoted-printable":
		bad := !s.decodes(func(r io.Reader) io.Reader { return quotedprintable.NewReader(r) })
		switch {
		case (bad && on.has(RepairEncodings)) || (s.long && on.has(RepairLongLines)):
			mode, newCTE = modeLenientQP, "quoted-printable"
			if !s.text {
				newCTE = "base64"
			}
			if bad {
				repairs = append(repairs, RepairEncodings)
			}
			if s.long {
				repairs = append(repairs, RepairLongLines)
			}
		case lineEnds:
			mode, repairs = modeNormalize, []string{RepairLineEndings}
		}
	case s.h.cte == "base64":
		bad := !s.decodes(func(r io.Reader) io.Reader {
			return base64.NewDecoder(base64.StdEncoding, &spaceToLF{r})
		})
		switch {
		case (bad && on.has(RepairEncodings)) || (s.long && on.has(RepairLongLines)):
			mode = modeLenientB64
			if bad {
				repairs = append(repairs, RepairEncodings)
			}
			if s.long {
				repairs = append(repairs, RepairLongLines)
			}
		case lineEnds:
			mode, repairs = modeNormalize, []string{RepairLineEndings}
		}
	default: // x-uuencode or unknown: the encoded form cannot be re-encoded
		if !s.uuCTE() {
			rep.fail("unknown-encoding:" + s.h.cte) // RFC 2045 §6.4: readers treat it as opaque data
		}
		if s.long && on.has(RepairLongLines) {
			rep.fail("long-line:" + s.h.cte)
		}
		if s.nul && on.has(RepairEncodings) {
			rep.fail("nul:" + s.h.cte)
		}
		if lineEnds || uuFix {
			mode = modeNormalize
			if lineEnds {
				repairs = append(repairs, RepairLineEndings)
			}
			if uuFix {
				repairs = append(repairs, RepairUuencode)
			}
		}
	}
	return mode, newCTE, repairs
}

func (s *leafState) uuFixable(on repairSet) bool {
	return s.uuBad > 0 && on.has(RepairUuencode) && ((s.text && s.identity()) || s.uuCTE())
}

// decodes reports whether the spooled content decodes as go-message and
// mail clients decode it.
func (s *leafState) decodes(dec func(io.Reader) io.Reader) bool {
	_, err := io.Copy(io.Discard, dec(s.reader()))
	return err == nil
}

// reader reads the spool in large blocks (a spooled part is a file).
func (s *leafState) reader() io.Reader {
	return bufio.NewReaderSize(s.spool.Reader(), 64<<10)
}

// write writes the content in mode to w.
func (s *leafState) write(w io.Writer, mode leafMode, on repairSet) error {
	uuFix := s.uuFixable(on)
	switch mode {
	case modeNormalize:
		return normalizeLines(s.reader(), w, uuFix)
	case modeQPText:
		qw := quotedprintable.NewWriter(w)
		if err := normalizeLines(s.reader(), qw, uuFix); err != nil {
			return err
		}
		return qw.Close()
	case modeB64Raw:
		enc := base64.NewEncoder(base64.StdEncoding, &wrap76{w: w})
		if _, err := io.Copy(enc, s.reader()); err != nil {
			return err
		}
		return enc.Close()
	case modeLenientQP:
		var enc io.WriteCloser
		if s.text {
			enc = quotedprintable.NewWriter(w)
		} else {
			enc = base64.NewEncoder(base64.StdEncoding, &wrap76{w: w})
		}
		if err := lenientQP(s.reader(), enc); err != nil {
			return err
		}
		return enc.Close()
	case modeLenientB64:
		enc := base64.NewEncoder(base64.StdEncoding, &wrap76{w: w})
		if err := lenientB64(s.reader(), enc); err != nil {
			return err
		}
		return enc.Close()
	}
	_, err := io.Copy(w, s.reader())
	return err
}

// normalizeLines copies text with every line end made CRLF, fixing
// uuencoded lines on the way when uuFix is set.
func normalizeLines(r io.Reader, w io.Writer, uuFix bool) error {
	lr := newLineReader(r)
	var uu uuState
	cont := false
	for {
		l, e, more, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if uuFix && !cont && !more {
			if uu.check(l) {
				l = uu.fix(l)
			}
		}
		if _, err := w.Write(l); err != nil {
			return err
		}
		if e != eolNone {
			if _, err := w.Write([]byte("\r\n")); err != nil {
				return err
			}
		}
		cont = more
	}
}

// lenientQP decodes quoted-printable the forgiving way: invalid escapes
// and raw octets are kept as they are, trailing white space dropped, hard
// line breaks written as CRLF.
func lenientQP(r io.Reader, w io.Writer) error {
	lr := newLineReader(r)
	var out []byte
	for {
		l, e, more, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		out = out[:0]
		if !more {
			l = bytes.TrimRight(l, " \t")
		}
		soft := !more && len(l) > 0 && l[len(l)-1] == '='
		if soft {
			l = l[:len(l)-1]
		}
		for i := 0; i < len(l); i++ {
			if l[i] == '=' && i+2 < len(l) && isHex(l[i+1]) && isHex(l[i+2]) {
				out = append(out, unhex(l[i+1])<<4|unhex(l[i+2]))
				i += 2
				continue
			}
			out = append(out, l[i])
		}
		if !more && !soft && e != eolNone {
			out = append(out, '\r', '\n')
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// lenientB64 decodes base64 the forgiving way: octets outside the
// alphabet are skipped, padding ends a group wherever it occurs (several
// encoded blocks glued together), an incomplete last group gives what it
// holds.
func lenientB64(r io.Reader, w io.Writer) error {
	var quad [4]byte
	n := 0
	flush := func(out []byte) []byte {
		switch n {
		case 2:
			out = append(out, quad[0]<<2|quad[1]>>4)
		case 3:
			out = append(out, quad[0]<<2|quad[1]>>4, quad[1]<<4|quad[2]>>2)
		}
		n = 0
		return out
	}
	buf := make([]byte, 32<<10)
	var out []byte
	for {
		k, err := r.Read(buf)
		out = out[:0]
		for _, c := range buf[:k] {
			if c == '=' {
				out = flush(out)
				continue
			}
			v := b64val(c)
			if v < 0 {
				continue
			}
			quad[n] = byte(v)
			n++
			if n == 4 {
				out = append(out, quad[0]<<2|quad[1]>>4, quad[1]<<4|quad[2]>>2, quad[2]<<6|quad[3])
				n = 0
			}
		}
		if err == io.EOF {
			out = flush(out)
		}
		if _, werr := w.Write(out); werr != nil {
			return werr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func b64val(c byte) int {
	switch {
	case c >= 'A' && c <= 'Z':
		return int(c - 'A')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 26
	case c >= '0' && c <= '9':
		return int(c-'0') + 52
	case c == '+':
		return 62
	case c == '/':
		return 63
	}
	return -1
}

// spaceToLF lets the base64 check accept what go-message accepts: space
// and tab inside base64 (a continuation indent).
type spaceToLF struct{ r io.Reader }

func (s *spaceToLF) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	for i := range p[:n] {
		if p[i] == ' ' || p[i] == '\t' {
			p[i] = '\n'
		}
	}
	return n, err
}

// uuState follows uuencoded blocks ("begin 644 name" ... "end") in text.
type uuState struct{ in bool }

// check reports whether l is a data line of a uuencoded block whose
// length does not match its length character.
func (u *uuState) check(l []byte) bool {
	if !u.in {
		u.in = isUUBegin(l)
		return false
	}
	t := bytes.TrimRight(l, " ")
	if bytes.Equal(t, []byte("end")) {
		u.in = false
		return false
	}
	if len(l) == 0 {
		return false
	}
	for _, c := range l {
		if c < 0x20 || c > 0x60 {
			u.in = false // not uuencode after all
			return false
		}
	}
	n := int(l[0]-0x20) & 63
	if n == 0 {
		return false
	}
	want := 1 + (n+2)/3*4
	return len(l) != want && len(l) != want+1 // one extra character is a checksum
}

// fix pads a short uuencoded line with '`' (zero bits) or trims a long
// one to the length its first character announces.
func (u *uuState) fix(l []byte) []byte {
	n := int(l[0]-0x20) & 63
	want := 1 + (n+2)/3*4
	out := make([]byte, want)
	copy(out, l)
	for i := len(l); i < want; i++ {
		out[i] = '`'
	}
	return out
}

func isUUBegin(l []byte) bool {
	rest, ok := bytes.CutPrefix(l, []byte("begin "))
	if !ok {
		return false
	}
	mode, name, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(mode) < 3 || len(mode) > 4 || len(bytes.TrimSpace(name)) == 0 {
		return false
	}
	for _, c := range mode {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}
