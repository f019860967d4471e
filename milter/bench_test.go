package milter_test

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/opesmilter/opes-milter/milter"
	"github.com/opesmilter/opes-milter/opes"
)

// benchMessage runs one whole MTA transaction per iteration on a new
// milter connection, as Postfix does per SMTP session: the cost of the
// trace-only default policy, wire included.
func benchMessage(b *testing.B, network, addr string) {
	hdr := header(&testing.T{}, "From: a@example.org\r\nTo: b@example.net\r\nSubject: benchmark")
	body := []byte(strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n", 64)) // 4 KiB
	cl := gomilter.NewClient(network, addr, gomilter.WithActions(gomilter.AllClientSupportedActionMasks), gomilter.WithReadTimeout(5*time.Second))
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroQueueId, "4QX1Y2")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s, err := cl.Session(macros)
		if err != nil {
			b.Fatal(err)
		}
		steps := []func() (*gomilter.Action, error){
			func() (*gomilter.Action, error) { return s.Conn("c.example", gomilter.FamilyInet, 4000, "192.0.2.1") },
			func() (*gomilter.Action, error) { return s.Helo("c.example") },
			func() (*gomilter.Action, error) { return s.Mail("a@example.org", "") },
			func() (*gomilter.Action, error) { return s.Rcpt("b@example.net", "") },
			func() (*gomilter.Action, error) { return s.Header(hdr) },
		}
		for _, step := range steps {
			if _, err := step(); err != nil {
				b.Fatal(err)
			}
		}
		mods, act, err := s.BodyReadFrom(strings.NewReader(string(body)))
		if err != nil || act.Type != gomilter.ActionAccept || len(mods) != 2 {
			b.Fatalf("eom: %v %+v %d", err, act, len(mods))
		}
		_ = s.Close()
	}
}

func benchServer(b *testing.B, network string, p *opes.Policy) string {
	proc, err := opes.NewProcessor(p, nil)
	if err != nil {
		b.Fatal(err)
	}
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(b.TempDir(), "m.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		b.Fatal(err)
	}
	srv := milter.NewServer(proc, milter.Options{})
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func BenchmarkDefaultPolicy(b *testing.B) {
	for _, network := range []string{"tcp", "unix"} {
		b.Run(network, func(b *testing.B) {
			benchMessage(b, network, benchServer(b, network, &opes.Policy{System: opes.System{URI: sysURI}}))
		})
	}
}

func BenchmarkEveryStagePolicy(b *testing.B) {
	benchMessage(b, "unix", benchServer(b, "unix", fullPolicy(refuser{})))
}
