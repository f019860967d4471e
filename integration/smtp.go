package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Reply is one SMTP reply, all of its lines.
type Reply struct {
	Code int // 0 if nothing was read
	// Lines are the reply lines exactly as received, without CRLF,
	// code and separator included: "550-5.7.1 first", "550 5.7.1 last".
	Lines []string
	// Raw is the reply as received, CRLFs included.
	Raw string
}

// Text returns the text of each line, without "NNN-" or "NNN ".
func (r Reply) Text() []string {
	out := make([]string, len(r.Lines))
	for i, l := range r.Lines {
		if len(l) > 4 {
			out[i] = l[4:]
		}
	}
	return out
}

// Multiline reports whether the reply has more than one line.
func (r Reply) Multiline() bool { return len(r.Lines) > 1 }

// Class returns the first digit of the code (2, 3, 4 or 5).
func (r Reply) Class() int { return r.Code / 100 }

// Positive reports a 2xx or 3xx reply.
func (r Reply) Positive() bool { return r.Code >= 200 && r.Code < 400 }

// Contains reports whether any line contains s.
func (r Reply) Contains(s string) bool { return strings.Contains(r.Raw, s) }

// String returns the lines joined with " | " (for messages).
func (r Reply) String() string {
	if len(r.Lines) == 0 {
		return "(no reply)"
	}
	return strings.Join(r.Lines, " | ")
}

// ErrMalformedReply is wrapped by ReadReply for a line that is not
// "DDD", "DDD text" or "DDD-text", or a code that changes mid-reply.
var ErrMalformedReply = errors.New("malformed SMTP reply")

// ReadReply reads one complete SMTP reply: continuation lines ("250-...")
// up to and including the last line ("250 ..." or a bare "250"). It accepts
// LF-only line ends. On error it returns what it read so far.
func ReadReply(r *bufio.Reader) (Reply, error) {
	var rep Reply
	var raw strings.Builder
	for {
		line, err := r.ReadString('\n')
		raw.WriteString(line)
		rep.Raw = raw.String()
		if err != nil {
			if err == io.EOF && line == "" && len(rep.Lines) == 0 {
				return rep, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if line != "" {
				rep.Lines = append(rep.Lines, strings.TrimRight(line, "\r\n"))
			}
			return rep, err
		}
		l := strings.TrimRight(line, "\r\n")
		rep.Lines = append(rep.Lines, l)
		if len(l) < 3 {
			return rep, fmt.Errorf("%w: line %q", ErrMalformedReply, l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil || code < 100 || code > 599 || l[0] == '+' || l[0] == '-' {
			return rep, fmt.Errorf("%w: line %q", ErrMalformedReply, l)
		}
		if rep.Code == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return rep, fmt.Errorf("%w: code %d within a %d reply: %q", ErrMalformedReply, code, rep.Code, l)
		}
		switch {
		case len(l) == 3 || l[3] == ' ':
			return rep, nil
		case l[3] == '-':
			continue
		default:
			return rep, fmt.Errorf("%w: line %q", ErrMalformedReply, l)
		}
	}
}

// ParseReplies parses a byte string holding one or more complete replies.
func ParseReplies(s string) ([]Reply, error) {
	r := bufio.NewReader(strings.NewReader(s))
	var out []Reply
	for {
		rep, err := ReadReply(r)
		if err == io.EOF {
			return out, nil
		}
		out = append(out, rep)
		if err != nil {
			return out, err
		}
	}
}

// Step is one command and its reply.
type Step struct {
	Cmd   string // the command line, or "." for the end of the message data
	Reply Reply
	Err   error // I/O or parse error, e.g. the server closed the connection
}

// Transcript records an SMTP session.
type Transcript struct {
	Greeting Reply
	Steps    []Step
	Err      error // the first I/O error, if any
}

// Replies returns the replies to the commands whose verb (first word,
// case-insensitive, "MAIL", "RCPT", "DATA", "." ...) is verb, in order.
func (tr Transcript) Replies(verb string) []Reply {
	var out []Reply
	for _, s := range tr.Steps {
		if v, _, _ := strings.Cut(s.Cmd, " "); strings.EqualFold(v, verb) {
			out = append(out, s.Reply)
		}
	}
	return out
}

// Reply returns the reply to the first command with that verb.
func (tr Transcript) Reply(verb string) (Reply, bool) {
	r := tr.Replies(verb)
	if len(r) == 0 {
		return Reply{}, false
	}
	return r[0], true
}

// DataReply returns the reply to the end of the message data ("."), if the
// session got that far.
func (tr Transcript) DataReply() (Reply, bool) { return tr.Reply(".") }

// Accepted reports whether the message was accepted: a 2xx reply to ".".
func (tr Transcript) Accepted() bool {
	r, ok := tr.DataReply()
	return ok && r.Class() == 2
}

// All returns the greeting and every reply, in order.
func (tr Transcript) All() []Reply {
	out := []Reply{tr.Greeting}
	for _, s := range tr.Steps {
		out = append(out, s.Reply)
	}
	return out
}

// String renders the session for test logs.
func (tr Transcript) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "<- %s\n", strings.Join(tr.Greeting.Lines, "\n<- "))
	for _, s := range tr.Steps {
		fmt.Fprintf(&b, "-> %s\n", s.Cmd)
		if len(s.Reply.Lines) > 0 {
			fmt.Fprintf(&b, "<- %s\n", strings.Join(s.Reply.Lines, "\n<- "))
		}
		if s.Err != nil {
			fmt.Fprintf(&b, "!! %v\n", s.Err)
		}
	}
	return b.String()
}

