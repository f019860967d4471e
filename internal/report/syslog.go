package report

// The syslog sink sends incident records to a syslog daemon as RFC 5424
// messages: one JSON record per message in MSG and the trace id also in
// STRUCTURED-DATA, so a log pipeline can index the id without parsing the
// JSON. Like the webhook it works from a bounded queue: a dead or slow
// syslog daemon never holds up mail, records that do not fit are dropped
// and counted.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/opesmilter/opes-milter/opes"
)

// SyslogQueue is how many records may wait for the syslog daemon.
const SyslogQueue = 1000

// Defaults of SyslogConfig's zero fields.
const (
	DefaultSyslogAddress = "unixgram:/dev/log"
	DefaultSyslogTag     = "opes-milter"
	// DefaultSyslogMaxSize is the size every RFC 5424 receiver should
	// accept (§6.1: SHOULD 2048 octets), header included.
	DefaultSyslogMaxSize = 2048
	// DefaultSyslogTimeout bounds connecting and each write.
	DefaultSyslogTimeout = 2 * time.Second
)

// SyslogSDID names our STRUCTURED-DATA element. RFC 5424 §7.2.2 wants
// name@<private enterprise number>; 32473 is the number RFC 5612 reserves
// for documentation and examples, which is what an unregistered project
// may use.
const SyslogSDID = "opes@32473"

// minSyslogMaxSize leaves room for the header and a minimal record.
const minSyslogMaxSize = 480 // RFC 5424 §6.1: every receiver MUST accept 480 octets

// SyslogConfig says where and how records go to syslog. The zero value
// sends to /dev/log with facility mail.
type SyslogConfig struct {
	// Address is "unixgram:/path" (default unixgram:/dev/log),
	// "udp:host:port" (RFC 5426) or "tcp:host:port" (RFC 6587 octet
	// counting).
	Address string
	// Facility is a name (mail, daemon, local0 ... local7, ...); default
	// mail.
	Facility string
	// Tag is the APP-NAME; default "opes-milter".
	Tag string
	// Hostname is the HOSTNAME field; default os.Hostname.
	Hostname string
	// MaxSize bounds a whole message in octets (default 2048, at least
	// 480); a longer record is shortened to fit, staying valid JSON.
	MaxSize int
	// Timeout bounds connecting and each write; default 2s.
	Timeout time.Duration
}

// ParseSyslogAddress splits an address of SyslogConfig into the network
// and the address net.Dial takes. The empty string is the default.
func ParseSyslogAddress(s string) (network, addr string, err error) {
	if s == "" {
		s = DefaultSyslogAddress
	}
	network, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" {
		return "", "", fmt.Errorf("syslog address %q: want unixgram:/path, udp:host:port or tcp:host:port", s)
	}
	switch network {
	case "unixgram":
		if !strings.HasPrefix(addr, "/") {
			return "", "", fmt.Errorf("syslog address %q: the socket path must be absolute", s)
		}
	case "udp", "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", fmt.Errorf("syslog address %q: %w", s, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return "", "", fmt.Errorf("syslog address %q: want host:port with a port from 1 to 65535", s)
		}
	default:
		return "", "", fmt.Errorf("syslog address %q: unknown transport %q (want unixgram, udp or tcp)", s, network)
	}
	return network, addr, nil
}

var facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19,
	"local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// ParseSyslogFacility returns the RFC 5424 facility code of a name; the
// empty string is mail.
func ParseSyslogFacility(s string) (int, error) {
	if s == "" {
		return facilities["mail"], nil
	}
	if f, ok := facilities[strings.ToLower(s)]; ok {
		return f, nil
	}
	return 0, fmt.Errorf("syslog facility %q: want mail, daemon, user, auth, authpriv, syslog or local0 ... local7", s)
}

// Severities (RFC 5424 §6.2.1) of the records we send.
const (
	sevWarning = 4 // the message or a recipient was refused, or the message was held
	sevNotice  = 5 // temporary failure
	sevInfo    = 6 // anything else (the sink also works without the Incidents filter)
)

// Syslog sends records to a syslog daemon from a bounded queue.
type Syslog struct {
	network, addr string
	facility      int
	tag, hostname string
	procID        string
	maxSize       int
	timeout       time.Duration
	onError       func(error)

	queue   chan []byte
	done    sync.WaitGroup
	conn    net.Conn // owned by run
	dropped atomic.Uint64

	mu         sync.Mutex
	unreported uint64    // drops not yet told to onError
	lastReport time.Time // when onError last heard of drops
}

