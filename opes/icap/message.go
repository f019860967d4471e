package icap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// Defaults for the envelope header names.
const (
	DefaultMailFromHeader = "X-Mail-From"
	DefaultRcptToHeader   = "X-Rcpt-To"
	DefaultClientIPHeader = "X-Client-IP"
	DefaultHeloHeader     = "X-Helo"
)

// Bounds on the header of a returned message.
const (
	maxMessageHeader = 1 << 20
	maxMessageFields = 1000
	maxEnvelopeValue = 998
)

// reservedHTTP are encapsulated HTTP fields this package writes itself.
var reservedHTTP = []string{"Host", "Content-Type", "Content-Length", "Transfer-Encoding", "Connection"}

func parseEnvelopeNames(o envelopeOptions) (envelopeNames, error) {
	var n envelopeNames
	seen := map[string]string{}
	for _, e := range []struct {
		key  string
		v    *string
		def  string
		dest *string
	}{
		{"mail_from", o.MailFrom, DefaultMailFromHeader, &n.mailFrom},
		{"rcpt_to", o.RcptTo, DefaultRcptToHeader, &n.rcptTo},
		{"client_ip", o.ClientIP, DefaultClientIPHeader, &n.clientIP},
		{"helo", o.Helo, DefaultHeloHeader, &n.helo},
	} {
		name := e.def
		if e.v != nil {
			name = strings.TrimSpace(*e.v)
		}
		field := "envelope_headers." + e.key
		if name == "" {
			continue
		}
		if !isToken(name) || len(name) > 76 {
			return n, opes.FieldErrorf(field, "%q is not an HTTP field name", name)
		}
		for _, r := range reservedHTTP {
			if strings.EqualFold(name, r) {
				return n, opes.FieldErrorf(field, "%q is written by the adapter itself", name)
			}
		}
		if other, dup := seen[strings.ToLower(name)]; dup {
			return n, opes.FieldErrorf(field, "%q is already used by envelope_headers.%s", name, other)
		}
		seen[strings.ToLower(name)] = e.key
		*e.dest = name
	}
	return n, nil
}

// buildRequest makes the encapsulated HTTP header sections.
func (s *Service) buildRequest(tx *opes.Transaction, size int64, open func() io.Reader) *request {
	path := "/" + pathToken(tx.TraceID())
	host := "localhost"
	if tx.Conn != nil && isHostName(tx.Conn.MTAName) {
		host = tx.Conn.MTAName
	}
	var env strings.Builder
	add := func(name, value string) {
		if name != "" {
			env.WriteString(name + ": " + envelopeValue(value) + "\r\n")
		}
	}
	if tx.Sender != nil {
		add(s.envelope.mailFrom, "<"+tx.Sender.Addr+">")
	}
	for _, r := range tx.AcceptedRecipients() {
		add(s.envelope.rcptTo, "<"+r.Addr+">")
	}
	var extra header
	if tx.Conn != nil {
		if tx.Conn.Addr.IsValid() {
			ip := tx.Conn.Addr.Unmap().String()
			if s.envelope.clientIP != "" { // off means off: not in the ICAP header either
				add(s.envelope.clientIP, ip)
				extra = append(extra, field{name: "X-Client-IP", value: ip})
			}
		}
		if tx.Conn.Helo != "" {
			add(s.envelope.helo, tx.Conn.Helo)
		}
	}
	entity := "Content-Type: message/rfc822\r\nContent-Length: " + strconv.FormatInt(size, 10) + "\r\n"
	req := &request{method: s.method, extra: extra, open: open, limit: s.maxSize}
	if s.method == "REQMOD" {
		req.reqHdr = []byte("POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + env.String() + entity + "\r\n")
	} else {
		req.reqHdr = []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + env.String() + "\r\n")
		req.resHdr = []byte("HTTP/1.1 200 OK\r\n" + entity + "\r\n")
	}
	return req
}

// pathToken keeps a trace id usable as a URL path segment.
func pathToken(id string) string {
	var b strings.Builder
	for i := 0; i < len(id) && b.Len() < 64; i++ {
		c := id[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			b.WriteByte(c)
		}
	}
	if b.Len() == 0 {
		return "message"
	}
	return b.String()
}

func isHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// envelopeValue makes an untrusted envelope value safe as an HTTP field
// value: control characters (CR and LF would start a new field) become
// "?", UTF-8 (SMTPUTF8 addresses) is kept, the length is bounded.
func envelopeValue(v string) string {
	b := []byte(v)
	if len(b) > maxEnvelopeValue {
		b = b[:maxEnvelopeValue]
	}
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = '?'
		}
	}
	return strings.TrimSpace(string(b))
}

// copyCompare copies the returned message into dst and reports whether
// it is byte for byte the original.
func copyCompare(dst io.Writer, got, orig io.Reader) (bool, error) {
	same := true
	buf := make([]byte, copyBuffer)
	obuf := make([]byte, copyBuffer)
	for {
		n, err := got.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false, werr
			}
			if same {
				m, _ := io.ReadFull(orig, obuf[:n])
				same = m == n && bytes.Equal(buf[:n], obuf[:n])
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, err
		}
	}
	if same { // the original must end here too
		var one [1]byte
		n, _ := io.ReadFull(orig, one[:])
		same = n == 0
	}
	return same, nil
}

// returnedField is a field of the returned message, value raw (folding
// kept as CRLF).
type returnedField struct {
	name, value string
}

// readMessageHeader reads the header of a returned message; the reader
// is left at the first body octet. A message without an empty line is
// all header.
func readMessageHeader(r *bufio.Reader) ([]returnedField, error) {
	var out []returnedField
	total := 0
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("header line longer than %d octets", r.Size())
		}
		total += len(line)
		if total > maxMessageHeader {
			return nil, fmt.Errorf("header longer than %d octets", maxMessageHeader)
		}
		text := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
		if text == "" {
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return out, nil
		}
		if text[0] == ' ' || text[0] == '\t' {
			if len(out) == 0 {
				return nil, errors.New("header starts with a continuation line")
			}
			out[len(out)-1].value += "\r\n" + text
		} else {
			name, value, ok := strings.Cut(text, ":")
			if !ok {
				return nil, fmt.Errorf("header line %q has no colon", clip(text))
			}
			if len(out) >= maxMessageFields {
				return nil, fmt.Errorf("more than %d header fields", maxMessageFields)
			}
			out = append(out, returnedField{name: strings.TrimRight(name, " \t"), value: value})
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
	}
}

// isTrace reports the OPES trace fields, which the adapter never touches.
func isTrace(name string) bool {
	return len(name) >= 5 && strings.EqualFold(name[:5], "OPES-")
}