// SMTPClient is a plain SMTP client for tests: it returns every reply in
// full and records the session. Its methods fail the test on I/O errors;
// the Try variants return them. Use it from the test goroutine only.
type SMTPClient struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	tr      Transcript
	closed  bool
	Timeout time.Duration // per command; default 20s
}

// Dial connects to addr and reads the greeting, whatever its code. It fails
// the test if it cannot connect or read a greeting. The connection is closed
// at cleanup.
func Dial(t testing.TB, addr string) *SMTPClient {
	t.Helper()
	c, err := TryDial(t, addr)
	if err != nil {
		t.Fatalf("integration: SMTP dial %s: %v", addr, err)
	}
	return c
}

// TryDial is Dial returning the error.
func TryDial(t testing.TB, addr string) (*SMTPClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &SMTPClient{t: t, conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn), Timeout: 20 * time.Second}
	t.Cleanup(c.Close)
	conn.SetDeadline(time.Now().Add(c.Timeout))
	g, err := ReadReply(c.r)
	c.tr.Greeting = g
	if err != nil {
		c.tr.Err = err
		c.Close()
		return nil, fmt.Errorf("greeting: %w (got %q)", err, g.Raw)
	}
	return c, nil
}

// Greeting returns the server's greeting.
func (c *SMTPClient) Greeting() Reply { return c.tr.Greeting }

// Transcript returns the session so far.
func (c *SMTPClient) Transcript() Transcript {
	tr := c.tr
	tr.Steps = append([]Step(nil), c.tr.Steps...)
	return tr
}

func (c *SMTPClient) must(r Reply, err error) Reply {
	c.t.Helper()
	if err != nil {
		c.t.Fatalf("integration: SMTP: %v\nsession:\n%s", err, c.tr.String())
	}
	return r
}

// exchange writes data (already CRLF-terminated) and reads one reply,
// recording it under name.
func (c *SMTPClient) exchange(name string, data []byte) (Reply, error) {
	if c.closed {
		err := errors.New("connection closed")
		c.tr.Steps = append(c.tr.Steps, Step{Cmd: name, Err: err})
		return Reply{}, err
	}
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	_, err := c.w.Write(data)
	if err == nil {
		err = c.w.Flush()
	}
	var rep Reply
	if err == nil {
		rep, err = ReadReply(c.r)
	}
	c.tr.Steps = append(c.tr.Steps, Step{Cmd: name, Reply: rep, Err: err})
	if err != nil && c.tr.Err == nil {
		c.tr.Err = fmt.Errorf("%s: %w", name, err)
	}
	return rep, err
}

// TryCmd sends one command line (without CRLF) and returns the reply.
func (c *SMTPClient) TryCmd(line string) (Reply, error) {
	if strings.ContainsAny(line, "\r\n") {
		return Reply{}, fmt.Errorf("command %q contains CR or LF", line)
	}
	return c.exchange(line, []byte(line+"\r\n"))
}

