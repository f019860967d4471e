package notify

import (
	"bufio"
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

// warning is the text put in front of the message, lines without ends.
func (t *txState) warning(why string) []string {
	text := t.s.warnText
	if text == "" {
		text = "WARNING: " + opes.SanitizeText(why, maxReason) + "\n" +
			"This warning was added by the OPES system " + opes.SanitizeText(firstNonEmpty(t.systemURI(), "of your mail provider"), 300) +
			" (trace id " + opes.SanitizeText(t.tx.TraceID(), 64) + ")."
	}
	return strings.Split(text, "\n")
}

// currentBody is the body as the services before us left it.
func currentBody(tx *opes.Transaction) io.ReadSeeker {
	return tx.CurrentBody().Reader()
}

// warnBody puts the warning in front of the message. A plain text
// message (no Content-Type, or text/plain in an ASCII-compatible charset)
// gets it prepended to its text in the message's own transfer encoding,
// so it stays a plain text message; anything else — HTML, multipart,
// signed, or a body we cannot re-encode — is wrapped: the message becomes
// multipart/mixed with the warning as the first part and the original,
// byte for byte with its Content-* fields, as the second.
//
// A signed or encrypted message is left alone (PROFILE §6): wrapping
// would change its Content-Type, which the processor does not undo.
func (t *txState) warnBody(why string) (bool, error) {
	if t.tx.Body == nil {
		return false, errors.New("notify: warn_body: the body was not received")
	}
	if signed(t.tx.Header.Get("Content-Type")) {
		return false, nil
	}
	lines := t.warning(why)
	if t.s.warnMode == WarnPrepend {
		done, err := t.prepend(lines)
		if err != nil || done {
			return done, err
		}
	}
	return true, t.wrap(lines)
}

// signed reports whether a top-level Content-Type is that of a signed or
// encrypted message (S/MIME, PGP/MIME), as the processor judges it.
func signed(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	switch mt {
	case "multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime",
		"application/pgp-encrypted", "application/pkcs7-signature", "application/x-pkcs7-signature":
		return true
	}
	return false
}

// asciiCompatible charsets can take ASCII text in front of them; the
// ones that cannot are the UTF-16/32 and EBCDIC families.
func asciiCompatible(charset string) bool {
	c := strings.ToLower(charset)
	return !strings.HasPrefix(c, "utf-16") && !strings.HasPrefix(c, "utf-32") &&
		!strings.HasPrefix(c, "ucs-") && !strings.HasPrefix(c, "ibm") && !strings.HasPrefix(c, "ebcdic") &&
		!strings.HasPrefix(c, "cp037") && !strings.HasPrefix(c, "cp500")
}

// prepend puts the warning into a plain text message; false means the
// message is not one we can change in place.
func (t *txState) prepend(lines []string) (bool, error) {
	h := t.tx.Header
	if ct := h.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || mt != "text/plain" || !asciiCompatible(params["charset"]) {
			return false, nil
		}
	}
	warning := strings.Join(lines, "\r\n") + "\r\n\r\n"
	cte := strings.ToLower(h.Get("Content-Transfer-Encoding"))
	if i := strings.IndexAny(cte, " \t;("); i >= 0 {
		cte = cte[:i]
	}
	switch cte {
	case "", "7bit", "8bit", "binary":
		return true, t.replace(func(w io.Writer) error {
			if _, err := io.WriteString(w, warning); err != nil {
				return err
			}
			_, err := io.Copy(w, currentBody(t.tx))
			return err
		})
	case "quoted-printable":
		// Whole encoded lines go in front; the original encoded text
		// follows untouched.
		var enc bytes.Buffer
		qp := quotedprintable.NewWriter(&enc)
		if _, err := qp.Write([]byte(warning)); err != nil {
			return false, fmt.Errorf("notify: warn_body: %w", err)
		}
		if err := qp.Close(); err != nil {
			return false, fmt.Errorf("notify: warn_body: %w", err)
		}
		return true, t.replace(func(w io.Writer) error {
			if _, err := w.Write(enc.Bytes()); err != nil {
				return err
			}
			_, err := io.Copy(w, currentBody(t.tx))
			return err
		})
	case "base64":
		// Base64 does not concatenate: decode, check, encode again. A
		// body that is not valid base64 is left as it is, inside a
		// wrapper.
		if !validBase64(currentBody(t.tx)) {
			return false, nil
		}
		return true, t.replace(func(w io.Writer) error {
			lw := &lineWriter{w: w, width: 76}
			enc := base64.NewEncoder(base64.StdEncoding, lw)
			if _, err := io.WriteString(enc, warning); err != nil {
				return err
			}
			if _, err := io.Copy(enc, base64.NewDecoder(base64.StdEncoding, currentBody(t.tx))); err != nil {
				return err
			}
			if err := enc.Close(); err != nil {
				return err
			}
			return lw.end()
		})
	}
	return false, nil
}

