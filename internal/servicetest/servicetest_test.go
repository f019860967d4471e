package servicetest_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"

	"github.com/opesmilter/opes-milter/internal/servicetest"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/tag"
)

const sysURI = "https://mx.example.net/opes/"

// The helpers run a real service kind, tag, the way its own tests do.

func TestOptions(t *testing.T) {
	svc := servicetest.MustNew(t, tag.New, "[options]\nheader = \"X-Tag: external\"\n")
	if got := svc.Needs(); got.Stages != opes.StagesOf(opes.StageEOM) {
		t.Errorf("Needs = %+v", got)
	}
	servicetest.WantFieldError(t, tag.New, "[options]\nheader = \"X-Tag external\"\n", "header", `is not "Name: value"`)
	servicetest.WantDecodeError(t, tag.New, "[options]\nheader = 5\n", "tag")
}

func TestTransaction(t *testing.T) {
	header := [][2]string{{"From", " a@example.net"}, {"Subject", " hi"}}
	body := strings.Repeat("0123456789abcdef\r\n", 100) // beyond 1 KiB: spooled
	tx := servicetest.NewTransaction(t, header, body)
	if f := tx.Header.Fields(); len(f) != 2 || f[0].Name != "From" || tx.Header.Get("From") != "a@example.net" || f[1].Name != "Subject" || tx.Header.Get("Subject") != "hi" {
		t.Errorf("header %+v", f)
	}
	if !tx.Body.Spooled() || tx.Size() != int64(len(body)) {
		t.Errorf("body spooled %v, %d octets; want spooled, %d", tx.Body.Spooled(), tx.Size(), len(body))
	}
	if b, err := io.ReadAll(tx.Body.Reader()); err != nil || string(b) != body {
		t.Errorf("body read back: %v, %d octets", err, len(b))
	}

	svc := servicetest.MustNew(t, tag.New, "[options]\nheader = \"X-Tag: external\"\n")
	v, err := servicetest.EndOfMessage(t, svc, tx)
	if err != nil || v.Kind != opes.Continue || tx.Header.Get("X-Tag") != "external" {
		t.Errorf("verdict %+v, %v; X-Tag %q", v, err, tx.Header.Get("X-Tag"))
	}
}

func TestDeliver(t *testing.T) {
	svc := servicetest.MustNew(t, tag.New, "[options]\nheader = \"X-Tag: external\"\n[options.when]\nsize_over = 1500\n")
	spec := &opes.ServiceSpec{Name: "tag", Kind: "tag", URI: sysURI + "svc/tag", Impl: svc}
	p := servicetest.NewProcessor(t, sysURI, opes.StageConnect, servicetest.SpoolingLimits(t), spec)
	header := [][2]string{{"From", " a@example.net"}, {"Subject", " hi"}}
	for _, tt := range []struct {
		name   string
		body   string
		tagged bool
	}{
		{"small", "hi\r\n", false},
		{"several chunks", strings.Repeat("x", 2500) + "\r\n", true},
	} {
		o := servicetest.Deliver(t, p, header, tt.body)
		if o.Kind != opes.Continue {
			t.Fatalf("%s: outcome %v", tt.name, o.Kind)
		}
		tagged := false
		for _, c := range o.HeaderChanges {
			tagged = tagged || c.Name == "X-Tag" && c.Value == "external"
		}
		if tagged != tt.tagged {
			t.Errorf("%s: tagged %v, want %v (%+v)", tt.name, tagged, tt.tagged, o.HeaderChanges)
		}
		if got := servicetest.DeliveredBody(t, o, tt.body); got != tt.body {
			t.Errorf("%s: delivered body %q", tt.name, got)
		}
	}
}

func TestMIME(t *testing.T) {
	data := bytes.Repeat([]byte{0, 1, 2, 0xff}, 40)
	body := servicetest.Multipart("b1",
		servicetest.Part("Content-Type: text/plain\nContent-Disposition: inline", "hello\r\n"),
		servicetest.Part("Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64", servicetest.Base64(data)))
	for _, line := range strings.Split(servicetest.Base64(data), "\r\n") {
		if len(line) > 76 {
			t.Errorf("base64 line of %d characters", len(line))
		}
	}
	parts := readParts(t, "b1", body)
	if len(parts) != 2 || parts[0] != "hello" || parts[1] != string(data) {
		t.Errorf("parts %q", parts)
	}

	h, body := servicetest.WithAttachment([][2]string{{"From", " a@example.net"}}, data)
	if len(h) != 3 || h[0][0] != "From" || h[2][0] != "Content-Type" {
		t.Fatalf("header %q", h)
	}
	var raw strings.Builder
	for _, f := range h {
		raw.WriteString(f[0] + ":" + f[1] + "\r\n")
	}
	m, err := mail.ReadMessage(strings.NewReader(raw.String() + "\r\n" + body))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	parts = readParts(t, params["boundary"], body)
	if len(parts) != 2 || parts[0] != "see attachment" || parts[1] != string(data) {
		t.Errorf("attachment message parts %q", parts)
	}
}

// readParts returns the content of each part of a multipart body,
// base64 decoded where the part says so, without the final CRLF.
func readParts(t *testing.T, boundary, body string) []string {
	t.Helper()
	r := multipart.NewReader(strings.NewReader(body), boundary)
	var out []string
	for {
		p, err := r.NextRawPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var src io.Reader = p
		if p.Header.Get("Content-Transfer-Encoding") == "base64" {
			src = base64.NewDecoder(base64.StdEncoding, p)
		}
		b, err := io.ReadAll(src)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.TrimSuffix(string(b), "\r\n"))
	}
}
