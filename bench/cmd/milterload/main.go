// Command milterload drives one milter with concurrent sessions and
// prints messages/s, latency percentiles and the milter's CPU time per
// message (see package bench/load).
//
//	milterload -addr unix:/path.sock [-sessions 16] [-per-conn 1] [-n 0] [-d 5s]
//	           [-msg plain|multipart] [-pid PID]... [-want-header]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/opesmilter/opes-milter/bench/load"
)

type pidList []int

func (p *pidList) String() string { return fmt.Sprint(*p) }
func (p *pidList) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("pid %q: %w", s, err)
	}
	*p = append(*p, n)
	return nil
}

func main() {
	var cfg load.Config
	var pids pidList
	addr := flag.String("addr", "", "milter socket: unix:/path or tcp:host:port (also inet:port@host)")
	msg := flag.String("msg", "plain", "plain (10 KiB) or multipart (~250 KiB, text + HTML + two attachments)")
	flag.IntVar(&cfg.Sessions, "sessions", 16, "concurrent sessions")
	flag.IntVar(&cfg.PerConn, "per-conn", 1, "messages per milter connection (1 = a new connection per message)")
	flag.IntVar(&cfg.Messages, "n", 0, "stop after this many messages (0 = no count limit)")
	flag.DurationVar(&cfg.Duration, "d", 5*time.Second, "stop after this long (0 = no time limit)")
	flag.BoolVar(&cfg.WantHeader, "want-header", true, "count a message as failed unless the milter added a header field")
	flag.Var(&pids, "pid", "milter process whose CPU time (with its descendants) is measured; repeatable")
	flag.Parse()
	var err error
	cfg.Network, cfg.Address, err = parseAddr(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "milterload:", err)
		os.Exit(2)
	}
	switch *msg {
	case "plain":
		cfg.Message = load.Plain(10 << 10)
	case "multipart":
		cfg.Message = load.Multipart(170 << 10)
	default:
		fmt.Fprintf(os.Stderr, "milterload: -msg %q: want plain or multipart\n", *msg)
		os.Exit(2)
	}
	cfg.PIDs = pids
	res, err := load.Run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "milterload:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %d B, %d sessions, %d msg/conn: %d ok, %d failed in %.2fs = %.0f msg/s, p50 %.2f ms, p99 %.2f ms",
		cfg.Message.Name, cfg.Message.Size(), cfg.Sessions, cfg.PerConn, res.Messages, res.Failed, res.Elapsed.Seconds(), res.Rate(),
		ms(res.Percentile(0.5)), ms(res.Percentile(0.99)))
	if c := res.CPUPerMessage(); c >= 0 {
		fmt.Printf(", milter CPU %.3f ms/msg", ms(c))
	}
	fmt.Println()
	if res.FirstError != "" {
		fmt.Println("first failure:", res.FirstError)
	}
	if res.Failed > 0 {
		os.Exit(1)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// parseAddr accepts unix:/path, local:/path, tcp:host:port, inet:port@host
// and inet:host:port.
func parseAddr(s string) (network, addr string, err error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("-addr %q: want unix:/path or tcp:host:port", s)
	}
	switch kind {
	case "unix", "local":
		return "unix", rest, nil
	case "tcp":
		return "tcp", rest, nil
	case "inet":
		if port, host, ok := strings.Cut(rest, "@"); ok {
			return "tcp", host + ":" + port, nil
		}
		return "tcp", rest, nil
	}
	return "", "", fmt.Errorf("-addr %q: unknown socket kind %q", s, kind)
}