// validBase64 reads the whole body through a decoder.
func validBase64(r io.Reader) bool {
	_, err := io.Copy(io.Discard, base64.NewDecoder(base64.StdEncoding, r))
	return err == nil
}

// lineWriter breaks its output into CRLF-terminated lines of width
// octets, as RFC 2045 §6.8 wants base64.
type lineWriter struct {
	w     io.Writer
	width int
	col   int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(l.width-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
		l.col += k
		if l.col == l.width {
			if _, err := io.WriteString(l.w, "\r\n"); err != nil {
				return n, err
			}
			l.col = 0
		}
	}
	return n, nil
}

func (l *lineWriter) end() error {
	if l.col == 0 {
		return nil
	}
	_, err := io.WriteString(l.w, "\r\n")
	return err
}

func (t *txState) replace(fill func(w io.Writer) error) error {
	err := t.tx.ReplaceBody(func(b *opes.Body) error {
		bw := bufio.NewWriterSize(b, 32<<10)
		if err := fill(bw); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("notify: warn_body: %w", err)
	}
	return nil
}

// contentFields are the fields that describe the top-level entity; they
// move with it into the second part of the wrapper (RFC 2045 §9, RFC 2183,
// RFC 3282, RFC 2557, RFC 1864).
func isContentField(name string) bool {
	return len(name) > 8 && strings.EqualFold(name[:8], "Content-")
}

// wrap makes the message multipart/mixed: the warning, then the original.
func (t *txState) wrap(lines []string) error {
	h := t.tx.Header
	var inner strings.Builder
	names := map[string]bool{}
	cte := ""
	for _, f := range h.Fields() {
		if !isContentField(f.Name) {
			continue
		}
		names[strings.ToLower(f.Name)] = true
		inner.WriteString(f.Name + ":" + crlf(f.Value) + "\r\n")
		if strings.EqualFold(f.Name, "Content-Transfer-Encoding") {
			cte = strings.ToLower(unfold(f.Value))
		}
	}
	boundary, err := t.boundary()
	if err != nil {
		return err
	}
	err = t.replace(func(w io.Writer) error {
		var head strings.Builder
		head.WriteString("This is a MIME message: a warning, then the original message.\r\n")
		head.WriteString("--" + boundary + "\r\n")
		head.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
		head.WriteString("Content-Transfer-Encoding: 7bit\r\n")
		head.WriteString("Content-Disposition: inline\r\n")
		head.WriteString("Content-Description: OPES warning\r\n\r\n")
		head.WriteString(strings.Join(lines, "\r\n") + "\r\n")
		head.WriteString("--" + boundary + "\r\n")
		head.WriteString(inner.String())
		head.WriteString("\r\n")
		if _, err := io.WriteString(w, head.String()); err != nil {
			return err
		}
		if _, err := io.Copy(w, currentBody(t.tx)); err != nil {
			return err
		}
		_, err := io.WriteString(w, "\r\n--"+boundary+"--\r\n")
		return err
	})
	if err != nil {
		return err
	}
	for n := range names {
		h.Del(n)
	}
	if h.Get("MIME-Version") == "" {
		if err := h.Add("MIME-Version", "1.0"); err != nil {
			return fmt.Errorf("notify: warn_body: %w", err)
		}
	}
	if err := h.Add("Content-Type", `multipart/mixed; boundary="`+boundary+`"`); err != nil {
		return fmt.Errorf("notify: warn_body: %w", err)
	}
	// A multipart entity's encoding is 7bit, 8bit or binary and must
	// cover its parts (RFC 2045 §6.4).
	if cte == "8bit" || cte == "binary" {
		if err := h.Add("Content-Transfer-Encoding", cte); err != nil {
			return fmt.Errorf("notify: warn_body: %w", err)
		}
	}
	return nil
}

// crlf gives a received field value CRLF line ends for the body.
func crlf(v string) string {
	return strings.ReplaceAll(strings.ReplaceAll(v, "\r\n", "\n"), "\n", "\r\n")
}

// boundary picks a boundary that does not occur in the body. "=_" cannot
// occur in base64 or quoted-printable text; the random part makes a
// collision with anything else unlikely, and the scan makes it impossible.
func (t *txState) boundary() (string, error) {
	for range 3 {
		var rnd [12]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return "", fmt.Errorf("notify: boundary: %w", err)
		}
		b := "=_opes_" + hex.EncodeToString(rnd[:])
		found, err := contains(currentBody(t.tx), []byte("--"+b))
		if err != nil {
			return "", fmt.Errorf("notify: read body: %w", err)
		}
		if !found {
			return b, nil
		}
	}
	return "", errors.New("notify: no MIME boundary is free in the body")
}

// contains searches r for needle in bounded memory.
func contains(r io.Reader, needle []byte) (bool, error) {
	buf := make([]byte, 64<<10)
	keep := 0
	for {
		n, err := r.Read(buf[keep:])
		data := buf[:keep+n]
		if bytes.Contains(data, needle) {
			return true, nil
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		keep = min(len(needle)-1, len(data))
		copy(buf, data[len(data)-keep:])
	}
}
