package load

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
)

// Field is one header field as the MTA passes it to a milter: the name,
// and the value without the space after the colon.
type Field struct{ Name, Value string }

// Message is a message split the way the milter protocol carries it:
// header fields one by one, then the body with CRLF line ends.
type Message struct {
	Name   string
	Header []Field
	Body   []byte
}

// Size is the message's size on the wire in octets (header and body).
func (m *Message) Size() int {
	n := 2 + len(m.Body)
	for _, f := range m.Header {
		n += len(f.Name) + 2 + len(f.Value) + 2
	}
	return n
}

func baseHeader(subject, contentType string) []Field {
	h := []Field{
		{"Received", "from client.example.org (client.example.org [198.51.100.7]) by mx.bench.test with ESMTP id 4QX1Y2; Wed, 25 Nov 2026 12:00:00 +0000"},
		{"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
		{"From", "Alice Example <alice@example.org>"},
		{"To", "Bob Example <bob@example.net>"},
		{"Subject", subject},
		{"Message-ID", "<bench.4QX1Y2@example.org>"},
		{"MIME-Version", "1.0"},
		{"Content-Type", contentType},
	}
	return h
}

// text returns about n octets of readable text in CRLF lines of at most
// 76 characters.
func text(n int, seed uint64) []byte {
	words := strings.Fields("the quick brown fox jumps over a lazy dog while OPES processors trace every service that acted on the message and mail flows through Postfix to the sink")
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var b bytes.Buffer
	line := 0
	for b.Len() < n {
		w := words[r.IntN(len(words))]
		if line+len(w)+1 > 76 {
			b.WriteString("\r\n")
			line = 0
		} else if line > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// base64Lines encodes data as base64 in CRLF lines of 76 characters, the
// way MUAs send attachments.
func base64Lines(data []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(data)
	var b bytes.Buffer
	for len(enc) > 76 {
		b.WriteString(enc[:76])
		b.WriteString("\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc)
	b.WriteString("\r\n")
	return b.Bytes()
}

// binary returns n pseudo-random octets behind the given magic prefix,
// so that type sniffing sees a real file type (PDF, PNG), not an
// executable.
func binary(n int, magic string, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, ^seed))
	b := make([]byte, n)
	copy(b, magic)
	for i := len(magic); i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Plain returns a text/plain message whose body is about size octets
// (the 10 KiB message of the benchmark is Plain(10 << 10)).
func Plain(size int) *Message {
	return &Message{
		Name:   fmt.Sprintf("plain-%dKiB", size>>10),
		Header: baseHeader("benchmark plain message", "text/plain; charset=us-ascii"),
		Body:   text(size, 1),
	}
}

// Multipart returns a multipart/mixed message: a multipart/alternative
// (text and HTML) followed by two base64 attachments, a PDF and a PNG.
// attach is the decoded size of the two attachments together; Multipart(170<<10)
// is the ~250 KiB message of the benchmark, a larger attach gives the
// big message of the memory test.
func Multipart(attach int) *Message {
	const outer, inner = "=_bench_outer_7f3a", "=_bench_alt_41c9"
	var b bytes.Buffer
	w := func(s string) { b.WriteString(s) }
	w("This is a multi-part message in MIME format.\r\n")
	w("--" + outer + "\r\n")
	w("Content-Type: multipart/alternative; boundary=\"" + inner + "\"\r\n\r\n")
	w("--" + inner + "\r\n")
	w("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
	b.Write(text(6<<10, 2))
	w("--" + inner + "\r\n")
	w("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
	w("<html><body><p>\r\n")
	b.Write(text(12<<10, 3))
	w("</p></body></html>\r\n")
	w("--" + inner + "--\r\n")
	pdf, png := attach*2/3, attach/3
	w("--" + outer + "\r\n")
	w("Content-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n")
	w("Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n")
	b.Write(base64Lines(binary(pdf, "%PDF-1.7\n", 4)))
	w("--" + outer + "\r\n")
	w("Content-Type: image/png; name=\"photo.png\"\r\nContent-Transfer-Encoding: base64\r\n")
	w("Content-Disposition: attachment; filename=\"photo.png\"\r\n\r\n")
	b.Write(base64Lines(binary(png, "\x89PNG\r\n\x1a\n", 5)))
	w("--" + outer + "--\r\n")
	return &Message{
		Name:   fmt.Sprintf("multipart-%dKiB", (b.Len()+1023)>>10),
		Header: baseHeader("benchmark multipart message", "multipart/mixed; boundary=\""+outer+"\""),
		Body:   b.Bytes(),
	}
}
