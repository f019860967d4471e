package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func testMessage(subject string) []byte {
	return []byte("From: Sender <sender@example.test>\n" +
		"To: rcpt1@example.net, rcpt2@example.net\n" +
		"Subject: " + subject + "\n" +
		"Message-ID: <" + subject + "@example.test>\n" +
		"\n" +
		"first line\n" +
		".line starting with a dot\n" +
		"\n" +
		"last line\n")
}

// Postfix without a milter relays a message to the sink with the right
// envelope, header and (dot-unstuffed) body.
func TestPostfixRelaysToSink(t *testing.T) {
	t.Parallel()
	Require(t)
	t0 := time.Now()
	sink := StartSink(t)
	pf := StartPostfix(t, PostfixOptions{RelayTo: sink.Addr()})
	t.Logf("sink %s up in %v; postfix %s up in %v (token %s)", sink.Addr(), sink.StartupTime(),
		pf.Addr(), pf.StartupTime(), pf.BannerToken())

	// A session by hand first: the EHLO reply from real Postfix is multi-line.
	c := Dial(t, pf.Addr())
	if g := c.Greeting(); g.Code != 220 || !strings.Contains(g.Raw, pf.BannerToken()) {
		t.Fatalf("greeting = %s", g)
	}
	ehlo := c.Ehlo("client.example.test")
	if ehlo.Code != 250 || len(ehlo.Lines) < 3 || !strings.HasPrefix(ehlo.Lines[0], "250-mta.example.test") ||
		!strings.HasPrefix(ehlo.Lines[len(ehlo.Lines)-1], "250 ") {
		t.Fatalf("EHLO reply = %q", ehlo.Raw)
	}
	if !containsLine(ehlo.Text(), "PIPELINING") || !containsLine(ehlo.Text(), "ENHANCEDSTATUSCODES") {
		t.Errorf("EHLO keywords %q lack PIPELINING/ENHANCEDSTATUSCODES", ehlo.Text())
	}
	if r := c.Cmd("NOOP"); r.Code != 250 {
		t.Errorf("NOOP = %s", r)
	}
	c.Quit()

	subject := fmt.Sprintf("harness-relay-%d", time.Now().UnixNano())
	rcpts := []string{"rcpt1@example.net", "rcpt2@example.net"}
	tr := SendMail(t, pf.Addr(), "sender@example.test", rcpts, testMessage(subject))
	if !tr.Accepted() || tr.Err != nil {
		t.Fatalf("message not accepted:\n%s", tr)
	}
	for i, r := range tr.Replies("RCPT") {
		if r.Code != 250 {
			t.Errorf("RCPT %d = %s", i, r)
		}
	}
	t.Logf("session:\n%s", tr)

	d := sink.WaitDump(t, HasHeader("Subject", subject), 5*time.Second)
	t.Logf("delivered to the sink %v after start", time.Since(t0))
	if d.Mail != "sender@example.test" {
		t.Errorf("sink MAIL FROM = %q (params %q)", d.Mail, d.MailParams)
	}
	if strings.Join(d.Rcpts, ",") != strings.Join(rcpts, ",") {
		t.Errorf("sink RCPT TO = %q, want %q", d.Rcpts, rcpts)
	}
	if d.ClientAddr != "127.0.0.1" || d.Helo != "mta.example.test" {
		t.Errorf("sink client = %q helo = %q", d.ClientAddr, d.Helo)
	}
	if got := d.Header().Get("Subject"); got != subject {
		t.Errorf("Subject = %q", got)
	}
	if h := d.HeaderLines(); len(h) == 0 || !strings.HasPrefix(h[0], "Received: from client.example.test") {
		t.Errorf("first header line = %q, want Postfix's Received", h)
	}
	if body := string(d.Body()); body != "first line\n.line starting with a dot\n\nlast line\n" {
		t.Errorf("body = %q", body)
	}
	if n := len(sink.Messages()); n != 1 {
		t.Errorf("sink has %d messages, want 1", n)
	}
	pf.WaitLog(t, "status=sent", 5*time.Second)
	if !pf.QueueEmpty() {
		t.Errorf("queue not empty:\n%s", pf.Queue())
	}
	pf.Stop()
	t.Logf("postfix stopped in %v", pf.StopTime())
	if pidAlive(pf.MasterPID()) {
		t.Errorf("master %d still alive after Stop", pf.MasterPID())
	}
}

