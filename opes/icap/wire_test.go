package icap

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func bufioReader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 64<<10) }

func TestParseEncapsulated(t *testing.T) {
	tests := []struct {
		in   string
		want []section
		err  string
	}{
		{"req-hdr=0, req-body=170", []section{{"req-hdr", 0}, {"req-body", 170}}, ""},
		{"req-hdr=0, res-hdr=137, res-body=296", []section{{"req-hdr", 0}, {"res-hdr", 137}, {"res-body", 296}}, ""},
		{"null-body=0", []section{{"null-body", 0}}, ""},
		{"RES-HDR=0,RES-BODY=10", []section{{"res-hdr", 0}, {"res-body", 10}}, ""},
		{"", nil, "no Encapsulated"},
		{"req-hdr=0", nil, "not a body entry"},
		{"req-hdr=10, req-body=5", nil, "decrease"},
		{"req-body=0, res-hdr=5", nil, "after the body"},
		{"foo=0", nil, "unknown"},
		{"req-hdr=x", nil, "malformed"},
		{"req-hdr=-1, null-body=0", nil, "malformed"},
	}
	for _, tt := range tests {
		got, err := parseEncapsulated(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, errProtocol) {
				t.Errorf("%q: %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || len(got) != len(tt.want) {
			t.Errorf("%q: %v, %v", tt.in, got, err)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%q: %v, want %v", tt.in, got, tt.want)
			}
		}
	}
}

func TestChunkedReader(t *testing.T) {
	tests := []struct {
		in    string
		limit int64
		want  string
		ieof  bool
		err   string
	}{
		{"5\r\nhello\r\n6; x=y\r\n world\r\n0\r\n\r\nNEXT", 100, "hello world", false, ""},
		{"3\r\nabc\r\n0; ieof\r\n\r\n", 100, "abc", true, ""},
		{"0\r\nTrailer: x\r\n\r\n", 100, "", false, ""},
		{"5\nhello\n0\n\n", 100, "hello", false, ""},
		{"5\r\nhello\r\n0\r\n\r\n", 4, "", false, "larger than max_size"},
		{"5\r\nhelloX\r\n0\r\n\r\n", 100, "", false, "not followed by CRLF"},
		{"g\r\n", 100, "", false, "bad chunk size"},
		{"-1\r\n", 100, "", false, "bad chunk size"},
		{"ffffffffffffffff\r\n", 100, "", false, "bad chunk size"},
		{"5\r\nhel", 100, "", false, "unexpected EOF"},
		{"", 100, "", false, "unexpected EOF"},
	}
	for _, tt := range tests {
		br := bufioReader(tt.in)
		c := newChunkedReader(br, tt.limit)
		got, err := io.ReadAll(c)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %q, %v; want %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || string(got) != tt.want || c.ieof != tt.ieof {
			t.Errorf("%q: %q ieof=%v, %v; want %q ieof=%v", tt.in, got, c.ieof, err, tt.want, tt.ieof)
		}
		if strings.HasSuffix(tt.in, "NEXT") {
			if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
				t.Errorf("%q: left %q on the connection", tt.in, rest)
			}
		}
	}
}

func TestReadResponse(t *testing.T) {
	in := "ICAP/1.0 200 OK\r\nISTag: \"x\"\r\nX-Violations-Found: 1\r\n\t-\r\n\tEvil.Thing\r\n\t0\r\n\t0\r\n" +
		"Encapsulated: res-hdr=0, res-body=45\r\n\r\n" +
		"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\n" + "3\r\nabc\r\n0\r\n\r\n"
	resp, started, err := readResponse(bufioReader(in), "REQMOD", 100)
	if err != nil || !started {
		t.Fatal(err)
	}
	if resp.code != 200 || resp.resHdr == nil || resp.resHdr.start != "HTTP/1.1 403 Forbidden" || resp.body == nil {
		t.Fatalf("%+v", resp)
	}
	if got := threatReason(resp.header); got != "violation found: Evil.Thing" {
		t.Errorf("threat %q", got)
	}
	body, err := io.ReadAll(resp.body)
	if err != nil || string(body) != "abc" {
		t.Errorf("body %q, %v", body, err)
	}
	for in, want := range map[string]string{
		"ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2; Threat=EICAR-Test;\r\n\r\n": "infection found: EICAR-Test",
		"ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0\r\n\r\n":                                   "infection found",
		"ICAP/1.0 200 OK\r\nX-Violations-Found: 0\r\n\r\n":                                       "violation found",
		"ICAP/1.0 200 OK\r\n\r\n":                                                                "",
	} {
		r, _, _ := readResponse(bufioReader(in), "OPTIONS", 100)
		if got := threatReason(r.header); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// FuzzReadResponse: no answer makes the parser panic, loop or read past
// its bounds.
func FuzzReadResponse(f *testing.F) {
	f.Add("ICAP/1.0 204 No Content\r\nISTag: \"x\"\r\n\r\n")
	f.Add("ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=38\r\n\r\nPOST /x HTTP/1.1\r\nHost: localhost\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	f.Add("ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=25\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\n0; ieof\r\n\r\n")
	f.Add("ICAP/1.0 100 Continue\r\n\r\n")
	f.Add("ICAP/1.0 200 OK\r\nX-Violations-Found: 1\r\n\t-\r\n\tT\r\n\t0\r\n\t0\r\nEncapsulated: null-body=0\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		resp, _, err := readResponse(bufioReader(in), "REQMOD", 1<<16)
		if err != nil {
			return
		}
		_ = threatReason(resp.header)
		if resp.body != nil {
			n, _ := io.Copy(io.Discard, resp.body)
			if n > 1<<16 {
				t.Fatalf("read %d octets past the limit", n)
			}
		}
	})
}
