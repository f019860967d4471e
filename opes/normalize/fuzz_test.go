package normalize

import (
	"strings"
	"testing"
)

// FuzzNormalize feeds arbitrary header values and bodies through the
// processor: the service must never panic, and whenever it reports
// nothing unrepairable the delivered message must be valid on the wire
// and parse, every part decoding.
func FuzzNormalize(f *testing.F) {
	f.Add("multipart/mixed; boundary=\"b\"", "", "--b\r\nContent-Type: text/plain\r\n\r\nx\n--b--\r\n")
	f.Add("text/plain", "quoted-printable", "a=3D\x00=\r\nb=ZZ\r\n")
	f.Add("application/octet-stream", "base64", "aGVsbG8=\r\n!!\r\n")
	f.Add("multipart/mixed; boundary=a; boundary=b", "", "--b\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\nSubject: \xe9\r\n\r\nx\r\n--b--")
	f.Add("text/plain", "", "begin 644 x\r\nM"+strings.Repeat("A", 40)+"\r\nend\r\n"+strings.Repeat("y", 1200))
	f.Add("multipart/alternative; boundary=\"q\"", "7bit", "--q\r\nContent-Disposition: attachment; filename=\"a/b\x01\"\r\nbad line\r\n\r\n\x80\r")
	f.Fuzz(func(t *testing.T, ct, cte, body string) {
		h := hdr("Content-Type", ct, "X-Fuzz", cte+ct)
		if cte != "" {
			h = append(h, [2]string{"Content-Transfer-Encoding", cte})
		}
		for _, f := range h {
			if strings.ContainsAny(f[1], "\x00\r\n") {
				return // the MTA never passes such a header value
			}
		}
		r := process(t, "", h, body)
		if r.msg == nil || len(r.problem) > 0 || strings.Contains(r.via(), "status=skipped") {
			return
		}
		checkOutput(t, r)
	})
}
