package clamav

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Client speaks clamd's stream protocol over a unix or TCP socket.
//
// Each call uses its own connection. clamd answers one command per
// connection unless a session (IDSESSION) is opened, and it drops idle
// sessions after its IdleTimeout; a pool would have to detect those stale
// connections on the mail path. A connect to a local clamd costs
// microseconds next to the scan, so fresh connections are simpler and
// never carry one message's failure into the next.
type Client struct {
	network, addr  string
	socket         string // as configured, for error messages
	connectTimeout time.Duration
	chunk          int
}

// Result is clamd's answer for one stream.
type Result struct {
	Infected  bool
	Signature string // clamd's signature name, raw; empty when clean
}

// ErrStreamTooLarge is clamd refusing a stream above its StreamMaxLength.
var ErrStreamTooLarge = errors.New("clamd: INSTREAM size limit exceeded")

// Defaults for a Client.
const (
	DefaultConnectTimeout = 5 * time.Second
	// chunkSize is what one INSTREAM chunk carries. clamd reads chunks of
	// any size up to StreamMaxLength; 64 KiB keeps syscalls few and the
	// buffer small.
	chunkSize = 64 << 10
	// maxReply bounds what is read back: a clamd reply is one short line,
	// so a peer that sends more is not clamd.
	maxReply = 4 << 10
)

// NewClient returns a client for socket, "unix:/path" or "tcp:host:port".
// It does not connect.
func NewClient(socket string) (*Client, error) {
	kind, addr, ok := strings.Cut(strings.TrimSpace(socket), ":")
	if !ok || addr == "" {
		return nil, fmt.Errorf(`socket %q: want "unix:/path" or "tcp:host:port"`, socket)
	}
	c := &Client{socket: socket, connectTimeout: DefaultConnectTimeout, chunk: chunkSize}
	switch strings.ToLower(kind) {
	case "unix":
		if !strings.HasPrefix(addr, "/") {
			return nil, fmt.Errorf("socket %q: the unix socket path must be absolute", socket)
		}
		c.network, c.addr = "unix", addr
	case "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf(`socket %q: want "tcp:host:port"`, socket)
		}
		c.network, c.addr = "tcp", addr
	default:
		return nil, fmt.Errorf(`socket %q: unknown type %q (want unix or tcp)`, socket, kind)
	}
	return c, nil
}

// SetConnectTimeout bounds the connect alone; the context bounds the
// whole call. Zero or less restores the default.
func (c *Client) SetConnectTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultConnectTimeout
	}
	c.connectTimeout = d
}

// Socket returns the socket as configured.
func (c *Client) Socket() string { return c.socket }

// Ping checks that clamd answers: PING, expecting PONG.
func (c *Client) Ping(ctx context.Context) error {
	conn, stop, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer stop()
	if _, err := conn.Write([]byte("zPING\x00")); err != nil {
		return c.wrap(ctx, "ping", err)
	}
	reply, err := readReply(conn)
	if err != nil {
		return c.wrap(ctx, "ping", err)
	}
	if reply != "PONG" {
		return fmt.Errorf("clamav: ping %s: unexpected reply %q", c.socket, reply)
	}
	return nil
}

// Scan streams r to clamd with INSTREAM and returns its verdict. Any
// failure, including a stream clamd found too large (ErrStreamTooLarge),
// is an error: the result is never "clean" unless clamd said so.
func (c *Client) Scan(ctx context.Context, r io.Reader) (Result, error) {
	conn, stop, err := c.dial(ctx)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	werr := c.stream(conn, r)
	if werr != nil && !isPeerClosed(werr) {
		return Result{}, c.wrap(ctx, "scan", werr)
	}
	// When clamd stops a stream early (size limit) it answers and closes,
	// so our write fails; its reply still says why. Over TCP the reset may
	// discard that reply: then the write error is returned, which is a
	// failure (tempfail), never "clean".
	reply, err := readReply(conn)
	if err != nil {
		if werr != nil {
			err = werr
		}
		return Result{}, c.wrap(ctx, "scan", err)
	}
	res, err := parseScanReply(reply)
	if err != nil {
		return Result{}, fmt.Errorf("clamav: scan via %s: %w", c.socket, err)
	}
	if werr != nil && !res.Infected {
		// clamd closed before it had the whole message: its "OK" covers
		// only part of it. A signature it found is still a virus.
		return Result{}, c.wrap(ctx, "scan", werr)
	}
	return res, nil
}

