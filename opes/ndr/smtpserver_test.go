package ndr

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// received is one message the test relay accepted.
type received struct {
	From   string
	To     []string
	Notify [][]smtp.DSNNotify
	Data   []byte
	TLS    bool
}

// answer tells the test relay how to respond.
type answer int

const (
	answerOK answer = iota
	answerTempRcpt
	answerPermRcpt
	answerPermData
	answerTempData
)

// testRelay is a real SMTP server (emersion/go-smtp) on 127.0.0.1:0 that
// records what arrives; it can be told to refuse, and stopped and started
// again on the same port.
type testRelay struct {
	t    *testing.T
	addr string
	tls  *tls.Config

	mu     sync.Mutex
	answer answer
	msgs   []received
	srv    *smtp.Server
	l      net.Listener
}

func startRelay(t *testing.T, tlsCfg *tls.Config) *testRelay {
	t.Helper()
	r := &testRelay{t: t, tls: tlsCfg}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	r.serve(l)
	t.Cleanup(r.stop)
	return r
}

func (r *testRelay) serve(l net.Listener) {
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &relaySession{r: r, conn: c}, nil
	}))
	s.Domain = "relay.test"
	s.EnableDSN = true
	s.EnableSMTPUTF8 = true
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	s.TLSConfig = r.tls
	s.ErrorLog = discardLogger{}
	r.mu.Lock()
	r.srv, r.l = s, l
	r.mu.Unlock()
	go s.Serve(l)
}

// stop closes the listener and every connection: the relay is down.
func (r *testRelay) stop() {
	r.mu.Lock()
	s, l := r.srv, r.l
	r.srv, r.l = nil, nil
	r.mu.Unlock()
	if s != nil {
		// Close the listener ourselves too: Serve may not have registered
		// it with the server yet.
		l.Close()
		s.Close()
	}
}

// start listens again on the same address.
func (r *testRelay) start() {
	r.t.Helper()
	var l net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger for a moment after close
		if l, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("restart relay on %s: %v", r.addr, err)
	}
	r.serve(l)
}

func (r *testRelay) setAnswer(a answer) {
	r.mu.Lock()
	r.answer = a
	r.mu.Unlock()
}

func (r *testRelay) messages() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

type relaySession struct {
	r      *testRelay
	conn   *smtp.Conn
	cur    received
	answer answer
}

func (s *relaySession) Reset()        { s.cur = received{} }
func (s *relaySession) Logout() error { return nil }

func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	s.r.mu.Lock()
	s.answer = s.r.answer
	s.r.mu.Unlock()
	_, isTLS := s.conn.TLSConnectionState()
	s.cur = received{From: from, TLS: isTLS}
	return nil
}

func (s *relaySession) Rcpt(to string, opts *smtp.RcptOptions) error {
	switch s.answer {
	case answerTempRcpt:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	case answerPermRcpt:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	s.cur.To = append(s.cur.To, to)
	var n []smtp.DSNNotify
	if opts != nil {
		n = opts.Notify
	}
	s.cur.Notify = append(s.cur.Notify, n)
	return nil
}

func (s *relaySession) Data(rd io.Reader) error {
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	switch s.answer {
	case answerPermData:
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "rejected"}
	case answerTempData:
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "insufficient storage"}
	}
	s.cur.Data = bytes.Clone(b)
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, s.cur)
	s.r.mu.Unlock()
	return nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}

// selfSigned makes a server certificate for 127.0.0.1 and a client
// configuration that trusts it.
func selfSigned(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool}
	return server, client
}

// waitFor polls cond up to d; loops in tests are bounded.
func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(errors.New("condition not met in time"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