func containsLine(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

// With milter_default_action = tempfail and no milter listening, Postfix
// answers 451 4.7.1 and nothing reaches the sink.
func TestPostfixMilterDownTempfails(t *testing.T) {
	t.Parallel()
	Require(t)
	sink := StartSink(t)
	milterPort := FreePort(t) // nothing listens there
	milter := fmt.Sprintf("inet:127.0.0.1:%d", milterPort)
	pf := StartPostfix(t, PostfixOptions{Milter: milter, DefaultAction: "tempfail", RelayTo: sink.Addr()})
	t.Logf("postfix %s up in %v, milter %s (down)", pf.Addr(), pf.StartupTime(), milter)

	tr := SendMail(t, pf.Addr(), "sender@example.test", []string{"rcpt@example.net"}, testMessage("must-not-arrive"))
	t.Logf("session:\n%s", tr)
	if tr.Accepted() {
		t.Fatalf("message accepted although the milter is down")
	}
	var tempfail *Reply
	for _, r := range tr.All() {
		if r.Class() == 2 && strings.HasPrefix(r.Raw, "250 2.1.") {
			t.Errorf("envelope command accepted: %s", r)
		}
		if r.Code == 451 && tempfail == nil {
			r := r
			tempfail = &r
		}
	}
	if tempfail == nil {
		t.Fatalf("no 451 reply in the session")
	}
	if want := "451 4.7.1 Service unavailable - try again later"; tempfail.Lines[0] != want {
		t.Errorf("tempfail reply = %q, want %q", tempfail.Lines[0], want)
	}
	pf.WaitLog(t, fmt.Sprintf("127.0.0.1:%d", milterPort), 5*time.Second)
	if !pf.QueueEmpty() {
		t.Errorf("queue not empty:\n%s", pf.Queue())
	}
	if n := len(sink.Messages()); n != 0 {
		t.Errorf("sink got %d message(s)", n)
	}
}

func TestReadReplyMultiline(t *testing.T) {
	in := "250-mta.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n" +
		"550-5.7.1 rejected by OPES service svc1\r\n550-5.7.1 OPES-Via: http://opes.example/svc1\r\n550 5.7.1 OPES-Trace: id=42\r\n" +
		"220 single line\r\n" +
		"250\r\n" +
		"354 End data with <CR><LF>.<CR><LF>\n" // LF only
	reps, err := ParseReplies(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 5 {
		t.Fatalf("got %d replies: %v", len(reps), reps)
	}
	ehlo := reps[0]
	if ehlo.Code != 250 || len(ehlo.Lines) != 4 || !ehlo.Multiline() {
		t.Errorf("EHLO = %+v", ehlo)
	}
	if got := strings.Join(ehlo.Text(), ","); got != "mta.example.test,PIPELINING,SIZE 10240000,8BITMIME" {
		t.Errorf("EHLO text = %q", got)
	}
	if ehlo.Raw != "250-mta.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n" {
		t.Errorf("EHLO raw = %q", ehlo.Raw)
	}
	rej := reps[1]
	if rej.Code != 550 || len(rej.Lines) != 3 || rej.Lines[0] != "550-5.7.1 rejected by OPES service svc1" ||
		rej.Lines[2] != "550 5.7.1 OPES-Trace: id=42" {
		t.Errorf("550 = %+v", rej)
	}
	n := 0
	for _, l := range rej.Lines {
		if strings.HasPrefix(l, "550-5.7.1 ") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("want 2 continuation lines, got %d", n)
	}
	if reps[2].Code != 220 || reps[2].Multiline() || reps[2].Text()[0] != "single line" {
		t.Errorf("220 = %+v", reps[2])
	}
	if reps[3].Code != 250 || len(reps[3].Lines) != 1 || reps[3].Text()[0] != "" {
		t.Errorf("bare 250 = %+v", reps[3])
	}
	if reps[4].Code != 354 || reps[4].Lines[0] != "354 End data with <CR><LF>.<CR><LF>" {
		t.Errorf("354 = %+v", reps[4])
	}

	for _, bad := range []string{
		"250-a\r\n251 b\r\n", // code changes
		"25\r\n",             // too short
		"abc x\r\n",          // not a code
		"250_x\r\n",          // bad separator
		"250-a\r\n250-b\r\n", // truncated
	} {
		_, err := ReadReply(bufio.NewReader(strings.NewReader(bad)))
		if err == nil {
			t.Errorf("%q: no error", bad)
		}
		if strings.HasSuffix(bad, "250-b\r\n") {
			if err == nil || errors.Is(err, ErrMalformedReply) {
				t.Errorf("%q: err = %v, want unexpected EOF", bad, err)
			}
		} else if !errors.Is(err, ErrMalformedReply) {
			t.Errorf("%q: err = %v, want ErrMalformedReply", bad, err)
		}
	}
}

func TestEncodeData(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a\nb", "a\r\nb\r\n.\r\n"},
		{"a\r\n.b\n..c\n\n", "a\r\n..b\r\n...c\r\n\r\n.\r\n"},
		{".", "..\r\n.\r\n"},
		{"", ".\r\n"},
	} {
		if got := string(EncodeData([]byte(c.in))); got != c.want {
			t.Errorf("EncodeData(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestParseDump(t *testing.T) {
	raw := "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: mta.example.test\n" +
		"X-Mail-Args: <a@x.test> SIZE=42 BODY=8BITMIME\nX-Rcpt-Args: <b@y.test>\nX-Rcpt-Args: <c@y.test> NOTIFY=NEVER\n" +
		"Received: from mta.example.test ([127.0.0.1])\n\tby sink-x.test (smtp-sink) with ESMTP id 42223059;\n" +
		"\tWed, 25 Nov 2026 21:56:37 +0000 (UTC)\n" +
		"Received: by mta.example.test (Postfix)\nSubject: hi\n\nbody\n.dot\n\n"
	d := ParseDump([]byte(raw))
	if d.Mail != "a@x.test" || strings.Join(d.MailParams, " ") != "SIZE=42 BODY=8BITMIME" {
		t.Errorf("mail = %q %q", d.Mail, d.MailParams)
	}
	if strings.Join(d.Rcpts, ",") != "b@y.test,c@y.test" || len(d.RcptParams[0]) != 0 || d.RcptParams[1][0] != "NOTIFY=NEVER" {
		t.Errorf("rcpts = %q %q", d.Rcpts, d.RcptParams)
	}
	if string(d.Message) != "Received: by mta.example.test (Postfix)\nSubject: hi\n\nbody\n.dot\n" {
		t.Errorf("message = %q", d.Message)
	}
	if d.Header().Get("Subject") != "hi" || string(d.Body()) != "body\n.dot\n" {
		t.Errorf("header/body = %v %q", d.Header(), d.Body())
	}
}

// A port taken between FreePort and the daemon's bind makes the Start
// functions retry on another port. Not parallel: it swaps pickPort.
func TestStartRetriesOnPortRace(t *testing.T) {
	Require(t)
	busyPort, picks := collidingPortPicks(t)
	sink := StartSink(t)
	pf := StartPostfix(t, PostfixOptions{RelayTo: sink.Addr()})
	if calls := *picks; calls != 4 || sink.Port() == busyPort || strings.HasSuffix(pf.Addr(), fmt.Sprint(":", busyPort)) {
		t.Fatalf("calls=%d sink=%s postfix=%s busy=%d", calls, sink.Addr(), pf.Addr(), busyPort)
	}
	t.Logf("sink %s up in %v, postfix %s up in %v, after one collision each", sink.Addr(), sink.StartupTime(), pf.Addr(), pf.StartupTime())
	tr := SendMail(t, pf.Addr(), "a@example.test", []string{"b@example.net"}, testMessage("race"))
	if !tr.Accepted() {
		t.Fatalf("not accepted:\n%s", tr)
	}
	sink.WaitDump(t, HasHeader("Subject", "race"), 5*time.Second)
}

// collidingPortPicks makes every odd pickPort call (the first, the third,
// ...) return a port a listener holds, so that each Start function hits
// the race once; it returns that port and the count of picks. At cleanup
// pickPort is restored and the port released. A test using it cannot be
// parallel.
func collidingPortPicks(t *testing.T) (busyPort int, picks *int) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busyPort = busy.Addr().(*net.TCPAddr).Port
	picks = new(int)
	pickPort = func() (int, error) {
		*picks++
		if *picks%2 == 1 {
			return busyPort, nil
		}
		return freePort()
	}
	t.Cleanup(func() {
		pickPort = freePort
		busy.Close()
	})
	return busyPort, picks
}

// Without RelayTo, Postfix accepts the message and keeps it in its queue.
// Extra main.cf lines override the defaults.
func TestPostfixWithoutRelayQueuesAndExtra(t *testing.T) {
	t.Parallel()
	Require(t)
	pf := StartPostfix(t, PostfixOptions{Extra: map[string]string{"message_size_limit": "123456"}})
	c := Dial(t, pf.Addr())
	if r := c.Ehlo("client.example.test"); !containsLine(r.Text(), "SIZE 123456") {
		t.Errorf("Extra not applied, EHLO = %q", r.Lines)
	}
	if r := c.MailFrom("a@example.test", "SIZE=100"); r.Code != 250 {
		t.Fatalf("MAIL = %s", r)
	}
	if r := c.RcptTo("b@example.net"); r.Code != 250 {
		t.Fatalf("RCPT = %s", r)
	}
	r := c.Data(testMessage("queued"))
	if r.Code != 250 || !strings.Contains(r.Raw, "queued as ") {
		t.Fatalf("end of data = %s", r)
	}
	id := strings.TrimSpace(r.Raw[strings.Index(r.Raw, "queued as ")+len("queued as "):])
	c.Quit()
	pf.WaitLog(t, id+": to=<b@example.net>", 5*time.Second)
	if q := pf.Queue(); !strings.Contains(q, id) || !strings.Contains(q, "b@example.net") {
		t.Errorf("queue lacks %s:\n%s", id, q)
	}
}
