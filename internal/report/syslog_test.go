package report

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// rfc5424 is one received message, split as RFC 5424 §6 defines it.
type rfc5424 struct {
	Pri, Version             int
	Time                     time.Time
	Host, App, ProcID, MsgID string
	SDID                     string
	Params                   map[string]string
	Msg                      []byte
	Record                   syslogRecord           // MSG with the truncation marks
	TraceRecord              opes.TransactionRecord // MSG as the record
}

// parse5424 parses a message strictly enough to catch a malformed
// header: every field present, SP separated, one SD element.
func parse5424(t *testing.T, b []byte) rfc5424 {
	t.Helper()
	var m rfc5424
	s := string(b)
	if !strings.HasPrefix(s, "<") {
		t.Fatalf("no PRI: %q", s)
	}
	end := strings.IndexByte(s, '>')
	pri, err := strconv.Atoi(s[1:max(end, 1)])
	if end < 2 || end > 4 || err != nil || pri < 0 || pri > 191 {
		t.Fatalf("bad PRI in %q", s)
	}
	m.Pri = pri
	fields := strings.SplitN(s[end+1:], " ", 7)
	if len(fields) != 7 {
		t.Fatalf("header has %d fields: %q", len(fields), s)
	}
	if m.Version, err = strconv.Atoi(fields[0]); err != nil || m.Version != 1 {
		t.Fatalf("VERSION %q", fields[0])
	}
	if m.Time, err = time.Parse(time.RFC3339Nano, fields[1]); err != nil {
		t.Fatalf("TIMESTAMP %q: %v", fields[1], err)
	}
	m.Host, m.App, m.ProcID, m.MsgID = fields[2], fields[3], fields[4], fields[5]
	for i, f := range []struct {
		v   string
		max int
	}{{m.Host, 255}, {m.App, 48}, {m.ProcID, 128}, {m.MsgID, 32}} {
		if !headerToken(f.v, f.max) {
			t.Fatalf("header field %d %q is not 1*%d PRINTUSASCII", i+3, f.v, f.max)
		}
	}
	rest := fields[6]
	if !strings.HasPrefix(rest, "[") {
		t.Fatalf("no STRUCTURED-DATA: %q", rest)
	}
	// Walk the SD element honouring the \" \\ \] escapes in values.
	i, inValue := 1, false
	var elem strings.Builder
	for ; i < len(rest); i++ {
		c := rest[i]
		if inValue && c == '\\' && i+1 < len(rest) {
			elem.WriteByte(c)
			elem.WriteByte(rest[i+1])
			i++
			continue
		}
		if c == '"' {
			inValue = !inValue
		}
		if c == ']' && !inValue {
			break
		}
		elem.WriteByte(c)
	}
	if i >= len(rest) || i+1 >= len(rest) || rest[i+1] != ' ' {
		t.Fatalf("SD element not closed or not followed by SP: %q", rest)
	}
	m.Msg = []byte(rest[i+2:])
	e := elem.String()
	id, params, _ := strings.Cut(e, " ")
	m.SDID = id
	m.Params = map[string]string{}
	for params != "" {
		name, after, ok := strings.Cut(params, `="`)
		if !ok {
			t.Fatalf("bad SD-PARAM in %q", e)
		}
		var v strings.Builder
		j := 0
		for ; j < len(after) && after[j] != '"'; j++ {
			if after[j] == '\\' {
				j++
			}
			v.WriteByte(after[j])
		}
		m.Params[name] = v.String()
		params = strings.TrimPrefix(after[min(j+1, len(after)):], " ")
	}
	for _, c := range m.Msg {
		if c >= 0x80 {
			t.Fatalf("MSG is not US-ASCII: %q", m.Msg)
		}
	}
	if err := json.Unmarshal(m.Msg, &m.Record); err != nil {
		t.Fatalf("MSG is not one JSON record: %v\n%s", err, m.Msg)
	}
	m.TraceRecord = *m.Record.TransactionRecord
	return m
}

// UnmarshalJSON lets the test read back the embedded record.
func (r *syslogRecord) UnmarshalJSON(b []byte) error {
	var rec opes.TransactionRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return err
	}
	var extra struct {
		Truncated         bool `json:"truncated"`
		RecipientsOmitted int  `json:"recipients_omitted"`
		ServicesOmitted   int  `json:"services_omitted"`
	}
	if err := json.Unmarshal(b, &extra); err != nil {
		return err
	}
	*r = syslogRecord{TransactionRecord: &rec, Truncated: extra.Truncated,
		RecipientsOmitted: extra.RecipientsOmitted, ServicesOmitted: extra.ServicesOmitted}
	return nil
}