// NewSyslog checks cfg and starts the sender; it does not connect yet (a
// syslog daemon that starts after us is fine). onError is told of send
// failures and, at most once a second, of dropped records. Close stops
// it after the queue drained.
func NewSyslog(cfg SyslogConfig, onError func(error)) (*Syslog, error) {
	network, addr, err := ParseSyslogAddress(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	fac, err := ParseSyslogFacility(cfg.Facility)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	tag := cfg.Tag
	if tag == "" {
		tag = DefaultSyslogTag
	}
	if !headerToken(tag, 48) {
		return nil, fmt.Errorf("report: syslog tag %q: want 1 to 48 printable US-ASCII characters without space", tag)
	}
	host := cfg.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	if !headerToken(host, 255) {
		if cfg.Hostname != "" {
			return nil, fmt.Errorf("report: syslog hostname %q: want 1 to 255 printable US-ASCII characters without space", host)
		}
		host = "-" // RFC 5424 NILVALUE: the system's name is unusable
	}
	size := cfg.MaxSize
	if size == 0 {
		size = DefaultSyslogMaxSize
	}
	if size < minSyslogMaxSize || size > 65000 {
		return nil, fmt.Errorf("report: syslog max size %d: want %d to 65000 octets", size, minSyslogMaxSize)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultSyslogTimeout
	}
	if onError == nil {
		onError = func(error) {}
	}
	s := &Syslog{
		network: network, addr: addr, facility: fac, tag: tag, hostname: host,
		procID: strconv.Itoa(os.Getpid()), maxSize: size, timeout: timeout, onError: onError,
		queue: make(chan []byte, SyslogQueue),
	}
	s.done.Add(1)
	go s.run()
	return s, nil
}

// Report implements opes.Reporter. It never blocks: when the queue is
// full the record is dropped and counted.
func (s *Syslog) Report(rec *opes.TransactionRecord) {
	msg, err := s.format(rec, time.Now())
	if err != nil {
		s.onError(fmt.Errorf("syslog: %w", err))
		return
	}
	select {
	case s.queue <- msg:
	default:
		s.drop(rec.TraceID, fmt.Errorf("queue of %d full", SyslogQueue))
	}
}

// Dropped is how many records were dropped since the start, for metrics.
func (s *Syslog) Dropped() uint64 { return s.dropped.Load() }

// drop counts a record that could not be sent and tells onError why, at
// most once a second so that a dead syslog daemon does not flood the log.
func (s *Syslog) drop(traceID string, why error) {
	s.dropped.Add(1)
	s.mu.Lock()
	s.unreported++
	now := time.Now()
	if now.Sub(s.lastReport) < time.Second {
		s.mu.Unlock()
		return
	}
	n := s.unreported
	s.unreported, s.lastReport = 0, now
	s.mu.Unlock()
	s.onError(fmt.Errorf("syslog: %d event(s) dropped, the last for trace id %s: %w", n, traceID, why))
}

// flushDrops reports drops the once-a-second limit held back.
func (s *Syslog) flushDrops() {
	s.mu.Lock()
	n := s.unreported
	s.unreported = 0
	s.mu.Unlock()
	if n > 0 {
		s.onError(fmt.Errorf("syslog: %d event(s) dropped", n))
	}
}

func (s *Syslog) run() {
	defer s.done.Done()
	defer func() {
		if s.conn != nil {
			_ = s.conn.Close()
		}
	}()
	for msg := range s.queue {
		// One retry on a fresh connection: a restarted syslog daemon
		// leaves our connected socket dead; a daemon that is down must
		// not stall the queue.
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			if err = s.send(msg); err == nil {
				break
			}
			if s.conn != nil {
				_ = s.conn.Close()
				s.conn = nil
			}
		}
		if err != nil {
			s.drop(traceOf(msg), err)
		}
	}
}

func (s *Syslog) send(msg []byte) error {
	if s.conn != nil && s.network == "tcp" && peerClosed(s.conn) {
		_ = s.conn.Close()
		s.conn = nil
	}
	if s.conn == nil {
		c, err := net.DialTimeout(s.network, s.addr, s.timeout)
		if err != nil {
			return fmt.Errorf("syslog: connect %s:%s: %w", s.network, s.addr, err)
		}
		s.conn = c
	}
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil {
		return fmt.Errorf("syslog: %w", err)
	}
	out := msg
	if s.network == "tcp" {
		// RFC 6587 §3.4.1 octet counting: MSG-LEN SP SYSLOG-MSG, so a
		// record may contain any octet without breaking the framing.
		out = append(strconv.AppendInt(make([]byte, 0, len(msg)+8), int64(len(msg)), 10), ' ')
		out = append(out, msg...)
	}
	if _, err := s.conn.Write(out); err != nil {
		return fmt.Errorf("syslog: send to %s:%s: %w", s.network, s.addr, err)
	}
	return nil
}

// peerClosed reports whether the syslog daemon closed the TCP connection
// (it never sends anything): a write to such a connection succeeds once
// and the record is lost, so we peek, without waiting, before writing.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		closed = n == 0 && rerr == nil || rerr != nil && rerr != unix.EAGAIN && rerr != unix.EINTR
		return true // never wait for data
	})
	return closed || err != nil
}

// Close stops accepting records and waits until the queued ones were
// sent or ctx ends. Report must not be called after Close.
func (s *Syslog) Close(ctx context.Context) error {
	close(s.queue)
	done := make(chan struct{})
	go func() { s.done.Wait(); close(done) }()
	select {
	case <-done:
		s.flushDrops()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("syslog: %d events not sent: %w", len(s.queue), ctx.Err())
	}
}

