package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Sendmail without a milter relays a message to the sink with the right
// envelope, header and (dot-unstuffed) body, and logs through our syslog
// receiver.
func TestSendmailRelaysToSink(t *testing.T) {
	t.Parallel()
	Require(t)
	sink := StartSink(t)
	sm := StartSendmail(t, SendmailOptions{RelayTo: sink.Addr()})
	t.Logf("sendmail %s %s up in %v (token %s), dir %s", sm.Version(), sm.Addr(), sm.StartupTime(), sm.BannerToken(), sm.Dir())

	c := Dial(t, sm.Addr())
	if g := c.Greeting(); g.Code != 220 || !strings.Contains(g.Raw, sm.BannerToken()) || !strings.Contains(g.Raw, SendmailHost) {
		t.Fatalf("greeting = %s", g)
	}
	if r := c.Ehlo("client.example.test"); r.Code != 250 || !containsLine(r.Text(), "ENHANCEDSTATUSCODES") {
		t.Fatalf("EHLO = %q", r.Lines)
	}
	c.Quit()

	subject := fmt.Sprintf("sm-relay-%d", time.Now().UnixNano())
	rcpts := []string{"rcpt1@example.net", "rcpt2@example.net"}
	tr := SendMail(t, sm.Addr(), "sender@example.test", rcpts, testMessage(subject))
	t.Logf("session:\n%s", tr)
	if !tr.Accepted() || tr.Err != nil {
		t.Fatalf("message not accepted:\n%s", tr)
	}
	d := sink.WaitDump(t, HasHeader("Subject", subject), 10*time.Second)
	t.Logf("delivered:\n%s", d.Raw)
	if d.Mail != "sender@example.test" {
		t.Errorf("sink MAIL FROM = %q", d.Mail)
	}
	// Sendmail relays the recipients of one message in reverse order.
	if strings.Join(d.Rcpts, ",") != rcpts[1]+","+rcpts[0] {
		t.Errorf("sink RCPT TO = %q, want %q reversed", d.Rcpts, rcpts)
	}
	if h := d.HeaderLines(); len(h) == 0 || !strings.HasPrefix(h[0], "Received: from client.example.test") {
		t.Errorf("first header line = %q, want Sendmail's Received", h)
	}
	if body := string(d.Body()); body != "first line\n.line starting with a dot\n\nlast line\n" {
		t.Errorf("body = %q", body)
	}
	sm.WaitLog(t, "stat=Sent", 5*time.Second)
	t.Logf("queue: %s", sm.Queue())
	sm.Stop()
	t.Logf("sendmail stopped in %v", sm.StopTime())
	if pidAlive(sm.PID()) {
		t.Errorf("sendmail %d still alive after Stop", sm.PID())
	}
}

// A port taken between FreePort and Sendmail's bind makes StartSendmail
// retry on another port. Not parallel: it swaps pickPort.
func TestSendmailRetriesOnPortRace(t *testing.T) {
	Require(t, SendmailBinaries...)
	busyPort, picks := collidingPortPicks(t)
	t0 := time.Now()
	sm := StartSendmail(t, SendmailOptions{})
	calls := *picks
	t.Logf("sendmail %s up after %v and %d port picks", sm.Addr(), time.Since(t0), calls)
	if calls != 2 || strings.HasSuffix(sm.Addr(), fmt.Sprint(":", busyPort)) {
		t.Fatalf("calls=%d addr=%s busy=%d", calls, sm.Addr(), busyPort)
	}
	if !strings.Contains(sm.Log(), "Address already in use") {
		t.Errorf("no bind failure in the log:\n%s", sm.Log())
	}
}