// errLog collects what the sink tells its onError.
type errLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errLog) add(err error) { l.mu.Lock(); l.errs = append(l.errs, err); l.mu.Unlock() }
func (l *errLog) get() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// unixgramReceiver is a syslog daemon's /dev/log: a datagram socket in a
// temporary directory.
func unixgramReceiver(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func readDatagram(t *testing.T, c net.PacketConn) []byte {
	t.Helper()
	buf := make([]byte, 70000)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("nothing arrived: %v", err)
	}
	return buf[:n]
}

func closeSink(t *testing.T, s *Syslog) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func socketPath(t *testing.T) string {
	// Unix socket paths are limited to 108 octets; t.TempDir may be long.
	dir, err := os.MkdirTemp("", "sl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "log")
}

func TestSyslogUnixgram(t *testing.T) {
	path := socketPath(t)
	rcv := unixgramReceiver(t, path)
	var el errLog
	s, err := NewSyslog(SyslogConfig{Address: "unixgram:" + path, Hostname: "mx1.example.net"}, el.add)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 26, 1, 2, 3, 0, time.UTC)
	rec := &opes.TransactionRecord{TraceID: "4ABCD12", QueueID: "4ABCD12", Start: start, Sender: "alice@example.org",
		Recipients: []opes.RecipientInfo{{Addr: "bob@example.net"}}, Size: 1234,
		Outcome:  opes.OutcomeInfo{Stage: "eom", Verdict: "reject", Code: 554},
		Services: []opes.ServiceInfo{{URI: "https://mx1.example.net/opes/svc/clamav", Action: "rejected"}}}
	before := time.Now().Add(-time.Second)
	Incidents{Next: s}.Report(&opes.TransactionRecord{TraceID: "notanincident", Outcome: opes.OutcomeInfo{Verdict: "accept"}})
	Incidents{Next: s}.Report(rec)
	m := parse5424(t, readDatagram(t, rcv))
	closeSink(t, s)

	if m.Pri != 2*8+4 { // facility mail, severity warning
		t.Errorf("PRI %d, want 20 (mail.warning)", m.Pri)
	}
	if m.Time.Before(before) || m.Time.After(time.Now().Add(time.Second)) {
		t.Errorf("TIMESTAMP %v is not now", m.Time)
	}
	if m.Host != "mx1.example.net" || m.App != DefaultSyslogTag || m.ProcID != strconv.Itoa(os.Getpid()) || m.MsgID != "reject" {
		t.Errorf("header %q %q %q %q", m.Host, m.App, m.ProcID, m.MsgID)
	}
	if m.SDID != SyslogSDID || m.Params["trace_id"] != "4ABCD12" || m.Params["queue_id"] != "4ABCD12" {
		t.Errorf("STRUCTURED-DATA %s %v", m.SDID, m.Params)
	}
	got := m.TraceRecord
	if got.TraceID != "4ABCD12" || !got.Start.Equal(start) || got.Outcome.Code != 554 || got.Size != 1234 ||
		len(got.Services) != 1 || got.Services[0].Action != "rejected" || got.Recipients[0].Addr != "bob@example.net" || m.Record.Truncated {
		t.Errorf("record %+v", got)
	}
	if errs := el.get(); len(errs) != 0 {
		t.Errorf("errors: %v", errs)
	}
}

// TestSyslogUDPOptionsAndTruncation sends over UDP with every option set,
// and a record far too long for one message: it arrives shortened, within
// the bound and still valid JSON; hostile values cannot break the header.
func TestSyslogUDPOptionsAndTruncation(t *testing.T) {
	rcv, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	var el errLog
	s, err := NewSyslog(SyslogConfig{Address: "udp:" + rcv.LocalAddr().String(), Facility: "local3", Tag: "opes-test",
		Hostname: "relay.example.org", MaxSize: 1024}, el.add)
	if err != nil {
		t.Fatal(err)
	}
	big := &opes.TransactionRecord{TraceID: `01J"x]\y`, Helo: "h\u00e9lo.example", Outcome: opes.OutcomeInfo{Stage: "eom", Verdict: "quarantine", Quarantine: "virus"}}
	for i := range 500 {
		big.Recipients = append(big.Recipients, opes.RecipientInfo{Addr: fmt.Sprintf("user%d@example.net", i)})
	}
	for i := range 40 {
		big.Services = append(big.Services, opes.ServiceInfo{URI: fmt.Sprintf("https://mx.example/opes/svc/s%d", i), Action: "analyzed"})
	}
	s.Report(big)
	s.Report(&opes.TransactionRecord{TraceID: "T2", Outcome: opes.OutcomeInfo{Stage: "rcpt", Verdict: "tempfail", Code: 451}})
	raw := readDatagram(t, rcv)
	m := parse5424(t, raw)
	m2 := parse5424(t, readDatagram(t, rcv))
	closeSink(t, s)

	if len(raw) > 1024 {
		t.Errorf("message is %d octets, over the 1024 bound", len(raw))
	}
	if m.Pri != 19*8+4 || m.App != "opes-test" || m.Host != "relay.example.org" || m.MsgID != "quarantine" {
		t.Errorf("header: PRI %d app %q host %q msgid %q", m.Pri, m.App, m.Host, m.MsgID)
	}
	if m.Params["trace_id"] != `01J"x]\y` || m.TraceRecord.TraceID != `01J"x]\y` {
		t.Errorf("trace id in SD %q, in MSG %q", m.Params["trace_id"], m.TraceRecord.TraceID)
	}
	r := m.Record
	if !r.Truncated || r.RecipientsOmitted == 0 || len(r.Recipients)+r.RecipientsOmitted != 500 ||
		len(r.Services)+r.ServicesOmitted != 40 || r.Outcome.Quarantine != "virus" || r.Helo != "h\u00e9lo.example" {
		t.Errorf("truncated record: truncated=%v kept %d+%d omitted, services %d+%d, helo %q",
			r.Truncated, len(r.Recipients), r.RecipientsOmitted, len(r.Services), r.ServicesOmitted, r.Helo)
	}
	for i, rc := range r.Recipients { // the first ones are kept, in order
		if rc.Addr != fmt.Sprintf("user%d@example.net", i) {
			t.Fatalf("recipient %d is %q", i, rc.Addr)
		}
	}
	if m2.Pri != 19*8+5 || m2.Params["trace_id"] != "T2" || m2.Record.Truncated {
		t.Errorf("tempfail record: PRI %d, %v, truncated %v", m2.Pri, m2.Params, m2.Record.Truncated)
	}
	if errs := el.get(); len(errs) != 0 {
		t.Errorf("errors: %v", errs)
	}
}