// syslogRecord is what MSG holds: the transaction record, plus what was
// left out when it was too long.
type syslogRecord struct {
	*opes.TransactionRecord
	Truncated         bool `json:"truncated,omitempty"`
	RecipientsOmitted int  `json:"recipients_omitted,omitempty"`
	ServicesOmitted   int  `json:"services_omitted,omitempty"`
}

// format renders one RFC 5424 message (§6):
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [opes@32473 trace_id="..."] {json}
func (s *Syslog) format(rec *opes.TransactionRecord, now time.Time) ([]byte, error) {
	sev := sevInfo
	switch {
	case rec.Outcome.Verdict == "tempfail":
		sev = sevNotice
	case IsIncident(rec):
		sev = sevWarning
	}
	var h bytes.Buffer
	fmt.Fprintf(&h, "<%d>1 %s %s %s %s %s [%s trace_id=\"%s\"",
		s.facility*8+sev, now.UTC().Format("2006-01-02T15:04:05.000000Z"),
		s.hostname, s.tag, s.procID, msgID(rec.Outcome.Verdict), SyslogSDID, sdValue(rec.TraceID, 64))
	if rec.QueueID != "" {
		fmt.Fprintf(&h, " queue_id=\"%s\"", sdValue(rec.QueueID, 64))
	}
	h.WriteString("] ")
	room := s.maxSize - h.Len()
	body, err := fitJSON(rec, room)
	if err != nil {
		return nil, err
	}
	return append(h.Bytes(), body...), nil
}

// fitJSON encodes rec in at most room octets of US-ASCII JSON. A record
// that is too long loses recipients, then services, from the end (the
// counts say how many), and at last everything but the identification
// and the outcome: the result is always a whole JSON object, never a cut
// one a log parser would choke on.
func fitJSON(rec *opes.TransactionRecord, room int) ([]byte, error) {
	r := syslogRecord{TransactionRecord: rec}
	b, err := asciiJSON(r)
	if err != nil || len(b) <= room {
		return b, err
	}
	c := *rec
	r = syslogRecord{TransactionRecord: &c, Truncated: true}
	// Halve what is kept until it fits: at most a few dozen encodings.
	for len(c.Recipients) > 0 || len(c.Services) > 0 {
		if n := len(c.Recipients); n > 0 {
			c.Recipients = c.Recipients[:n/2]
			r.RecipientsOmitted = len(rec.Recipients) - len(c.Recipients)
		} else {
			n := len(c.Services)
			c.Services = c.Services[:n/2]
			r.ServicesOmitted = len(rec.Services) - len(c.Services)
		}
		if b, err = asciiJSON(r); err != nil || len(b) <= room {
			return b, err
		}
	}
	minimal := opes.TransactionRecord{TraceID: c.TraceID, QueueID: c.QueueID, Start: c.Start,
		DurationMS: c.DurationMS, Size: c.Size, Outcome: c.Outcome}
	r = syslogRecord{TransactionRecord: &minimal, Truncated: true,
		RecipientsOmitted: len(rec.Recipients), ServicesOmitted: len(rec.Services)}
	if b, err = asciiJSON(r); err != nil || len(b) <= room {
		return b, err
	}
	// Only absurdly long configured values get here (a quarantine reason
	// is at most 200 octets): keep the ids.
	b, err = asciiJSON(struct {
		TraceID   string `json:"trace_id"`
		Truncated bool   `json:"truncated"`
	}{truncate(c.TraceID, 64), true})
	if err == nil && len(b) > room {
		return nil, errors.New("max size leaves no room for a record")
	}
	return b, err
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// asciiJSON encodes v with every non-ASCII character escaped as \uXXXX:
// MSG then needs no BOM (RFC 5424 §6.4) and cannot carry a byte sequence
// a receiver mangles.
func asciiJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return b, nil
	}
	out := make([]byte, 0, len(b)+16)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		switch {
		case r < 0x80:
			out = append(out, byte(r))
		case r > 0xffff:
			r -= 0x10000
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return out, nil
}

// msgID is the MSGID field: the outcome, so that a syslog filter can
// route rejections and quarantines without parsing MSG.
func msgID(verdict string) string {
	if verdict == "" || !headerToken(verdict, 32) {
		return "-"
	}
	return verdict
}

// headerToken reports whether v is a valid RFC 5424 header field value:
// 1 to max PRINTUSASCII octets.
func headerToken(v string, max int) bool {
	if v == "" || len(v) > max {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 33 || v[i] > 126 {
			return false
		}
	}
	return true
}

// sdValue makes v a safe PARAM-VALUE: printable ASCII, at most max
// octets, with '"', '\' and ']' escaped (RFC 5424 §6.3.3).
func sdValue(v string, max int) string {
	var b strings.Builder
	for i := 0; i < len(v) && i < max; i++ {
		c := v[i]
		switch {
		case c == '"' || c == '\\' || c == ']':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// traceOf finds the trace id in a formatted message, for the drop report.
func traceOf(msg []byte) string {
	_, rest, ok := bytes.Cut(msg, []byte(` trace_id="`))
	if !ok {
		return "-"
	}
	id, _, _ := bytes.Cut(rest, []byte(`"`))
	return string(id)
}
