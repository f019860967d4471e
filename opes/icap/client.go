package icap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Connection handling. ICAP connections are persistent (RFC 3507 §4.3.3
// uses HTTP/1.1 semantics): a connection that ended a transaction cleanly
// goes back to a small idle pool, so a busy MTA does not pay a TCP
// handshake per message. A pooled connection the server has closed in
// the meantime fails before any answer byte; that request is retried once
// on a fresh connection.
const (
	maxIdlePerServer = 8
	// idleLimit stays below c-icap's shortest sensible KeepAliveTimeout,
	// so a pooled connection is rarely one the server already dropped.
	idleLimit = 30 * time.Second
	// downFor is how long a failed server is tried only after the others.
	downFor = 10 * time.Second
	// maxOptionsTTL bounds how long OPTIONS answers are trusted; RFC 3507
	// lets an answer without Options-TTL live forever, but a server can be
	// reconfigured under the same address.
	maxOptionsTTL = time.Hour
	// maxPreview bounds the preview buffer whatever a server announces.
	maxPreview = 1 << 20
	// drainLimit is what is read from an answer body nobody needs (a
	// block page) to keep the connection; beyond it the connection is
	// closed instead.
	drainLimit = 256 << 10
	copyBuffer = 64 << 10
	// writerGrace is how long the request writer may still need once
	// the answer is complete: a server that read everything before
	// answering lets it finish at once; one that answered early and
	// stopped reading would block it for good.
	writerGrace = 200 * time.Millisecond
)

// server is one configured ICAP service address.
type server struct {
	raw  string // as configured, for errors
	addr string // host:port to dial
	uri  string // ICAP request URI
	host string // Host header value

	mu        sync.Mutex
	idle      []*conn
	opts      *serverOptions
	optsUntil time.Time
	downUntil time.Time
}

// parseServer checks an "icap://host[:port]/service[?args]" URI.
func parseServer(raw string) (*server, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("%q is not a URI: %v", raw, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "icap":
	case "icaps":
		return nil, fmt.Errorf("%q: icaps (TLS) is not supported; use icap:// on a trusted network or a local TLS tunnel", raw)
	default:
		return nil, fmt.Errorf(`%q: want "icap://host:port/service"`, raw)
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf(`%q: want "icap://host:port/service" without user or fragment`, raw)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("%q: no host", raw)
	}
	port := u.Port()
	if port == "" {
		port = "1344" // RFC 3507 §4.2
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%q: bad port %q", raw, port)
	}
	if u.Path == "" || u.Path == "/" {
		return nil, fmt.Errorf("%q: no service path (e.g. icap://%s/echo)", raw, u.Host)
	}
	hostport := net.JoinHostPort(host, port)
	uri := "icap://" + hostport + u.EscapedPath()
	if u.RawQuery != "" {
		uri += "?" + u.RawQuery
	}
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c <= ' ' || c >= 0x7f {
			return nil, fmt.Errorf("%q: byte 0x%02x not allowed in the URI", raw, c)
		}
	}
	return &server{raw: raw, addr: hostport, uri: uri, host: hostport}, nil
}

// serverOptions is what an OPTIONS answer says about a service.
type serverOptions struct {
	methods     []string
	preview     int // -1: the server announced no preview
	ignoreAll   bool
	completeAll bool
}

