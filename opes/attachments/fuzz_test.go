package attachments

import (
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
)

// FuzzScan feeds arbitrary bodies under a multipart header: the walk must
// end without a panic and give printable reasons.
func FuzzScan(f *testing.F) {
	f.Add("--b1\r\nContent-Type: text/plain\r\n\r\nx\r\n--b1--\r\n")
	f.Add(nested(5).body)
	f.Add(mixed("b1", servicetest.Part("Content-Type: message/rfc822", "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n")).body)
	f.Add(mixed("b1", attachment("a.zip", "application/zip", makeZip(f, zipEntry{name: "a.txt", data: "x"}))).body)
	s, err := New(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		m := msg{header: [][2]string{{"Content-Type", `multipart/mixed; boundary="b1"`}}, body: body}
		fd, err := s.(*Service).Scan(ctx, m.tx(t))
		if err != nil {
			t.Fatalf("Scan: %v", err)
		}
		if fd != nil && strings.ContainsFunc(fd.String(), func(r rune) bool { return r < 0x20 || r > 0x7e }) {
			t.Errorf("reason %q is not printable ASCII", fd)
		}
	})
}

// FuzzReplace checks the replace action end to end: whatever the body,
// a delivered body scans clean.
func FuzzReplace(f *testing.F) {
	exe := attachment("setup.exe", "application/octet-stream", []byte("MZ"))
	f.Add(mixed("b1", text, exe).body)
	f.Add(mixed("b1", servicetest.Part("Content-Type: multipart/alternative; boundary=\"b1\"", servicetest.Multipart("b1", text, exe))).body)
	f.Add("--b1\r\n--b1\r\nContent-Type: text/plain; name=a.exe\r\n\r\n--b1--\r\n")
	svc := servicetest.MustNew(f, New, "[options]\naction = \"replace\"\n")
	f.Fuzz(func(t *testing.T, body string) {
		m := msg{header: [][2]string{{"Content-Type", `multipart/mixed; boundary="b1"`}}, body: body}
		o, out := deliver(t, processor(t, `action = "replace"`), m)
		if o.Kind != opes.Continue {
			return
		}
		fd, err := svc.(*Service).Scan(ctx, msg{header: m.header, body: out}.tx(t))
		if err != nil || fd != nil {
			t.Fatalf("delivered body scans %v, %v:\n%q", fd, err, out)
		}
	})
}
