package links

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/opesmilter/opes-milter/internal/servicetest"
)

var discardLog = slog.New(slog.DiscardHandler)

// FuzzRewrite feeds arbitrary bodies under a multipart/mixed header
// through the three reads. Whatever the input, the walk ends with a
// defined outcome, and a rewritten message parses and has no part left
// that was moved.
func FuzzRewrite(f *testing.F) {
	f.Add(servicetest.Multipart("m", plain, attachment("a.pdf", "application/pdf", []byte("%PDF-1.4 data"))))
	f.Add(servicetest.Multipart("m", alternative, attachment("a.bin", "application/octet-stream", []byte("xx"))))
	f.Add(servicetest.Multipart("m", servicetest.Part(`Content-Type: multipart/related; boundary="r"`, servicetest.Multipart("r",
		servicetest.Part("Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: base64", servicetest.Base64([]byte("<b>x</b></BODY>"))),
		servicetest.Part("Content-Type: image/png; name=\"i.png\"", "PNG")))))
	f.Add("--m\r\nContent-Type: text/plain\r\n\r\nno end")
	f.Fuzz(func(t *testing.T, body string) {
		st, err := OpenStore(t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		s := &Service{store: st, key: []byte("0123456789abcdef0123456789abcdef"), baseURL: "https://x.example/a",
			minSize: 1, ttl: time.Hour, now: time.Now, log: discardLog}
		var top textproto.Header
		top.Set("Content-Type", `multipart/mixed; boundary="m"`)
		ctx := context.Background()
		msg, err := analyze(ctx, top, strings.NewReader(body), s.minSize)
		if errors.Is(err, errMalformed) || errors.Is(err, errSigned) {
			return
		}
		if err != nil {
			t.Fatalf("analyze: %v", err)
		}
		if err := s.storeParts(ctx, msg, strings.NewReader(body)); err != nil {
			if errors.Is(err, errMalformed) {
				return
			}
			t.Fatalf("store: %v", err)
		}
		moved := msg.moved()
		if len(moved) == 0 {
			return
		}
		exp := time.Now().Add(time.Hour)
		for _, n := range moved {
			n.link = s.link(n.stored.Sum, n.filename, exp)
		}
		p := msg.planLinks(top, exp)
		var out bytes.Buffer
		if err := writeMessage(ctx, &out, strings.NewReader(body), msg, p); err != nil {
			t.Fatalf("write: %v", err)
		}
		ct := top.Get("Content-Type")
		if p.wrap {
			t.Fatal("a multipart/mixed root is never wrapped")
		}
		e, err := gomessage.Read(strings.NewReader("Content-Type: " + ct + "\r\n\r\n" + out.String()))
		if err != nil && !gomessage.IsUnknownCharset(err) {
			t.Fatalf("output does not parse: %v\n%q", err, out.String())
		}
		var decoded strings.Builder
		err = e.Walk(func(_ []int, e *gomessage.Entity, err error) error {
			if err != nil && !gomessage.IsUnknownCharset(err) && !gomessage.IsUnknownEncoding(err) {
				return err
			}
			if mt, _, _ := e.Header.ContentType(); strings.HasPrefix(mt, "multipart/") {
				return nil // Walk reads its parts
			}
			_, err = io.Copy(&decoded, e.Body)
			return err
		})
		if err != nil {
			t.Fatalf("output does not walk: %v\n%q", err, out.String())
		}
		if !strings.Contains(decoded.String(), "/"+moved[0].stored.Sum+"/") {
			t.Fatalf("output has no link to %s:\n%q", moved[0].stored.Sum, out.String())
		}
	})
}
