package ndr

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func buildSample(t *testing.T) []byte {
	t.Helper()
	data, err := Build(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestRelaySendsReportUnchanged(t *testing.T) {
	srv := startRelay(t, nil)
	data := buildSample(t)
	r := &Relay{Addr: srv.addr, HeloName: "mx1.example.net", Timeout: 5 * time.Second}
	if err := r.Send(context.Background(), "", []string{"alice@example.org"}, data); err != nil {
		t.Fatal(err)
	}
	msgs := srv.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages arrived", len(msgs))
	}
	m := msgs[0]
	if m.From != "" || len(m.To) != 1 || m.To[0] != "alice@example.org" {
		t.Errorf("envelope MAIL FROM:<%s> RCPT TO:%v", m.From, m.To)
	}
	// RFC 3461 §6.1: a report's RCPT may carry NOTIFY, and only NEVER.
	if len(m.Notify[0]) != 1 || m.Notify[0][0] != smtp.DSNNotifyNever {
		t.Errorf("NOTIFY %v", m.Notify[0])
	}
	if !bytes.Equal(m.Data, data) {
		t.Errorf("the relay got other bytes than were built:\n%s", m.Data)
	}
	// A report with a leading dot on a line survives dot-stuffing too.
	dotted := append([]byte(nil), data...)
	dotted = append(dotted, ".\r\n..x\r\n"...)
	if err := r.Send(context.Background(), "", []string{"alice@example.org"}, dotted); err != nil {
		t.Fatal(err)
	}
	if got := srv.messages()[1].Data; !bytes.Equal(got, dotted) {
		t.Errorf("dot-stuffed data changed: %q", got[len(got)-20:])
	}
}

func TestRelayNonNullSenderHasNoNotify(t *testing.T) {
	srv := startRelay(t, nil)
	r := &Relay{Addr: srv.addr, Timeout: 5 * time.Second}
	if err := r.Send(context.Background(), "postmaster@mx1.example.net", []string{"admin@example.net"}, []byte("Subject: x\r\n\r\nno final newline")); err != nil {
		t.Fatal(err)
	}
	m := srv.messages()[0]
	if m.From != "postmaster@mx1.example.net" || m.Notify[0] != nil {
		t.Errorf("from %q notify %v", m.From, m.Notify[0])
	}
	if string(m.Data) != "Subject: x\r\n\r\nno final newline\r\n" {
		t.Errorf("data %q", m.Data)
	}
}

func TestRelayErrorClassification(t *testing.T) {
	srv := startRelay(t, nil)
	data := buildSample(t)
	r := &Relay{Addr: srv.addr, Timeout: 5 * time.Second}
	for _, tc := range []struct {
		answer    answer
		step      string
		permanent bool
	}{
		{answerTempRcpt, "rcpt", false},
		{answerPermRcpt, "rcpt", true},
		{answerTempData, "data", false},
		{answerPermData, "data", true},
	} {
		srv.setAnswer(tc.answer)
		err := r.Send(context.Background(), "", []string{"alice@example.org"}, data)
		var se *SendError
		if !errors.As(err, &se) || se.Step != tc.step || IsPermanent(err) != tc.permanent {
			t.Errorf("answer %d: %v (permanent %v), want step %s permanent %v", tc.answer, err, IsPermanent(err), tc.step, tc.permanent)
		}
	}
	if n := len(srv.messages()); n != 0 {
		t.Errorf("%d messages accepted while refusing", n)
	}

	// Nothing listening: temporary.
	srv.stop()
	err := r.Send(context.Background(), "", []string{"alice@example.org"}, data)
	if err == nil || IsPermanent(err) {
		t.Errorf("relay down: %v, permanent %v", err, IsPermanent(err))
	}

	// Addresses no SMTP command can carry: permanent, nothing is sent.
	err = r.Send(context.Background(), "", []string{"a@b\r\nRCPT TO:<c@d>"}, data)
	if !IsPermanent(err) {
		t.Errorf("CRLF address: %v", err)
	}
	if !IsPermanent(&smtp.SMTPError{Code: 554}) || IsPermanent(&smtp.SMTPError{Code: 421}) || IsPermanent(errors.New("x")) {
		t.Error("IsPermanent on go-smtp errors")
	}
}

// A relay that accepts the connection and then says nothing must not hold
// the worker: the timeout and the context both end the attempt, as a
// temporary error.
func TestRelayTimeoutAndCancel(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent: never greets
		}
	}()
	data := buildSample(t)

	r := &Relay{Addr: l.Addr().String(), Timeout: 300 * time.Millisecond}
	start := time.Now()
	err = r.Send(context.Background(), "", []string{"alice@example.org"}, data)
	if err == nil || IsPermanent(err) || time.Since(start) > 5*time.Second {
		t.Errorf("silent relay: %v after %v", err, time.Since(start))
	}

	r.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	err = r.Send(ctx, "", []string{"alice@example.org"}, data)
	if err == nil || IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("cancelled: %v after %v", err, time.Since(start))
	}
}

func TestRelaySTARTTLS(t *testing.T) {
	serverTLS, clientTLS := selfSigned(t)
	srv := startRelay(t, serverTLS)
	data := buildSample(t)
	r := &Relay{Addr: srv.addr, HeloName: "mx1.example.net", Timeout: 5 * time.Second, TLS: clientTLS}
	if err := r.Send(context.Background(), "", []string{"alice@example.org"}, data); err != nil {
		t.Fatal(err)
	}
	if m := srv.messages(); len(m) != 1 || !m[0].TLS || !bytes.Equal(m[0].Data, data) {
		t.Fatalf("messages %d, TLS %v", len(m), len(m) == 1 && m[0].TLS)
	}

	// A certificate we do not trust: temporary (configuration), not sent.
	_, otherClient := selfSigned(t)
	r.TLS = otherClient
	if err := r.Send(context.Background(), "", []string{"alice@example.org"}, data); err == nil || IsPermanent(err) {
		t.Errorf("untrusted certificate: %v", err)
	}

	// TLS required but not offered: never fall back to clear text.
	plain := startRelay(t, nil)
	r = &Relay{Addr: plain.addr, Timeout: 5 * time.Second, TLS: clientTLS}
	if err := r.Send(context.Background(), "", []string{"alice@example.org"}, data); err == nil || IsPermanent(err) {
		t.Errorf("no STARTTLS: %v", err)
	}
	if n := len(plain.messages()); n != 0 {
		t.Errorf("sent in clear text: %d", n)
	}
}

func TestRelaySMTPUTF8ReversePath(t *testing.T) {
	srv := startRelay(t, nil)
	r := sampleReport()
	r.ReversePath = "<ålice@exämple.org>"
	data, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	relay := &Relay{Addr: srv.addr, Timeout: 5 * time.Second}
	if err := relay.Send(context.Background(), "", []string{ReturnPath(r.ReversePath)}, data); err != nil {
		t.Fatal(err)
	}
	if m := srv.messages(); len(m) != 1 || m[0].To[0] != "ålice@exämple.org" || !bytes.Equal(m[0].Data, data) {
		t.Fatalf("arrived %+v", m)
	}
}
