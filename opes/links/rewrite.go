package links

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"html"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/opes"
)

// plan says where the links go.
type plan struct {
	links   []*node        // moved parts, in document order
	exp     time.Time      // when the links expire
	targets map[*node]bool // body text parts that get the links appended
	// Without a body text part: insert a text part with the links as the
	// first part of this multipart/mixed ...
	insertInto *node
	// ... or make the message multipart/mixed around a link part and the
	// old content (wrap), or replace the whole message by the link part
	// (when the message was nothing but the attachment).
	wrap        bool
	boundary    string
	replaceRoot bool
	// top holds the original top-level fields that wrap moves inside.
	top textproto.Header
}

// planLinks picks the text a mail client shows first: the first body
// text part in document order and, when it is one alternative of a
// multipart/alternative, the first plain and the first HTML part of that
// alternative, so the reader sees the links whichever one is shown.
func (m *message) planLinks(top textproto.Header, exp time.Time) *plan {
	p := &plan{links: m.moved(), exp: exp, targets: map[*node]bool{}, top: top}
	first := findFirst(m.root, func(n *node) bool { return n.isBodyText() && n.eligible })
	if first != nil {
		scope := first
		for a := first.parent; a != nil; a = a.parent {
			if a.mediaType == "multipart/alternative" {
				scope = a
				break
			}
		}
		for _, mt := range []string{"text/plain", "text/html"} {
			if n := findFirst(scope, func(n *node) bool { return n.mediaType == mt && n.isBodyText() && n.eligible }); n != nil {
				p.targets[n] = true
			}
		}
		p.targets[first] = true
		return p
	}
	switch {
	case m.root.stored != nil:
		p.replaceRoot = true
	case m.root.mediaType == "multipart/mixed":
		p.insertInto = m.root
	default:
		p.wrap = true
		var b [16]byte
		_, _ = rand.Read(b[:])
		p.boundary = "opes-links-" + hex.EncodeToString(b[:])
	}
	return p
}

func findFirst(n *node, ok func(*node) bool) *node {
	if ok(n) {
		return n
	}
	for _, c := range n.children {
		if f := findFirst(c, ok); f != nil {
			return f
		}
	}
	return nil
}

// updateHeader makes the top-level fields match a changed structure.
func (p *plan) updateHeader(h *opes.Header) error {
	var set [][2]string
	var del []string
	switch {
	case p.replaceRoot:
		set = [][2]string{{"Content-Type", "text/plain; charset=utf-8"}, {"Content-Transfer-Encoding", "quoted-printable"}}
		del = []string{"Content-Disposition", "Content-Description"}
	case p.wrap:
		set = [][2]string{{"Content-Type", mime.FormatMediaType("multipart/mixed", map[string]string{"boundary": p.boundary})}}
		del = []string{"Content-Transfer-Encoding"}
	default:
		return nil
	}
	if h.Get("MIME-Version") == "" {
		set = append(set, [2]string{"MIME-Version", "1.0"})
	}
	for _, f := range set {
		if err := h.Set(f[0], f[1]); err != nil {
			return err
		}
	}
	for _, name := range del {
		h.Del(name)
	}
	return nil
}

// writeMessage is the third read: it writes the new body to w, leaving
// out the moved parts and adding the links. Parts it does not change are
// copied octet for octet, their header fields included; preambles and
// epilogues of multiparts are not kept.
func writeMessage(ctx context.Context, w io.Writer, body io.Reader, m *message, p *plan) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	g := &guardReader{r: body, ctx: ctx}
	wr := &rewriter{w: bw, p: p}
	var err error
	switch {
	case p.replaceRoot:
		err = wr.linkBody()
	case p.wrap:
		fmt.Fprintf(bw, "This is a multi-part message in MIME format.\r\n--%s\r\n", p.boundary)
		if err = wr.linkPart(); err == nil {
			fmt.Fprintf(bw, "\r\n--%s\r\n", p.boundary)
			var inner textproto.Header
			for _, name := range []string{"Content-Transfer-Encoding", "Content-Type"} {
				if v := p.top.Get(name); v != "" {
					inner.Add(name, v)
				}
			}
			if err = textproto.WriteHeader(bw, inner); err == nil {
				if err = wr.entity(m.root, g); err == nil {
					_, err = fmt.Fprintf(bw, "\r\n--%s--\r\n", p.boundary)
				}
			}
		}
	default:
		err = wr.entity(m.root, g)
	}
	if ferr := bw.Flush(); ferr != nil {
		return fmt.Errorf("write body: %w", ferr)
	}
	return g.classify(err)
}