// conn is one ICAP connection.
type conn struct {
	net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// client talks to the configured servers in order, failing over.
type client struct {
	servers        []*server
	connectTimeout time.Duration
	previewCap     int // configured preview: -1 none set, 0 off
	now            func() time.Time
}

// response is an ICAP answer whose encapsulated body, if any, is still
// on the connection.
type response struct {
	code   int
	reason string
	header header
	reqHdr *httpHead // encapsulated HTTP request header, if any
	resHdr *httpHead // encapsulated HTTP response header, if any
	body   *chunkedReader
}

// httpHead is an encapsulated HTTP header section.
type httpHead struct {
	start  string // request or status line
	header header
}

// request is one REQMOD or RESPMOD exchange.
type request struct {
	method string
	reqHdr []byte // encapsulated HTTP request header block, empty line included
	resHdr []byte // RESPMOD only
	extra  header // additional ICAP header fields
	// open returns the message from its start; a retry opens it again.
	open func() io.Reader
	// limit bounds the encapsulated body read back.
	limit int64
}

// handler consumes an answer; what it leaves of the body is drained.
type handler func(*response) error

// errSkip is returned by do when the server asked not to be sent the
// message at all (Transfer-Ignore: *).
var errSkip = errors.New("the ICAP server ignores all transfers (Transfer-Ignore: *)")

// do sends req to the first server that works and hands its answer to h.
// Servers marked down are tried after the others. Deadline and
// cancellation end the whole call at once, with an error that wraps
// context.DeadlineExceeded or context.Canceled.
func (c *client) do(ctx context.Context, req *request, h handler) error {
	now := c.now()
	order := make([]*server, 0, len(c.servers))
	var down []*server
	for _, s := range c.servers {
		s.mu.Lock()
		isDown := now.Before(s.downUntil)
		s.mu.Unlock()
		if isDown {
			down = append(down, s)
		} else {
			order = append(order, s)
		}
	}
	order = append(order, down...)
	var errs []error
	for _, s := range order {
		err := c.doServer(ctx, s, req, h)
		if err == nil || errors.Is(err, errSkip) {
			if err == nil {
				s.mu.Lock()
				s.downUntil = time.Time{}
				s.mu.Unlock()
			}
			return err
		}
		err = deadlineError(ctx, err)
		if !errors.Is(err, context.Canceled) { // the caller gave up, not the server
			s.mu.Lock()
			s.downUntil = c.now().Add(downFor)
			s.opts = nil // the server may come back reconfigured
			s.mu.Unlock()
		}
		errs = append(errs, fmt.Errorf("icap: %s: %w", s.raw, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return allFailed(errs)
}

// allFailed is the error of a request every server failed: one line for
// the log, every cause still reachable through errors.Is and errors.As.
type allFailed []error

func (e allFailed) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return fmt.Sprintf("all %d ICAP servers failed: %s", len(e), strings.Join(parts, "; "))
}

func (e allFailed) Unwrap() []error { return e }

// deadlineError makes every time-out wrap context.DeadlineExceeded: a
// connection deadline fires at the context deadline, sometimes a moment
// before the context itself reports it.
func deadlineError(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}

// doServer runs one request against one server, OPTIONS first when the
// cached answer has expired.
func (c *client) doServer(ctx context.Context, s *server, req *request, h handler) error {
	opts, err := c.options(ctx, s)
	if err != nil {
		return err
	}
	if !hasMethod(opts.methods, req.method) {
		return fmt.Errorf("the service does not offer %s (Methods: %s)", req.method, strings.Join(opts.methods, ", "))
	}
	if opts.ignoreAll {
		return errSkip
	}
	preview := -1
	if !opts.completeAll {
		preview = previewFor(opts.preview, c.previewCap)
	}
	return c.withConn(ctx, s, func(cn *conn) (bool, bool, error) {
		return exchange(ctx, cn, s, req, preview, h)
	})
}

// previewFor combines the server's preview with the configured cap (-1:
// no cap; 0: no preview).
func previewFor(server, configured int) int {
	if server < 0 || configured == 0 {
		return -1
	}
	if configured > 0 {
		return min(server, configured)
	}
	return server
}

func hasMethod(methods []string, m string) bool {
	for _, x := range methods {
		if strings.EqualFold(x, m) {
			return true
		}
	}
	return false
}

// options returns the server's cached OPTIONS answer or asks again.
func (c *client) options(ctx context.Context, s *server) (*serverOptions, error) {
	s.mu.Lock()
	if s.opts != nil && c.now().Before(s.optsUntil) {
		o := s.opts
		s.mu.Unlock()
		return o, nil
	}
	s.mu.Unlock()
	var opts *serverOptions
	var ttl time.Duration
	err := c.withConn(ctx, s, func(cn *conn) (bool, bool, error) {
		var err error
		var started, reusable bool
		opts, ttl, started, reusable, err = optionsExchange(ctx, cn, s)
		return started, reusable, err
	})
	if err != nil {
		return nil, fmt.Errorf("OPTIONS: %w", err)
	}
	s.mu.Lock()
	s.opts, s.optsUntil = opts, c.now().Add(ttl)
	s.mu.Unlock()
	return opts, nil
}

// withConn runs fn on a pooled or new connection and pools it again when
// fn says it is reusable. A pooled connection that fails before the
// answer started (the server closed it while idle) is replaced once.
func (c *client) withConn(ctx context.Context, s *server, fn func(*conn) (started, reusable bool, err error)) error {
	for attempt := 0; ; attempt++ {
		cn, pooled, err := c.get(ctx, s)
		if err != nil {
			return err
		}
		started, reusable, err := fn(cn)
		if err == nil && reusable {
			c.put(s, cn)
		} else {
			_ = cn.Close()
		}
		if err != nil && pooled && !started && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return err
	}
}

func (c *client) get(ctx context.Context, s *server) (*conn, bool, error) {
	s.mu.Lock()
	for len(s.idle) > 0 {
		cn := s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if c.now().Sub(cn.used) < idleLimit {
			s.mu.Unlock()
			return cn, true, nil
		}
		_ = cn.Close()
	}
	s.mu.Unlock()
	d := net.Dialer{Timeout: c.connectTimeout}
	nc, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, false, fmt.Errorf("connect: %w", err)
	}
	return &conn{Conn: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 32<<10)}, false, nil
}

func (c *client) put(s *server, cn *conn) {
	cn.used = c.now()
	_ = cn.SetDeadline(time.Time{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.idle) >= maxIdlePerServer {
		_ = cn.Close()
		return
	}
	s.idle = append(s.idle, cn)
}

// close drops every idle connection.
func (c *client) close() {
	for _, s := range c.servers {
		s.mu.Lock()
		for _, cn := range s.idle {
			_ = cn.Close()
		}
		s.idle = nil
		s.mu.Unlock()
	}
}

// bindContext makes the connection's I/O end at ctx's deadline or
// cancellation. The returned function undoes it.
func bindContext(ctx context.Context, cn *conn) func() bool {
	if dl, ok := ctx.Deadline(); ok {
		_ = cn.SetDeadline(dl)
	} else {
		_ = cn.SetDeadline(time.Time{})
	}
	return context.AfterFunc(ctx, func() { _ = cn.SetDeadline(time.Unix(1, 0)) })
}

// optionsExchange asks the server about the service (RFC 3507 §4.10).
func optionsExchange(ctx context.Context, cn *conn, s *server) (opts *serverOptions, ttl time.Duration, started, reusable bool, err error) {
	defer bindContext(ctx, cn)()
	fmt.Fprintf(cn.bw, "OPTIONS %s ICAP/1.0\r\nHost: %s\r\nUser-Agent: opes-milter\r\nEncapsulated: null-body=0\r\n\r\n", s.uri, s.host)
	if err := cn.bw.Flush(); err != nil {
		return nil, 0, false, false, fmt.Errorf("send: %w", err)
	}
	resp, started, err := readResponse(cn.br, "OPTIONS", drainLimit)
	if err != nil {
		return nil, 0, started, false, err
	}
	if resp.code != 200 {
		return nil, 0, true, false, fmt.Errorf("OPTIONS answered %d %s", resp.code, clip(resp.reason))
	}
	if resp.body != nil { // an opt-body nobody here reads
		if err := resp.body.drain(); err != nil {
			return nil, 0, true, false, fmt.Errorf("read opt-body: %w", err)
		}
	}
	opts = &serverOptions{preview: -1}
	for _, m := range strings.Split(resp.header.get("Methods"), ",") {
		if m = strings.TrimSpace(m); m != "" {
			opts.methods = append(opts.methods, m)
		}
	}
	if len(opts.methods) == 0 {
		return nil, 0, true, false, protoErrorf("OPTIONS answer without Methods")
	}
	if v := resp.header.get("Preview"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			opts.preview = min(n, maxPreview)
		}
	}
	opts.ignoreAll = listHasStar(resp.header.get("Transfer-Ignore"))
	opts.completeAll = listHasStar(resp.header.get("Transfer-Complete"))
	ttl = maxOptionsTTL
	if v := resp.header.get("Options-TTL"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			ttl = min(time.Duration(n)*time.Second, maxOptionsTTL)
		}
	}
	return opts, ttl, true, !closes(resp.header), nil
}

