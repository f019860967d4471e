// Command nullmilter is the floor of the milter benchmark: a go-milter
// that does no filtering and adds one header field (X-Bench: 1) at the
// end of the message, the least work any filter that marks mail does.
//
//	nullmilter [-unix PATH] [-tcp HOST:PORT] [-every] [-cpuprofile FILE] [-memprofile FILE]
//
// By default it negotiates away every stage but the end of message (no
// connect, HELO, MAIL, RCPT, DATA, header, end-of-header, body or unknown
// callbacks), which is what a filter whose policy needs nothing else can
// do. It asks for no macros, so the MTA sends its default lists (for
// skipped stages too, as Postfix does). With -every it asks for every
// stage and answers each, like a filter that does not know what it will
// need.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	gomilter "github.com/d--j/go-milter"
)

// headerOnly accepts at the end of the message and adds one header field.
// Embedding NoOpMilter answers continue to every other stage.
type headerOnly struct{ gomilter.NoOpMilter }

func (headerOnly) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	if err := m.AddHeader("X-Bench", "1"); err != nil {
		return nil, fmt.Errorf("nullmilter: add header: %w", err)
	}
	return gomilter.RespAccept, nil
}

// everyStage answers continue at every stage instead of skipping: a milter
// that asks for everything also looks at everything.
type everyStage struct{ headerOnly }

func (everyStage) RcptTo(string, string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (everyStage) Header(string, string, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (everyStage) BodyChunk([]byte, gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

func main() {
	unixPath := flag.String("unix", "", "listen on this unix socket")
	tcpAddr := flag.String("tcp", "", "listen on this TCP address (host:port)")
	every := flag.Bool("every", false, "ask for every stage instead of the end of message only")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file until exit")
	memProfile := flag.String("memprofile", "", "write an allocation profile to this file at exit")
	flag.Parse()
	if *memProfile != "" {
		defer func() {
			f, err := os.Create(*memProfile)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				_ = f.Close()
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "nullmilter:", err)
			}
		}()
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nullmilter:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "nullmilter:", err)
			os.Exit(1)
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	if *unixPath == "" && *tcpAddr == "" {
		fmt.Fprintln(os.Stderr, "nullmilter: give -unix, -tcp or both")
		os.Exit(2)
	}
	opts := []gomilter.Option{gomilter.WithAction(gomilter.OptAddHeader)}
	if *every {
		opts = append(opts, gomilter.WithMilter(func() gomilter.Milter { return everyStage{} }))
	} else {
		opts = append(opts, gomilter.WithMilter(func() gomilter.Milter { return headerOnly{} }),
			gomilter.WithProtocol(gomilter.OptNoConnect|gomilter.OptNoHelo|gomilter.OptNoMailFrom|gomilter.OptNoRcptTo|
				gomilter.OptNoData|gomilter.OptNoHeaders|gomilter.OptNoEOH|gomilter.OptNoBody|gomilter.OptNoUnknown))
	}
	srv := gomilter.NewServer(opts...)
	var lns []net.Listener
	if *unixPath != "" {
		_ = os.Remove(*unixPath)
		ln, err := net.Listen("unix", *unixPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nullmilter:", err)
			os.Exit(1)
		}
		_ = os.Chmod(*unixPath, 0o666) // Postfix's smtpd runs as postfix
		lns = append(lns, ln)
	}
	if *tcpAddr != "" {
		ln, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nullmilter:", err)
			os.Exit(1)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		fmt.Printf("READY %s:%s\n", ln.Addr().Network(), ln.Addr())
		go func() { _ = srv.Serve(ln) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	_ = srv.Close()
}
