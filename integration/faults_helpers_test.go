package integration

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the fault-injection and soak tests (faults_test.go,
// soak_test.go): misbehaving scanners, a milter restarted on the socket
// Postfix already uses, a goroutine-safe SMTP session, and readers for the
// admin API and the reports at the sink.

// fakeScanner is a TCP listener that plays a broken clamd: every
// connection is handed to serve. It stops, and closes every connection,
// at cleanup.
type fakeScanner struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startFakeScanner(t *testing.T, serve func(net.Conn)) *fakeScanner {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake scanner: %v", err)
	}
	s := &fakeScanner{l: l}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// Socket is the listener in the clamav service's syntax.
func (s *fakeScanner) Socket() string { return "tcp:" + s.l.Addr().String() }

// stallingScanner accepts and reads, and never answers: a scanner hung
// past any deadline. The connection stays open until the client gives up
// (or cleanup).
func stallingScanner(t *testing.T) *fakeScanner {
	return startFakeScanner(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
	})
}

// garbageScanner reads a whole INSTREAM request, as clamd would, and then
// answers pseudo-random bytes (a fixed seed: the same garbage every run)
// and closes. reqs receives one value per complete request read.
func garbageScanner(t *testing.T, reqs chan<- struct{}) *fakeScanner {
	return startFakeScanner(t, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if err := readInstream(bufio.NewReader(c)); err != nil {
			return
		}
		select {
		case reqs <- struct{}{}:
		default:
		}
		rng := rand.New(rand.NewPCG(8, 1997))
		junk := make([]byte, 700)
		for i := range junk {
			junk[i] = byte(rng.UintN(256))
		}
		_, _ = c.Write(junk)
	})
}

// readInstream consumes "zINSTREAM\0" and the length-prefixed chunks up
// to the zero-length terminator.
func readInstream(r *bufio.Reader) error {
	cmd, err := r.ReadString(0)
	if err != nil {
		return err
	}
	if cmd != "zINSTREAM\x00" {
		return fmt.Errorf("not an INSTREAM request: %q", cmd)
	}
	var n [4]byte
	for {
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return err
		}
		size := binary.BigEndian.Uint32(n[:])
		if size == 0 {
			return nil
		}
		if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
			return err
		}
	}
}

// trySendMail is SendMail for other goroutines than the test's: it never
// fails the test, it returns the error of a connection that could not be
// made (the transcript holds every other failure).
func trySendMail(t *testing.T, addr, from string, rcpts []string, msg []byte) (Transcript, error) {
	c, err := TryDial(t, addr)
	if err != nil {
		return Transcript{}, err
	}
	defer c.Close()
	return c.session(from, rcpts, msg), nil
}

var queuedAs = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// queueID is the Postfix queue id in a 250 reply to the end of data.
func queueID(r Reply) string {
	if m := queuedAs.FindStringSubmatch(r.Raw); m != nil {
		return m[1]
	}
	return ""
}

var enhancedCode = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// replyText joins the text of a reply's lines, without code and enhanced
// code, so that a trace entry folded over two lines can be searched.
func replyText(r Reply) string {
	var parts []string
	for _, l := range r.Text() {
		if f := strings.SplitN(l, " ", 2); len(f) == 2 && enhancedCode.MatchString(f[0]) {
			l = f[1]
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, " ")
}

// quarantineItem and outboxItem are the parts of the admin API's
// QuarantineView and OutboxView these tests read.
type quarantineItem struct {
	ID         string   `json:"id"`
	TraceID    string   `json:"trace_id"`
	QueueID    string   `json:"queue_id"`
	Sender     string   `json:"sender"`
	Recipients []string `json:"recipients"`
	Reason     string   `json:"reason"`
	Status     string   `json:"status"`
}

type outboxItem struct {
	ID         string   `json:"id"`
	TraceID    string   `json:"trace_id"`
	Sender     string   `json:"sender"`
	Recipients []string `json:"recipients"`
	Attempts   int      `json:"attempts"`
	LastError  string   `json:"last_error"`
	Status     string   `json:"status"`
}

// listQuarantine lists the quarantine through the admin API; recipient
// ("" for all, or "@domain") narrows it: the API answers at most 1000
// items per request.
func listQuarantine(t *testing.T, adminAddr, recipient string) []quarantineItem {
	t.Helper()
	url := "http://" + adminAddr + "/api/v1/quarantine?limit=1000"
	if recipient != "" {
		url += "&recipient=" + recipient
	}
	var items []quarantineItem
	apiJSON(t, "GET", url, &items)
	return items
}

func listOutbox(t *testing.T, adminAddr string) []outboxItem {
	t.Helper()
	var items []outboxItem
	apiJSON(t, "GET", "http://"+adminAddr+"/api/v1/outbox?limit=1000", &items)
	return items
}

// reportedMessageID returns the Message-ID named by the text/rfc822-headers
// part of a delivery report (RFC 3462), without angle brackets.
func reportedMessageID(msg []byte) (string, error) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		return "", fmt.Errorf("report: content type %q (%v)", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return "", errors.New("report: no text/rfc822-headers part")
		}
		if err != nil {
			return "", fmt.Errorf("report: %w", err)
		}
		if pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); pt != "text/rfc822-headers" {
			continue
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return "", fmt.Errorf("report: headers part: %w", err)
		}
		h, err := textproto.NewReader(bufio.NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader("\r\n\r\n")))).ReadMIMEHeader()
		if err != nil && len(h) == 0 {
			return "", fmt.Errorf("report: headers part: %w", err)
		}
		id := strings.Trim(strings.TrimSpace(h.Get("Message-Id")), "<>")
		if id == "" {
			return "", errors.New("report: the headers part has no Message-ID")
		}
		return id, nil
	}
}

// notDelivered fails the test if a message with that subject is at the
// sink, after a grace period for one that may still be on its way.
func notDelivered(t *testing.T, sink *Sink, subject string) {
	t.Helper()
	time.Sleep(500 * time.Millisecond)
	for _, d := range sink.Dumps() {
		if strings.Contains(d.Header().Get("Subject"), subject) {
			t.Errorf("message %q reached the sink:\n%s", subject, d.Message)
		}
	}
}