// listHasStar reports whether a Transfer-* list holds the wildcard. A
// message has no file extension, so only "*" applies to it.
func listHasStar(v string) bool {
	for _, e := range strings.Split(v, ",") {
		if strings.TrimSpace(e) == "*" {
			return true
		}
	}
	return false
}

func closes(h header) bool {
	for _, t := range strings.Split(h.get("Connection"), ",") {
		if strings.EqualFold(strings.TrimSpace(t), "close") {
			return true
		}
	}
	return false
}

// exchange sends one REQMOD/RESPMOD request and reads the answer.
//
// The body is written by a goroutine while the answer is read: a server
// may start answering (a modified body streamed back, an early block)
// before it has read everything, and a client that only writes until it
// is done would then deadlock with it on full socket buffers.
func exchange(ctx context.Context, cn *conn, s *server, req *request, preview int, h handler) (started, reusable bool, err error) {
	defer bindContext(ctx, cn)()
	var enc string
	switch {
	case len(req.resHdr) > 0:
		enc = fmt.Sprintf("req-hdr=0, res-hdr=%d, res-body=%d", len(req.reqHdr), len(req.reqHdr)+len(req.resHdr))
	default:
		enc = fmt.Sprintf("req-hdr=0, req-body=%d", len(req.reqHdr))
	}
	bw := cn.bw
	fmt.Fprintf(bw, "%s %s ICAP/1.0\r\nHost: %s\r\nUser-Agent: opes-milter\r\nAllow: 204\r\n", req.method, s.uri, s.host)
	if preview >= 0 {
		fmt.Fprintf(bw, "Preview: %d\r\n", preview)
	}
	for _, f := range req.extra {
		fmt.Fprintf(bw, "%s: %s\r\n", f.name, f.value)
	}
	fmt.Fprintf(bw, "Encapsulated: %s\r\n\r\n", enc)
	bw.Write(req.reqHdr)
	bw.Write(req.resHdr)

	body := req.open()
	var rest io.Reader // what follows the preview, nil when it held everything
	if preview >= 0 {
		buf := make([]byte, preview+1)
		n, rerr := io.ReadFull(body, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return false, false, fmt.Errorf("read message: %w", rerr)
		}
		if n > preview {
			rest = io.MultiReader(bytes.NewReader(buf[preview:n]), body)
			n = preview
		}
		chunkedWriter{bw}.Write(buf[:n])
		if rest == nil {
			io.WriteString(bw, "0; ieof\r\n\r\n")
		} else {
			io.WriteString(bw, "0\r\n\r\n")
		}
		if err := bw.Flush(); err != nil {
			return false, false, fmt.Errorf("send: %w", err)
		}
		resp, started, err := readResponse(cn.br, req.method, req.limit)
		if err != nil {
			return started, false, err
		}
		if resp.code != 100 {
			// The request ended with the preview: the connection is
			// clean once the answer has been read.
			reusable, err := finish(resp, h)
			return true, reusable, err
		}
		if rest == nil {
			return true, false, protoErrorf("100 Continue after a preview marked ieof")
		}
	} else {
		rest = body
	}

	done := make(chan error, 1)
	go func() {
		buf := make([]byte, copyBuffer)
		_, err := io.CopyBuffer(chunkedWriter{bw}, onlyReader{rest}, buf)
		if err == nil {
			_, err = io.WriteString(bw, "0\r\n\r\n")
		}
		if err == nil {
			err = bw.Flush()
		}
		done <- err
	}()
	resp, started, err := readResponse(cn.br, req.method, req.limit)
	if err == nil && resp.code == 100 {
		err = protoErrorf("100 Continue where no preview was waiting for it")
	}
	if err == nil {
		reusable, err = finish(resp, h)
	}
	// The answer is complete (or failed); the request must be too before
	// the connection can carry another one. A server that answered early
	// did not read the rest: close, which also stops the writer.
	var werr error
	grace := time.NewTimer(writerGrace)
	select {
	case werr = <-done:
	case <-grace.C:
		_ = cn.Close()
		werr = <-done
		reusable = false
	}
	grace.Stop()
	if werr != nil {
		reusable = false
		if err != nil && !started {
			// Nothing came back: the write error says more (a reset,
			// a deadline) than the read error that followed it.
			err = fmt.Errorf("send: %w", werr)
		}
	}
	return started || err == nil, reusable, err
}