// normValue compares values regardless of folding and outer white space.
func normValue(v string) string {
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// headerOp is one change to the mail's header.
type headerOp struct {
	kind        byte // 's' set, 'n' set the index-th, 'a' add, 'd' delete
	name, value string
	index       int // for 'n', 1-based
}

// diffHeader expresses the returned header against the one sent as
// operations on opes.Header, name by name (see the package comment).
func diffHeader(sent []opes.HeaderField, got []returnedField) []headerOp {
	type values struct {
		name string
		old  []string
		new  []string // raw
	}
	var order []string
	byName := map[string]*values{}
	entry := func(name string) *values {
		k := strings.ToLower(name)
		v := byName[k]
		if v == nil {
			v = &values{name: name}
			byName[k] = v
			order = append(order, k)
		}
		return v
	}
	for _, f := range sent {
		if !isTrace(f.Name) {
			e := entry(f.Name)
			e.old = append(e.old, normValue(f.Value))
		}
	}
	for _, f := range got {
		if !isTrace(f.name) {
			e := entry(f.name)
			e.new = append(e.new, f.value)
			if len(e.old) == 0 {
				e.name = f.name
			}
		}
	}
	var ops []headerOp
	for _, k := range order {
		e := byName[k]
		norm := make([]string, len(e.new))
		for i, v := range e.new {
			norm[i] = normValue(v)
		}
		prefix, suffix := len(norm) >= len(e.old), len(norm) >= len(e.old)
		for i := 0; prefix && i < len(e.old); i++ {
			prefix = norm[i] == e.old[i]
		}
		extra := len(norm) - len(e.old)
		for i := 0; suffix && i < len(e.old); i++ {
			suffix = norm[extra+i] == e.old[i]
		}
		switch {
		case prefix && extra == 0:
			// unchanged
		case prefix:
			for _, v := range e.new[len(e.old):] {
				ops = append(ops, headerOp{kind: 'a', name: e.name, value: v})
			}
		case suffix:
			// Prepended (a trace field such as Received): opes.Header
			// can only append, which keeps the existing fields in place.
			for _, v := range e.new[:extra] {
				ops = append(ops, headerOp{kind: 'a', name: e.name, value: v})
			}
		case len(e.new) == 0:
			ops = append(ops, headerOp{kind: 'd', name: e.name})
		case len(e.old) == 1 && len(e.new) == 1:
			ops = append(ops, headerOp{kind: 's', name: e.name, value: e.new[0]})
		case len(e.old) == len(e.new):
			// Same count: change the occurrences that differ, in place.
			for i := range e.new {
				if norm[i] != e.old[i] {
					ops = append(ops, headerOp{kind: 'n', name: e.name, value: e.new[i], index: i + 1})
				}
			}
		default:
			ops = append(ops, headerOp{kind: 'd', name: e.name})
			for _, v := range e.new {
				ops = append(ops, headerOp{kind: 'a', name: e.name, value: v})
			}
		}
	}
	return ops
}

// applyMessage applies the returned message to the transaction: header
// differences through tx.Header, a different body through ReplaceBody.
// Nothing is changed unless every header change is valid.
func applyMessage(tx *opes.Transaction, sent []opes.HeaderField, msg *opes.Body) (bool, error) {
	rd := msg.Reader()
	br := bufio.NewReaderSize(rd, 64<<10)
	fields, err := readMessageHeader(br)
	if err != nil {
		return false, fmt.Errorf("returned message header: %w", err)
	}
	bodyStart, err := rd.Seek(0, io.SeekCurrent)
	if err != nil {
		return false, err
	}
	bodyStart -= int64(br.Buffered())
	ops := diffHeader(sent, fields)
	scratch := opes.NewHeader() // validate first: all or nothing
	for _, op := range ops {
		if op.kind != 'd' {
			if err := scratch.Add(op.name, op.value); err != nil {
				return false, fmt.Errorf("returned message header: %w", err)
			}
		}
	}

	var orig io.Reader = strings.NewReader("")
	if cur := tx.CurrentBody(); cur != nil {
		orig = cur.Reader()
	}
	openBody := func() (io.Reader, error) {
		r := msg.Reader()
		_, err := r.Seek(bodyStart, io.SeekStart)
		return r, err
	}
	newBody, err := openBody()
	if err != nil {
		return false, err
	}
	same, err := copyCompare(io.Discard, newBody, orig)
	if err != nil {
		return false, err
	}
	if !same {
		if newBody, err = openBody(); err != nil {
			return false, err
		}
		err := tx.ReplaceBody(func(w *opes.Body) error {
			_, err := io.CopyBuffer(&crlfWriter{w: w}, onlyReader{newBody}, make([]byte, copyBuffer))
			return err
		})
		if err != nil {
			return false, err
		}
	}
	for _, op := range ops {
		switch op.kind {
		case 'd':
			tx.Header.Del(op.name)
		case 's':
			err = tx.Header.Set(op.name, op.value)
		case 'n':
			_, err = tx.Header.SetAt(op.name, op.index, op.value)
		case 'a':
			err = tx.Header.Add(op.name, op.value)
		}
		if err != nil { // validated above; only ErrNotAtEOM-like misuse gets here
			return false, err
		}
	}
	return !same || len(ops) > 0, nil
}

// crlfWriter turns bare LF line ends into CRLF, the form the MTA expects
// in a replaced body; a CR at the end of one write is remembered.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
	buf    []byte
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	c.buf = c.buf[:0]
	for _, b := range p {
		if b == '\n' && !c.lastCR {
			c.buf = append(c.buf, '\r')
		}
		c.buf = append(c.buf, b)
		c.lastCR = b == '\r'
	}
	if _, err := c.w.Write(c.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}
