package icap

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// peer is a scripted ICAP peer for what no real server does on purpose:
// garbage, hangs, connections closed at the wrong moment, trace fields
// rewritten. It reads each request completely (as a server must) and
// writes what answer returns for it; "" means "never answer".
type peer struct {
	addr     string
	accepts  atomic.Int32
	options  atomic.Int32
	requests atomic.Int32
	// closeAfter makes the peer close every connection after one answer
	// without saying so (a server whose keep-alive timer fired).
	closeAfter atomic.Bool
}

// peerRequest is what the peer read.
type peerRequest struct {
	method  string
	header  string // ICAP header block
	httpHdr string // encapsulated HTTP header sections
	body    []byte // decoded encapsulated body (the message)
}

const peerOptions = "ICAP/1.0 200 OK\r\nMethods: REQMOD, RESPMOD\r\nISTag: \"peer-1\"\r\nAllow: 204\r\nOptions-TTL: 3600\r\nEncapsulated: null-body=0\r\n\r\n"

// startPeer listens on a free loopback port. options answers OPTIONS
// ("" = never); answer answers the rest.
func startPeer(t *testing.T, options string, answer func(n int, r *peerRequest) string) *peer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{addr: l.Addr().String()}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); _ = l.Close(); wg.Wait() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.accepts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				go func() { <-done; _ = c.Close() }()
				br := bufio.NewReader(c)
				for {
					r, err := readPeerRequest(br)
					if err != nil {
						return
					}
					var out string
					if r.method == "OPTIONS" {
						p.options.Add(1)
						out = options
					} else {
						out = answer(int(p.requests.Add(1)), r)
					}
					if out == "" {
						_, _ = io.Copy(io.Discard, c) // hang, reading whatever comes
						return
					}
					if _, err := io.WriteString(c, out); err != nil || p.closeAfter.Load() {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *peer) url() string { return "icap://" + p.addr + "/svc" }

func readPeerRequest(br *bufio.Reader) (*peerRequest, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	r := &peerRequest{method: strings.Fields(line)[0]}
	var head strings.Builder
	bodyAt, hasBody := -1, false
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if l == "\r\n" {
			break
		}
		head.WriteString(l)
		name, value, _ := strings.Cut(strings.TrimSpace(l), ":")
		if strings.EqualFold(name, "Encapsulated") {
			for _, part := range strings.Split(value, ",") {
				k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
				n, _ := strconv.Atoi(v)
				if strings.HasSuffix(k, "-body") {
					bodyAt, hasBody = n, k != "null-body"
				}
			}
		}
	}
	r.header = head.String()
	if bodyAt > 0 {
		b := make([]byte, bodyAt)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		r.httpHdr = string(b)
	}
	if hasBody {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return nil, err
			}
			sizeText, _, _ := strings.Cut(strings.TrimSpace(l), ";")
			n, err := strconv.ParseInt(sizeText, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("chunk size %q", l)
			}
			if n == 0 {
				if _, err := br.ReadString('\n'); err != nil {
					return nil, err
				}
				break
			}
			b := make([]byte, n+2)
			if _, err := io.ReadFull(br, b); err != nil {
				return nil, err
			}
			r.body = append(r.body, b[:n]...)
		}
	}
	return r, nil
}

// reqmodAnswer is a 200 answer to REQMOD that returns msg as the new
// message.
func reqmodAnswer(msg string) string {
	hdr := "POST /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
	return fmt.Sprintf("ICAP/1.0 200 OK\r\nISTag: \"peer-1\"\r\nEncapsulated: req-hdr=0, req-body=%d\r\n\r\n%s%x\r\n%s\r\n0\r\n\r\n",
		len(hdr), hdr, len(msg), msg)
}

const answer204 = "ICAP/1.0 204 No Content\r\nISTag: \"peer-1\"\r\n\r\n"
