package servicetest

import (
	"encoding/base64"
	"strings"
)

// Part is one MIME body part: header lines joined by "\n" (sent as CRLF),
// the empty line, and content as given.
func Part(header, content string) string {
	return strings.ReplaceAll(header, "\n", "\r\n") + "\r\n\r\n" + content
}

// Multipart joins parts under boundary after a preamble, with the
// closing delimiter: the body of a multipart entity.
func Multipart(boundary string, parts ...string) string {
	var b strings.Builder
	b.WriteString("This is a MIME message.\r\n")
	for _, p := range parts {
		b.WriteString("--" + boundary + "\r\n" + p + "\r\n")
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

// Base64 is data in base64 as a mailer writes it: lines of 76
// characters, each ending in CRLF.
func Base64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return b.String() + s + "\r\n"
}

// WithAttachment is a message whose top-level header is header plus
// MIME-Version and a multipart/mixed Content-Type, and whose body is a
// short text part and data as the attachment "x.com" in base64: what a
// scanner must look inside to find, say, the EICAR test file.
func WithAttachment(header [][2]string, data []byte) ([][2]string, string) {
	h := append(append([][2]string{}, header...),
		[2]string{"MIME-Version", " 1.0"},
		[2]string{"Content-Type", " multipart/mixed; boundary=\"B\""})
	body := "--B\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n" +
		"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"x.com\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString(data) + "\r\n--B--\r\n"
	return h, body
}
