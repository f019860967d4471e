// Command nullmilter is the benchmark's floor: a go-milter server that
// negotiates only the end of message and answers accept, with no OPES
// processing. BenchmarkPostfixThroughput runs it beside opes-milter so the
// cost of the milter protocol itself and of opes-milter's work can be told
// apart.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	gomilter "github.com/d--j/go-milter"
)

type accept struct{ gomilter.NoOpMilter }

func (accept) EndOfMessage(gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespAccept, nil
}

func main() {
	network := flag.String("net", "tcp", "tcp or unix")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	ln, err := net.Listen(*network, *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *network == "unix" {
		_ = os.Chmod(*addr, 0o666)
	}
	all := gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
		gomilter.OptNoData | gomilter.OptNoHeaders | gomilter.OptNoEOH | gomilter.OptNoBody | gomilter.OptNoUnknown
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return accept{} }), gomilter.WithProtocol(all))
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		_ = srv.Close()
	}()
	_ = srv.Serve(ln)
}