type rewriter struct {
	w *bufio.Writer
	p *plan
}

// entity writes the body of n (its header is already written).
func (wr *rewriter) entity(n *node, body io.Reader) error {
	if !n.multipart {
		if wr.p.targets[n] {
			return wr.appendLinks(n, body)
		}
		_, err := io.Copy(wr.w, body)
		return err
	}
	b := n.params["boundary"]
	written := 0
	delim := func() {
		if written == 0 {
			fmt.Fprintf(wr.w, "--%s\r\n", b)
		} else {
			fmt.Fprintf(wr.w, "\r\n--%s\r\n", b)
		}
		written++
	}
	if wr.p.insertInto == n {
		delim()
		if err := wr.linkPart(); err != nil {
			return err
		}
	}
	err := eachChild(n, body, func(_ int, c *node, h textproto.Header, body io.Reader) error {
		if c.stored != nil {
			return nil
		}
		delim()
		if wr.p.targets[c] {
			h = h.Copy()
			wr.retarget(c, &h)
		}
		if err := textproto.WriteHeader(wr.w, h); err != nil {
			return err
		}
		return wr.entity(c, body)
	})
	if err != nil {
		return err
	}
	if written == 0 {
		// Every part moved: a multipart needs one (RFC 2046 §5.1.1).
		delim()
		wr.w.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n" +
			"The attachments here were moved to download links.\r\n")
	}
	_, err = fmt.Fprintf(wr.w, "\r\n--%s--\r\n", b)
	return err
}

// outCTE is the transfer encoding a body text part is written with:
// its own, unless the added text is not ASCII and the part is 7bit.
func (wr *rewriter) outCTE(n *node) string {
	if n.cte == "" || n.cte == "7bit" {
		if !isASCII(wr.linkText(n)) {
			return "quoted-printable"
		}
	}
	return n.cte
}

// retarget adjusts the header of a body text part that gets links.
func (wr *rewriter) retarget(n *node, h *textproto.Header) {
	if cte := wr.outCTE(n); cte != n.cte {
		h.Set("Content-Transfer-Encoding", cte)
	}
	cs := strings.ToLower(n.params["charset"])
	if !isASCII(wr.linkText(n)) && cs != "utf-8" && cs != "utf8" {
		params := map[string]string{}
		for k, v := range n.params {
			params[k] = v
		}
		params["charset"] = "utf-8"
		if v := mime.FormatMediaType(n.mediaType, params); v != "" {
			h.Set("Content-Type", v)
		}
	}
}

// appendLinks decodes a body text part, adds the links (HTML: before
// </body>) and encodes it again as retarget declared.
func (wr *rewriter) appendLinks(n *node, body io.Reader) error {
	cte := wr.outCTE(n)
	enc, err := encoder(cte, wr.w)
	if err != nil {
		return err
	}
	dec := decode(n.cte, body)
	if _, err := io.CopyN(enc, dec, n.insertAt); err != nil {
		return fmt.Errorf("decode text part: %w", err)
	}
	text := wr.linkText(n)
	if n.mediaType == "text/plain" && !n.endsNL && n.decoded > 0 {
		text = wr.nl(n) + text
	}
	if _, err := io.WriteString(enc, text); err != nil {
		return err
	}
	if _, err := io.Copy(enc, dec); err != nil {
		return fmt.Errorf("decode text part: %w", err)
	}
	return enc.Close()
}

