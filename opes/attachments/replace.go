package attachments

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/opes"
)

// maxReplaced bounds the parts one message may lose; a message with more
// blocked parts is refused.
const maxReplaced = 10

var errNotFound = errors.New("attachments: blocked part not found in the raw body")

// replace rewrites the body with each blocked part replaced by a
// text/plain notice; every other octet is kept. The new body is scanned
// again after each replacement, so a part that the raw-body search missed
// (or a second blocked part) is caught; what cannot be replaced is
// refused instead.
func (t *txState) replace(ctx context.Context, f *Finding) (opes.Verdict, error) {
	if t.tx.CurrentBody() == nil || len(f.path) == 0 {
		return t.verdict(actReject, f)
	}
	_, params, _ := mime.ParseMediaType(t.tx.Header.Get("Content-Type"))
	boundary := params["boundary"]
	cur := t.tx.CurrentBody()
	var spools []*opes.Body
	defer func() {
		for _, b := range spools {
			_ = b.Close()
		}
	}()
	var reasons []string
	for f != nil {
		if f.Structural() {
			return t.verdict(t.s.malformed, f)
		}
		if len(f.path) == 0 || len(reasons) >= maxReplaced {
			return t.verdict(actReject, f)
		}
		start, end, err := locate(cur.Reader(), boundary, f.path)
		if err != nil {
			return t.verdict(actReject, f)
		}
		nb := opes.NewBody(opes.BodyOptions{})
		spools = append(spools, nb)
		if err := splice(nb, cur.Reader(), start, end, notice(f)); err != nil {
			return opes.Verdict{}, fmt.Errorf("attachments: replace part: %w", err)
		}
		cur = nb
		reasons = append(reasons, f.String())
		if f, err = t.s.Scan(ctx, &opes.Transaction{Header: t.tx.Header, Body: cur}); err != nil {
			return opes.Verdict{}, err
		}
	}
	err := t.tx.ReplaceBody(func(w *opes.Body) error {
		_, err := io.Copy(w, cur.Reader())
		return err
	})
	if err != nil {
		return opes.Verdict{}, fmt.Errorf("attachments: replace body: %w", err)
	}
	reason := reasons[0]
	if len(reasons) > 1 {
		reason += fmt.Sprintf(" and %d more", len(reasons)-1)
	}
	return opes.Verdict{Kind: opes.Continue, Action: "part-replaced", Reason: "attachment " + reason}, nil
}

// notice is the part that takes a blocked part's place.
func notice(f *Finding) string {
	return "Content-Type: text/plain; charset=us-ascii\r\n" +
		"Content-Disposition: inline\r\n" +
		"Content-Transfer-Encoding: 7bit\r\n" +
		"\r\n" +
		"An attachment was removed by the mail filter: " + f.String() + ".\r\n"
}

// splice writes src[:start], repl and src[end:] to w.
func splice(w io.Writer, src io.ReadSeeker, start, end int64, repl string) error {
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.CopyN(w, src, start); err != nil {
		return err
	}
	if _, err := io.WriteString(w, repl); err != nil {
		return err
	}
	if _, err := src.Seek(end, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, src)
	return err
}

// locate finds, in the raw body, the part at path (indexes of multipart
// children, outermost first): start is the offset after its delimiter
// line, end that of the line break before the next delimiter.
func locate(r io.Reader, boundary string, path []int) (start, end int64, err error) {
	ls := &lineScanner{r: bufio.NewReaderSize(r, 4096)}
	b := boundary
	for level, idx := range path {
		if b == "" {
			return 0, 0, errNotFound
		}
		for n := -1; n < idx; {
			line, _, err := ls.next()
			if err != nil {
				return 0, 0, errNotFound
			}
			if open, closing := delimiter(line, b); closing {
				return 0, 0, errNotFound
			} else if open {
				n++
			}
		}
		start = ls.off
		if level == len(path)-1 {
			break
		}
		var hdr bytes.Buffer
		for {
			line, _, err := ls.next()
			if err != nil || line == nil || hdr.Len() > 64<<10 {
				return 0, 0, errNotFound
			}
			hdr.Write(line)
			if len(bytes.TrimRight(line, "\r\n")) == 0 {
				break
			}
		}
		h, err := textproto.ReadHeader(bufio.NewReader(&hdr))
		if err != nil {
			return 0, 0, errNotFound
		}
		_, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
		b = params["boundary"]
	}
	prevBreak := int64(0)
	for {
		line, lstart, err := ls.next()
		if err != nil {
			return 0, 0, errNotFound
		}
		if open, closing := delimiter(line, b); open || closing {
			end = max(lstart-prevBreak, start)
			return start, end, nil
		}
		switch {
		case bytes.HasSuffix(line, []byte("\r\n")):
			prevBreak = 2
		case bytes.HasSuffix(line, []byte("\n")):
			prevBreak = 1
		default:
			prevBreak = 0
		}
	}
}

// delimiter reports whether line is a delimiter or the closing delimiter
// of boundary b (RFC 2046 §5.1.1: trailing white space allowed).
func delimiter(line []byte, b string) (open, closing bool) {
	l := string(bytes.TrimRight(line, " \t\r\n"))
	if !strings.HasPrefix(l, "--"+b) {
		return false, false
	}
	switch l[len(b)+2:] {
	case "":
		return true, false
	case "--":
		return false, true
	}
	return false, false
}

// lineScanner reads lines with their offsets. A line longer than its
// buffer is returned as nil: it can be neither a delimiter nor a header.
type lineScanner struct {
	r   *bufio.Reader
	off int64
}

func (l *lineScanner) next() (line []byte, start int64, err error) {
	start = l.off
	long := false
	for {
		b, err := l.r.ReadSlice('\n')
		l.off += int64(len(b))
		if err == bufio.ErrBufferFull {
			long = true
			continue
		}
		if err != nil && (err != io.EOF || len(b) == 0 && !long) {
			return nil, start, err
		}
		if long {
			return nil, start, nil
		}
		return b, start, nil
	}
}
