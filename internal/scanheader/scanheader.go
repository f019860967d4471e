// Package scanheader renders a message header for an outside content
// scanner (clamd, an ICAP server): the header block as sent on the wire,
// with a space after every field name's colon.
package scanheader

import (
	"strings"

	"github.com/opesmilter/opes-milter/opes"
)

// Format renders fields as CRLF lines, ending with the empty line.
// Every value gets a space after the colon: scanners' MIME parsers are not
// all as lenient as mail clients (ClamAV 1.4 does not recognise
// "Content-Type:multipart/mixed"), so without it a sender could hide an
// attachment from the scan by leaving the space out. Bare LF line ends
// inside a folded value become CRLF.
func Format(fields []opes.HeaderField) string {
	var b strings.Builder
	for _, f := range fields {
		v := strings.ReplaceAll(strings.ReplaceAll(f.Value, "\r\n", "\n"), "\n", "\r\n")
		b.WriteString(f.Name)
		b.WriteByte(':')
		if v == "" || (v[0] != ' ' && v[0] != '\t') {
			b.WriteByte(' ')
		}
		b.WriteString(v)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}