func (wr *rewriter) nl(n *node) string {
	if n.lf {
		return "\n"
	}
	return "\r\n"
}

// linkText is what is added to a body text part: ASCII for HTML and for
// charsets other than UTF-8 (non-ASCII letters of names become
// references or "_"), so the part's own charset stays right.
func (wr *rewriter) linkText(n *node) string {
	if n.mediaType == "text/html" {
		return htmlLinks(wr.p)
	}
	cs := strings.ToLower(n.params["charset"])
	utf8ok := cs == "" || cs == "utf-8" || cs == "utf8" || cs == "us-ascii" || cs == "ascii"
	return plainLinks(wr.p, wr.nl(n), utf8ok, true)
}

// linkPart writes a whole text/plain part with the links.
func (wr *rewriter) linkPart() error {
	wr.w.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	return wr.linkBody()
}

func (wr *rewriter) linkBody() error {
	enc := quotedprintable.NewWriter(wr.w)
	if _, err := io.WriteString(enc, plainLinks(wr.p, "\r\n", true, false)); err != nil {
		return err
	}
	return enc.Close()
}

// plainLinks is the text with the links; after is set when it follows
// the sender's text, which a rule sets apart.
func plainLinks(p *plan, nl string, utf8ok, after bool) string {
	var b strings.Builder
	if after {
		b.WriteString(nl + strings.Repeat("-", 40) + nl)
	}
	fmt.Fprintf(&b, "Attachments moved to download links (valid until %s):%s", p.exp.UTC().Format("2006-01-02 15:04 MST"), nl)
	for _, n := range p.links {
		name := n.filename
		if !utf8ok {
			name = asciiOnly(name)
		}
		fmt.Fprintf(&b, "* %s (%s)%s  %s%s", name, humanSize(n.stored.Size), nl, n.link, nl)
	}
	return b.String()
}

func htmlLinks(p *plan) string {
	var b strings.Builder
	b.WriteString("\r\n<div class=\"opes-links\" style=\"margin-top:1em;border-top:1px solid #ccc;padding-top:0.5em\">\r\n")
	fmt.Fprintf(&b, "<p>Attachments moved to download links (valid until %s):</p>\r\n<ul>\r\n", p.exp.UTC().Format("2006-01-02 15:04 MST"))
	for _, n := range p.links {
		fmt.Fprintf(&b, "<li><a href=\"%s\">%s</a> (%s)</li>\r\n", html.EscapeString(n.link), htmlText(n.filename), humanSize(n.stored.Size))
	}
	b.WriteString("</ul>\r\n</div>\r\n")
	return b.String()
}

// htmlText escapes v and writes non-ASCII as character references, so
// the result is ASCII and means the same in any ASCII-compatible charset.
func htmlText(v string) string {
	var b strings.Builder
	for _, r := range html.EscapeString(v) {
		if r < 0x80 {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "&#%d;", r)
		}
	}
	return b.String()
}

func asciiOnly(v string) string {
	return strings.Map(func(r rune) rune {
		if r >= 0x80 {
			return '_'
		}
		return r
	}, v)
}

func isASCII(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] >= 0x80 {
			return false
		}
	}
	return true
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d octets", n)
}

// encoder writes content in transfer encoding cte to w.
func encoder(cte string, w io.Writer) (io.WriteCloser, error) {
	switch cte {
	case "quoted-printable":
		return quotedprintable.NewWriter(w), nil
	case "base64":
		return base64.NewEncoder(base64.StdEncoding, &lineWrapper{w: w}), nil
	case "", "7bit", "8bit", "binary":
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown transfer encoding %q", cte)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// lineWrapper breaks base64 output into 76-character lines. The base64
// encoder writes no line breaks of its own.
type lineWrapper struct {
	w   io.Writer
	col int
}

func (l *lineWrapper) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if l.col == 76 {
			if _, err := io.WriteString(l.w, "\r\n"); err != nil {
				return n, err
			}
			l.col = 0
		}
		k := min(76-l.col, len(p))
		m, err := l.w.Write(p[:k])
		n += m
		l.col += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}
