package spamd

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

func TestEnvelopeLines(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		conn   *opes.Connection
		sender *opes.Address
		qid    string
		want   string
	}{
		{"plain", &opes.Connection{Hostname: "mail.example.org", Addr: netip.MustParseAddr("192.0.2.25"), Helo: "mail.example.org", MTAName: "mx.example.net"},
			&opes.Address{Addr: "alice@example.org"}, "4XyZ1Q",
			"Return-Path: <alice@example.org>\r\n" +
				"Received: from mail.example.org (mail.example.org [192.0.2.25])\r\n" +
				"\tby mx.example.net (opes-milter) with ESMTP id 4XyZ1Q;\r\n\tWed, 25 Nov 2026 12:00:00 +0000\r\n"},
		{"null sender, no rDNS, TLS and AUTH, v6", &opes.Connection{Hostname: "[2001:db8::1]", Addr: netip.MustParseAddr("2001:db8::1"), Helo: "[IPv6:2001:db8::1]",
			TLSVersion: "TLSv1.3", AuthUser: "alice"},
			&opes.Address{}, "",
			"Return-Path: <>\r\n" +
				"Received: from [IPv6:2001:db8::1] (unknown [2001:db8::1])\r\n" +
				"\tby localhost (opes-milter) with ESMTPSA;\r\n\tWed, 25 Nov 2026 12:00:00 +0000\r\n"},
		{"v4-mapped address, empty HELO", &opes.Connection{Addr: netip.MustParseAddr("::ffff:192.0.2.7")},
			nil, "",
			"Received: from unknown (unknown [192.0.2.7])\r\n" +
				"\tby localhost (opes-milter) with ESMTP;\r\n\tWed, 25 Nov 2026 12:00:00 +0000\r\n"},
		// A HELO that tries to forge a second, trusted hop or a new
		// header line is flattened into one token.
		{"hostile", &opes.Connection{Hostname: "x (evil)", Addr: netip.MustParseAddr("192.0.2.9"),
			Helo: "a (b [127.0.0.1])\r\n\tby trusted; x\x00" + strings.Repeat("y", 300)},
			&opes.Address{Addr: "a b@example.org"}, "Q\r\nX: y",
			"Received: from a__b__127.0.0.1_____by_trusted__x_" + strings.Repeat("y", 255-34) + " (x__evil_ [192.0.2.9])\r\n" +
				"\tby localhost (opes-milter) with ESMTP id Q__X:_y;\r\n\tWed, 25 Nov 2026 12:00:00 +0000\r\n"},
		{"bracket tricks", &opes.Connection{Hostname: "[x]y]", Addr: netip.MustParseAddr("192.0.2.9"), Helo: "[[127.0.0.1]]"},
			nil, "",
			"Received: from [_127.0.0.1_] (unknown [192.0.2.9])\r\n" +
				"\tby localhost (opes-milter) with ESMTP;\r\n\tWed, 25 Nov 2026 12:00:00 +0000\r\n"},
		{"unix client", &opes.Connection{Family: "unix", Helo: "localhost"}, &opes.Address{Addr: "root@localhost"}, "",
			"Return-Path: <root@localhost>\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := &opes.Transaction{Conn: tt.conn, Sender: tt.sender, QueueID: tt.qid}
			if got := envelopeLines(tx, now); got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestStatusValue(t *testing.T) {
	short := &result{Spam: true, Score: 7.46, Required: 5, Symbols: []string{"GTUBE", "NO_RELAYS"}}
	if got, want := statusValue(short), "Yes, score=7.5 required=5.0 tests=GTUBE,NO_RELAYS"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := statusValue(&result{Score: -0.1, Required: 5}), "No, score=-0.1 required=5.0 tests=none"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	var many []string
	for i := 0; i < 300; i++ {
		many = append(many, "SOME_LONG_RULE_NAME_"+strings.Repeat("X", i%7))
	}
	v := statusValue(&result{Spam: true, Score: 12, Required: 5, Symbols: many})
	lines := strings.Split(v, "\r\n\t")
	if len(lines) != 2 || lines[0] != "Yes, score=12.0 required=5.0" {
		t.Fatalf("lines %q", lines)
	}
	if l := len(lines[1]) + 1; l > maxLine || l < maxLine-maxSymbolLen || !strings.HasSuffix(lines[1], ",...") {
		t.Errorf("tests line of %d octets: %q", l, lines[1])
	}
	// The value goes through the header API unchanged.
	h := opes.NewHeader()
	if err := h.Add(FieldStatus, v); err != nil {
		t.Fatal(err)
	}
}

func TestMarkSubject(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "[SPAM]"},
		{"hello", "[SPAM] hello"},
		{"[spam] hello", "[spam] hello"},
		{"=?UTF-8?Q?[SPAM]_hall=C3=B6?=", "=?UTF-8?Q?[SPAM]_hall=C3=B6?="},
	}
	for _, tt := range tests {
		p, _ := opes.NewProcessor(&opes.Policy{System: opes.System{URI: sysURI}}, nil)
		s := p.NewSession()
		if tt.in != "" {
			s.Header("Subject", " "+tt.in)
		}
		h := s.Transaction().Header
		if _, err := h.MarkSubject("[SPAM]"); err != nil {
			t.Fatal(err)
		}
		if got := h.Get("Subject"); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
		}
		s.Close()
	}
}

// TestSpamdSeesEnvelope: with the synthetic lines SpamAssassin finds a
// relay and an envelope sender; without them it would report NO_RELAYS
// and NO_RECEIVED on every message.
func TestSpamdSeesEnvelope(t *testing.T) {
	tcp, _ := needSpamd(t)
	s := mustNew(t, opts(tcp, "add_header = true"))
	tx := gtubeMessage().tx(t, s)
	res, err := s.check(context.Background(), envelopeLines(tx, time.Now())+opes.FormatHeader(tx.Header.Fields())+"\r\n", tx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(res.Symbols, "NO_RELAYS") || slices.Contains(res.Symbols, "NO_RECEIVED") {
		t.Errorf("spamd did not see the synthetic hop: %v", res.Symbols)
	}
	bare, err := s.check(context.Background(), opes.FormatHeader(tx.Header.Fields())+"\r\n", tx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(bare.Symbols, "NO_RELAYS") {
		t.Errorf("control without the hop lacks NO_RELAYS: %v", bare.Symbols)
	}
}
