package normalize

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/opesmilter/opes-milter/internal/optiontest"
	"github.com/opesmilter/opes-milter/opes"
)

const sysURI = "https://mx.example.net/opes/"

// run is the outcome of one message through the processor.
type run struct {
	o       *opes.Outcome
	msg     []byte // the message as the MTA delivers it
	body    []byte // nil when the body was not replaced
	log     string
	repairs []string
	problem []string
}

// process drives a whole transaction through opes.Processor the way the
// milter bridge does, with the service configured by opts (a TOML
// [options] table, "" for none).
func process(t testing.TB, opts string, header [][2]string, body string) *run {
	t.Helper()
	return processFrom(t, opts, opes.Address{Addr: "a@example.org"}, header, body)
}

// processFrom is process with the given envelope sender.
func processFrom(t testing.TB, opts string, from opes.Address, header [][2]string, body string) *run {
	t.Helper()
	var logBuf bytes.Buffer
	var decode func(any) error
	if opts != "" {
		decode = optiontest.Decoder(t, opts)
	}
	svc, err := NewWithLogger(decode, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	spec := &opes.ServiceSpec{Name: "norm", Kind: "normalize", URI: sysURI + "svc/norm", Bypassable: true, Impl: svc}
	p, err := opes.NewProcessor(&opes.Policy{
		System:   opes.System{URI: sysURI},
		Services: []*opes.ServiceSpec{spec},
		Rules:    []*opes.Rule{{Name: "all", Stage: opes.StageConnect, Run: []*opes.ServiceSpec{spec}}},
		Limits:   opes.Limits{MaxHeaderFields: 1000, MaxHeaderBytes: 1 << 20},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := p.NewSession()
	defer s.Close()
	s.Connect(ctx)
	if o := s.Mail(ctx, from); o.Kind != opes.Continue {
		t.Fatalf("MAIL refused: %v", o.Reply)
	}
	if o := s.Rcpt(ctx, opes.Address{Addr: "b@example.net"}); o.Kind != opes.Continue {
		t.Fatalf("RCPT refused: %v", o.Reply)
	}
	s.Data(ctx)
	var in []opes.HeaderField
	for _, f := range header {
		s.Header(f[0], f[1])
		in = append(in, opes.HeaderField{Name: f[0], Value: f[1]})
	}
	if o := s.EndOfHeaders(ctx); o.Kind != opes.Continue {
		t.Fatalf("EOH refused: %v", o.Reply)
	}
	// Several chunks, as the MTA sends them.
	for b := []byte(body); len(b) > 0; {
		n := min(len(b), 65535)
		if o := s.BodyChunk(b[:n]); o != nil {
			t.Fatalf("body refused: %v", o.Reply)
		}
		b = b[n:]
	}
	o := s.EndOfMessage(ctx, "4NORM1")
	r := &run{o: o, log: logBuf.String()}
	if o.Kind != opes.Continue {
		return r
	}
	if o.Body != nil {
		r.body, err = io.ReadAll(o.Body)
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Finish()
	b := r.body
	if b == nil {
		b = []byte(body)
	}
	r.msg = append([]byte(opes.FormatHeader(opes.ApplyChanges(in, o.HeaderChanges))+"\r\n"), b...)
	if m := regexp.MustCompile(`repairs=(\S*)`).FindStringSubmatch(r.log); m != nil && m[1] != `""` {
		r.repairs = strings.Split(strings.Trim(m[1], `"`), ",")
	}
	if m := regexp.MustCompile(`unrepairable=("[^"]*"|\S*)`).FindStringSubmatch(r.log); m != nil && m[1] != `""` {
		r.problem = strings.Split(strings.Trim(m[1], `"`), ",")
	}
	return r
}

// via returns the message's OPES-Via field value, unfolded.
func (r *run) via() string {
	for _, c := range r.o.HeaderChanges {
		if c.Name == opes.FieldVia {
			return strings.NewReplacer("\r\n", "", "\t", " ").Replace(c.Value)
		}
	}
	return ""
}

func (r *run) has(repair string) bool {
	for _, x := range r.repairs {
		if x == repair {
			return true
		}
	}
	return false
}

// checkWire asserts what SMTP needs of a message: CRLF line ends only, no
// line over 998 octets, no NUL.
func checkWire(msg []byte) error {
	for i, line := range bytes.Split(msg, []byte("\r\n")) {
		if len(line) > maxLine {
			return fmt.Errorf("line %d is %d octets", i+1, len(line))
		}
		if j := bytes.IndexAny(line, "\r\n\x00"); j >= 0 {
			return fmt.Errorf("line %d has byte 0x%02x at %d: %q", i+1, line[j], j, clip(line))
		}
	}
	return nil
}

func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// checkParse parses msg with go-message, walks every part (into
// message/rfc822 parts too) and decodes every body. An unknown charset is
// the message's business, not ours; an unknown transfer encoding is
// allowed only for x-uuencode, which readers decode themselves.
func checkParse(msg []byte, headersASCII bool) (parts int, err error) {
	return walk(msg, headersASCII, 0)
}

func walk(msg []byte, headersASCII bool, depth int) (int, error) {
	if depth > maxDepth+5 {
		return 0, nil
	}
	if headersASCII {
		end := bytes.Index(msg, []byte("\r\n\r\n"))
		if end < 0 {
			end = len(msg)
		}
		if needsEncoding(string(msg[:end])) {
			return 0, fmt.Errorf("header has 8-bit or control octets: %q", clip(msg[:end]))
		}
	}
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return 0, fmt.Errorf("read message: %w", err)
	}
	parts := 0
	werr := e.Walk(func(path []int, ent *message.Entity, err error) error {
		parts++
		if err != nil && !message.IsUnknownCharset(err) {
			if !message.IsUnknownEncoding(err) || !strings.Contains(strings.ToLower(ent.Header.Get("Content-Transfer-Encoding")), "uu") {
				return fmt.Errorf("part %v: %w", path, err)
			}
		}
		if ent.MultipartReader() != nil {
			return nil
		}
		b, err := io.ReadAll(ent.Body)
		if err != nil {
			return fmt.Errorf("part %v: decode %s: %w", path, ent.Header.Get("Content-Transfer-Encoding"), err)
		}
		if mt, _, _ := ent.Header.ContentType(); mt == "message/rfc822" {
			n, err := walk(b, headersASCII, depth+1)
			if err != nil {
				return fmt.Errorf("part %v: %w", path, err)
			}
			parts += n
		}
		return nil
	})
	if werr != nil {
		return parts, werr
	}
	return parts, nil
}

// checkOutput applies both checks to a delivered message.
func checkOutput(t testing.TB, r *run) {
	t.Helper()
	if err := checkWire(r.msg); err != nil {
		t.Fatalf("delivered message is not valid on the wire: %v\n%s", err, clip(r.msg))
	}
	if _, err := checkParse(r.msg, len(r.problem) == 0); err != nil {
		t.Fatalf("delivered message does not parse: %v\n%q", err, clip(r.msg))
	}
}

var errNotFound = errors.New("not found")

// partBody returns the decoded body of the first part whose header
// contains marker.
func partBody(msg []byte, marker string) ([]byte, message.Header, error) {
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		return nil, message.Header{}, err
	}
	var out []byte
	var hdr message.Header
	found := false
	err = e.Walk(func(_ []int, ent *message.Entity, _ error) error {
		if found || ent.MultipartReader() != nil {
			return nil
		}
		var raw bytes.Buffer
		f := ent.Header.Fields()
		for f.Next() {
			raw.WriteString(f.Key() + ": " + f.Value() + "\n")
		}
		if !strings.Contains(raw.String(), marker) {
			return nil
		}
		found, hdr = true, ent.Header
		out, err = io.ReadAll(ent.Body)
		return err
	})
	if err == nil && !found {
		err = errNotFound
	}
	return out, hdr, err
}

var ctx = context.Background()

// readHeader reads the message header with go-message's mail package,
// which decodes RFC 2047.
func readHeader(msg []byte) (mail.Header, error) {
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		return mail.Header{}, err
	}
	return mail.Header{Header: e.Header}, nil
}