// onlyReader hides WriterTo/ReaderFrom so io.CopyBuffer uses the buffer:
// each chunk then carries at most copyBuffer octets.
type onlyReader struct{ io.Reader }

// finish hands the answer to h and drains what it left.
func finish(resp *response, h handler) (reusable bool, err error) {
	if err := h(resp); err != nil {
		return false, err
	}
	if resp.body != nil && !resp.body.done {
		resp.body.limit = resp.body.total + drainLimit
		if err := resp.body.drain(); err != nil {
			return false, nil // the verdict stands; only the connection is lost
		}
	}
	return !closes(resp.header), nil
}

// readResponse reads an ICAP status line, its header and the
// encapsulated HTTP header sections; the body, if any, is left on r
// behind resp.body. started reports that the status line arrived.
func readResponse(r *bufio.Reader, method string, limit int64) (resp *response, started bool, err error) {
	line, err := readLine(r, maxLine)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("read answer: connection closed: %w", io.ErrUnexpectedEOF)
		}
		return nil, false, fmt.Errorf("read answer: %w", err)
	}
	code, reason, err := parseStatusLine(line, "ICAP")
	if err != nil {
		return nil, true, err
	}
	h, err := readHeader(r, maxICAPHeader)
	if err != nil {
		return nil, true, fmt.Errorf("read ICAP header: %w", err)
	}
	resp = &response{code: code, reason: reason, header: h}
	if code != 200 {
		// 100 and 204 carry nothing; an error answer's body (if any)
		// is never read, so its connection is not reused.
		if enc := h.get("Encapsulated"); code >= 300 && enc != "" && !strings.HasPrefix(strings.ToLower(strings.TrimSpace(enc)), "null-body") {
			h = append(h, field{name: "Connection", value: "close"})
			resp.header = h
		}
		return resp, true, nil
	}
	enc := h.get("Encapsulated")
	if enc == "" && method == "OPTIONS" {
		return resp, true, nil
	}
	secs, err := parseEncapsulated(enc)
	if err != nil {
		return nil, true, err
	}
	if secs[0].offset != 0 {
		return nil, true, protoErrorf("first Encapsulated offset is %d, not 0", secs[0].offset)
	}
	for i, sec := range secs[:len(secs)-1] {
		n := secs[i+1].offset - sec.offset
		if n > maxHTTPHeader {
			return nil, true, protoErrorf("encapsulated %s of %d octets", sec.name, n)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, true, fmt.Errorf("read encapsulated %s: %w", sec.name, err)
		}
		head, err := parseHTTPHead(buf)
		if err != nil {
			return nil, true, fmt.Errorf("encapsulated %s: %w", sec.name, err)
		}
		switch sec.name {
		case "req-hdr":
			resp.reqHdr = head
		case "res-hdr":
			resp.resHdr = head
		default:
			return nil, true, protoErrorf("Encapsulated entry %q before the body", sec.name)
		}
	}
	if last := secs[len(secs)-1].name; last != "null-body" {
		resp.body = newChunkedReader(r, limit)
	}
	return resp, true, nil
}

// parseHTTPHead parses an encapsulated header section, which must end
// exactly with its empty line.
func parseHTTPHead(b []byte) (*httpHead, error) {
	br := bufio.NewReader(bytes.NewReader(b))
	start, err := readLine(br, maxLine)
	if err != nil {
		return nil, protoErrorf("no start line")
	}
	h, err := readHeader(br, maxHTTPHeader)
	if err != nil {
		return nil, err
	}
	if br.Buffered() > 0 {
		return nil, protoErrorf("data after the empty line of the header section")
	}
	return &httpHead{start: start, header: h}, nil
}