// TestSyslogTCPOctetCounting reads the stream as a receiver does (RFC
// 6587 §3.4.1), and checks that a receiver that closed the connection
// (a restart) loses no record: the next one goes on a new connection.
func TestSyslogTCPOctetCounting(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for range 4 {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	readFrame := func(r *bufio.Reader) []byte {
		t.Helper()
		n, err := r.ReadString(' ')
		if err != nil {
			t.Fatalf("read MSG-LEN: %v", err)
		}
		size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
		if err != nil || size <= 0 || size > 2048 {
			t.Fatalf("MSG-LEN %q", n)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	accept := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		select {
		case c := <-conns:
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			return c, bufio.NewReader(c)
		case <-time.After(5 * time.Second):
			t.Fatal("no connection")
		}
		return nil, nil
	}
	var el errLog
	s, err := NewSyslog(SyslogConfig{Address: "tcp:" + l.Addr().String(), Facility: "daemon"}, el.add)
	if err != nil {
		t.Fatal(err)
	}
	s.Report(&opes.TransactionRecord{TraceID: "A1", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	s.Report(&opes.TransactionRecord{TraceID: "A2", Outcome: opes.OutcomeInfo{Verdict: "quarantine"}})
	c1, r1 := accept()
	for _, want := range []string{"A1", "A2"} {
		m := parse5424(t, readFrame(r1))
		if m.Params["trace_id"] != want || m.Pri != 3*8+4 {
			t.Errorf("frame: trace %q PRI %d, want %s and 28", m.Params["trace_id"], m.Pri, want)
		}
	}
	_ = c1.Close() // the receiver restarts
	time.Sleep(100 * time.Millisecond)
	s.Report(&opes.TransactionRecord{TraceID: "A3", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	_, r2 := accept()
	if m := parse5424(t, readFrame(r2)); m.Params["trace_id"] != "A3" {
		t.Errorf("after the restart: trace %q", m.Params["trace_id"])
	}
	closeSink(t, s)
	if errs := el.get(); len(errs) != 0 {
		t.Errorf("errors: %v", errs)
	}
}

// TestSyslogNeverBlocksMail fills the queue while the syslog daemon does
// not read (a unix datagram socket holds only a few messages): Report
// must return at once, count the drops and say so, and the sink must
// drain once the daemon reads again.
func TestSyslogNeverBlocksMail(t *testing.T) {
	path := socketPath(t)
	rcv := unixgramReceiver(t, path)
	var el errLog
	s, err := NewSyslog(SyslogConfig{Address: "unixgram:" + path, Timeout: 5 * time.Second}, el.add)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range SyslogQueue + 100 {
		s.Report(&opes.TransactionRecord{TraceID: "x", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Report blocked for %v", d)
	}
	if n := s.Dropped(); n < 50 {
		t.Errorf("%d records dropped, want about 100 over the queue bound", n)
	}
	errs := el.get()
	if len(errs) == 0 || !strings.Contains(errs[0].Error(), "dropped") || !strings.Contains(errs[0].Error(), "queue") {
		t.Errorf("drops not reported: %v", errs)
	}
	if len(errs) > 2 {
		t.Errorf("%d error reports for one burst of drops: the log is flooded", len(errs))
	}
	// The daemon reads again: everything queued arrives.
	got := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			_ = rcv.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, _, err := rcv.ReadFrom(buf); err != nil {
				return
			}
			got++
		}
	}()
	closeSink(t, s)
	<-done
	if want := SyslogQueue + 100 - int(s.Dropped()); got != want {
		t.Errorf("%d records arrived, want %d (sent minus dropped)", got, want)
	}
}

// TestSyslogDaemonDownThenUp: records sent while nothing listens are
// dropped and reported; once the daemon is up they flow again.
func TestSyslogDaemonDownThenUp(t *testing.T) {
	path := socketPath(t)
	var el errLog
	s, err := NewSyslog(SyslogConfig{Address: "unixgram:" + path}, el.add)
	if err != nil {
		t.Fatal(err)
	}
	s.Report(&opes.TransactionRecord{TraceID: "lost", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	deadline := time.Now().Add(5 * time.Second)
	for s.Dropped() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.Dropped() != 1 {
		t.Fatalf("dropped %d, want 1", s.Dropped())
	}
	if errs := el.get(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "lost") || !errors.Is(errs[0], os.ErrNotExist) && !strings.Contains(errs[0].Error(), "connect") {
		t.Errorf("errors %v", errs)
	}
	rcv := unixgramReceiver(t, path)
	s.Report(&opes.TransactionRecord{TraceID: "found", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	if m := parse5424(t, readDatagram(t, rcv)); m.Params["trace_id"] != "found" {
		t.Errorf("trace %q", m.Params["trace_id"])
	}
	closeSink(t, s)
}

func TestSyslogConfigErrors(t *testing.T) {
	good := map[string][2]string{
		"":                     {"unixgram", "/dev/log"},
		"unixgram:/run/x.sock": {"unixgram", "/run/x.sock"},
		"udp:127.0.0.1:514":    {"udp", "127.0.0.1:514"},
		"tcp:[::1]:6514":       {"tcp", "[::1]:6514"},
		"tcp:syslog.example:1": {"tcp", "syslog.example:1"},
	}
	for in, want := range good {
		n, a, err := ParseSyslogAddress(in)
		if err != nil || n != want[0] || a != want[1] {
			t.Errorf("ParseSyslogAddress(%q) = %q %q %v", in, n, a, err)
		}
	}
	for _, in := range []string{"/dev/log", "unixgram:", "unixgram:dev/log", "udp:127.0.0.1", "udp:127.0.0.1:0",
		"tcp::514", "tcp:host:99999", "unix:/dev/log", "tls:host:6514"} {
		if _, _, err := ParseSyslogAddress(in); err == nil {
			t.Errorf("ParseSyslogAddress(%q) accepted", in)
		}
	}
	for in, want := range map[string]int{"": 2, "mail": 2, "LOCAL7": 23, "daemon": 3, "authpriv": 10} {
		if f, err := ParseSyslogFacility(in); err != nil || f != want {
			t.Errorf("facility %q = %d %v", in, f, err)
		}
	}
	if _, err := ParseSyslogFacility("local8"); err == nil {
		t.Error("facility local8 accepted")
	}
	for _, cfg := range []SyslogConfig{
		{Address: "udp:nope"},
		{Facility: "kernel"},
		{Tag: "opes milter"},
		{Tag: strings.Repeat("t", 49)},
		{Hostname: "mx\n1"},
		{MaxSize: 100},
		{MaxSize: 70000},
	} {
		if s, err := NewSyslog(cfg, nil); err == nil {
			_ = s.Close(context.Background())
			t.Errorf("NewSyslog(%+v) accepted", cfg)
		}
	}
}

// FuzzSyslogFormat: whatever the record holds, the message parses as
// RFC 5424 with one JSON record, within the bound.
func FuzzSyslogFormat(f *testing.F) {
	f.Add("4ABCD12", "helo", "a@b", "reject", 3)
	f.Add(`"]\`, "\xff\x00", "\u2028", "", 200)
	f.Fuzz(func(t *testing.T, trace, helo, addr, verdict string, n int) {
		s := &Syslog{facility: 2, tag: "t", hostname: "h", procID: "1", maxSize: 600}
		rec := &opes.TransactionRecord{TraceID: trace, QueueID: trace, Helo: helo, Sender: addr, Outcome: opes.OutcomeInfo{Verdict: verdict}}
		for range min(max(n, 0), 300) {
			rec.Recipients = append(rec.Recipients, opes.RecipientInfo{Addr: addr})
		}
		b, err := s.format(rec, time.Now())
		if err != nil {
			return // a record that cannot fit is an error, never a cut message
		}
		if len(b) > 600 {
			t.Fatalf("%d octets", len(b))
		}
		parse5424(t, b)
	})
}