// Cmd sends one command line (without CRLF) and returns the reply.
func (c *SMTPClient) Cmd(line string) Reply {
	c.t.Helper()
	return c.must(c.TryCmd(line))
}

// Ehlo sends EHLO name.
func (c *SMTPClient) Ehlo(name string) Reply {
	c.t.Helper()
	return c.Cmd("EHLO " + name)
}

// MailFrom sends MAIL FROM:<addr> with optional ESMTP parameters.
func (c *SMTPClient) MailFrom(addr string, params ...string) Reply {
	c.t.Helper()
	return c.Cmd(mailCmd(addr, params))
}

// RcptTo sends RCPT TO:<addr> with optional ESMTP parameters.
func (c *SMTPClient) RcptTo(addr string, params ...string) Reply {
	c.t.Helper()
	return c.Cmd(rcptCmd(addr, params))
}

func mailCmd(addr string, params []string) string {
	return strings.Join(append([]string{"MAIL FROM:<" + addr + ">"}, params...), " ")
}

func rcptCmd(addr string, params []string) string {
	return strings.Join(append([]string{"RCPT TO:<" + addr + ">"}, params...), " ")
}

// TryData sends DATA; if the server answers 354 it sends msg (line ends
// normalised to CRLF, dot-stuffed, terminated by ".") and returns the reply
// to the end of data, otherwise it returns the reply to DATA.
func (c *SMTPClient) TryData(msg []byte) (Reply, error) {
	rep, err := c.TryCmd("DATA")
	if err != nil || rep.Code != 354 {
		return rep, err
	}
	return c.exchange(".", EncodeData(msg))
}

// Data is TryData failing the test on I/O errors.
func (c *SMTPClient) Data(msg []byte) Reply {
	c.t.Helper()
	return c.must(c.TryData(msg))
}

// Quit sends QUIT, reads the reply (if any) and closes the connection.
func (c *SMTPClient) Quit() Reply {
	rep, _ := c.TryCmd("QUIT")
	c.Close()
	return rep
}

// Close closes the connection without QUIT.
func (c *SMTPClient) Close() {
	if !c.closed {
		c.closed = true
		c.conn.Close()
	}
}

// EncodeData turns a message into the DATA stream: every line end becomes
// CRLF (bare LF included), a leading "." is doubled, a missing final line
// end is added, and the terminating ".\r\n" is appended.
func EncodeData(msg []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(msg) + len(msg)/40 + 8)
	s := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	s = bytes.TrimSuffix(s, []byte("\n"))
	if len(msg) > 0 {
		for _, line := range bytes.Split(s, []byte("\n")) {
			if len(line) > 0 && line[0] == '.' {
				b.WriteByte('.')
			}
			b.Write(line)
			b.WriteString("\r\n")
		}
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// SendMail runs a whole session against addr: EHLO client.example.test,
// MAIL FROM, one RCPT TO per recipient and, if at least one recipient was
// accepted, DATA with msg; then QUIT. It goes on after a negative EHLO reply
// (to record what the server says to each command) but stops after a
// rejected MAIL. It records every reply and returns the transcript; SMTP
// rejections and a dropped connection are in the transcript, not test
// failures. It fails the test only if it cannot connect.
func SendMail(t testing.TB, addr, from string, rcpts []string, msg []byte) Transcript {
	t.Helper()
	c := Dial(t, addr)
	defer c.Close()
	return c.session(from, rcpts, msg)
}

// session is the rest of SendMail's session, after the greeting, on any
// goroutine: it fails no test, every failure is in the transcript.
func (c *SMTPClient) session(from string, rcpts []string, msg []byte) Transcript {
	// The commands stop at the first failure; QUIT follows unless the
	// connection broke.
	func() {
		if _, err := c.TryCmd("EHLO client.example.test"); err != nil {
			return
		}
		if rep, err := c.TryCmd(mailCmd(from, nil)); err != nil || !rep.Positive() {
			return
		}
		ok := 0
		for _, r := range rcpts {
			rep, err := c.TryCmd(rcptCmd(r, nil))
			if err != nil {
				return
			}
			if rep.Positive() {
				ok++
			}
		}
		if ok > 0 {
			_, _ = c.TryData(msg)
		}
	}()
	if c.tr.Err == nil {
		_, _ = c.TryCmd("QUIT")
	}
	return c.Transcript()
}