// stream sends the INSTREAM command, r in length-prefixed chunks, and the
// zero-length terminator. One buffer is reused, so the message is never
// held in memory.
func (c *Client) stream(conn net.Conn, r io.Reader) error {
	if _, err := conn.Write([]byte("zINSTREAM\x00")); err != nil {
		return err
	}
	buf := make([]byte, 4+c.chunk)
	for {
		n, rerr := io.ReadFull(r, buf[4:])
		if n > 0 {
			binary.BigEndian.PutUint32(buf[:4], uint32(n))
			if _, err := conn.Write(buf[:4+n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read message: %w", rerr)
		}
	}
	_, err := conn.Write([]byte{0, 0, 0, 0})
	return err
}

// dial connects and arms the deadlines: the socket deadline follows the
// context's, and cancelling the context unblocks any read or write at
// once. stop releases both.
func (c *Client) dial(ctx context.Context) (net.Conn, func(), error) {
	d := net.Dialer{Timeout: c.connectTimeout}
	conn, err := d.DialContext(ctx, c.network, c.addr)
	if err != nil {
		return nil, nil, c.wrap(ctx, "connect", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	unhook := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return conn, func() { unhook(); _ = conn.Close() }, nil
}

// wrap names the operation and socket, and reports the context's reason
// (deadline, cancel) rather than the socket's "i/o timeout" it caused.
func (c *Client) wrap(ctx context.Context, op string, err error) error {
	cerr := ctx.Err()
	if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// Socket deadlines come only from the context; the socket's may
		// fire a moment before the context's own timer.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("clamav: %s via %s: %w (%v)", op, c.socket, cerr, err)
	}
	return fmt.Errorf("clamav: %s via %s: %w", op, c.socket, err)
}

// readReply reads one NUL-terminated reply (or up to EOF), bounded.
func readReply(conn net.Conn) (string, error) {
	var b bytes.Buffer
	buf := make([]byte, 512)
	for b.Len() <= maxReply {
		n, err := conn.Read(buf)
		b.Write(buf[:n])
		if i := bytes.IndexByte(b.Bytes(), 0); i >= 0 {
			return strings.TrimSpace(string(b.Bytes()[:i])), nil
		}
		if err == io.EOF {
			if b.Len() == 0 {
				return "", errors.New("connection closed without a reply")
			}
			return strings.TrimSpace(b.String()), nil
		}
		if err != nil {
			return "", fmt.Errorf("read reply: %w", err)
		}
	}
	return "", fmt.Errorf("reply longer than %d octets", maxReply)
}

// parseScanReply reads "stream: OK", "stream: <name> FOUND" and the
// "... ERROR" forms.
func parseScanReply(reply string) (Result, error) {
	body, _ := strings.CutPrefix(reply, "stream:")
	body = strings.TrimSpace(body)
	switch {
	case body == "OK":
		return Result{}, nil
	case body == "FOUND" || strings.HasSuffix(body, " FOUND"):
		sig := strings.TrimSpace(strings.TrimSuffix(body, "FOUND"))
		if sig == "" {
			return Result{}, fmt.Errorf("clamd reply %q names no signature", reply)
		}
		return Result{Infected: true, Signature: sig}, nil
	case strings.Contains(reply, "size limit exceeded"):
		return Result{}, ErrStreamTooLarge
	case strings.HasSuffix(body, "ERROR"):
		return Result{}, fmt.Errorf("clamd error: %q", reply)
	}
	return Result{}, fmt.Errorf("unexpected clamd reply %q", reply)
}

// isPeerClosed reports a write that failed because clamd closed its end.
func isPeerClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
