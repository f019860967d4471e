package notify

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// smtpServer is a real SMTP server (emersion/go-smtp) on 127.0.0.1:0
// that keeps what arrives: the relay the ndr.Worker submits to.
type smtpServer struct {
	addr string
	mu   sync.Mutex
	msgs []arrived
}

type arrived struct {
	from string
	to   []string
	data []byte
}

func startSMTP(t *testing.T) *smtpServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpServer{addr: l.Addr().String()}
	srv := smtp.NewServer(s)
	srv.Domain = "relay.test"
	srv.MaxMessageBytes = 1 << 20
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

func (s *smtpServer) messages() []arrived {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]arrived(nil), s.msgs...)
}

// NewSession implements smtp.Backend.
func (s *smtpServer) NewSession(*smtp.Conn) (smtp.Session, error) { return &smtpSession{srv: s}, nil }

type smtpSession struct {
	srv *smtpServer
	cur arrived
}

func (ss *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.cur = arrived{from: from}
	return nil
}

func (ss *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.cur.to = append(ss.cur.to, to)
	return nil
}

func (ss *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.cur.data = b
	ss.srv.mu.Lock()
	ss.srv.msgs = append(ss.srv.msgs, ss.cur)
	ss.srv.mu.Unlock()
	return nil
}

func (ss *smtpSession) Reset()        { ss.cur = arrived{} }
func (ss *smtpSession) Logout() error { return nil }
