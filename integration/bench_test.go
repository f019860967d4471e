package integration

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// BenchmarkPostfixThroughput measures end-to-end throughput through real
// Postfix into smtp-sink, without a milter and with opes-milter running
// the default trace-only policy over TCP and over a unix socket, the way
// shared/PERFORMANCE.md measured its anchors (smtp-source -s 10, 4 KiB,
// one SMTP connection per message). Compare the modes within one run.
//
//	go test ./integration -run '^$' -bench PostfixThroughput -benchtime 3x
func BenchmarkPostfixThroughput(b *testing.B) {
	Require(b, "postfix", "smtp-sink", "smtp-source")
	const batch = 300
	for _, mode := range []string{"no-milter", "tcp", "unix"} {
		b.Run(mode, func(b *testing.B) {
			sink := StartSink(b)
			opts := PostfixOptions{RelayTo: sink.Addr(), DefaultAction: "tempfail"}
			if mode != "no-milter" {
				m := StartMilter(b, MilterOptions{Binary: milterBinary, Unix: mode == "unix"})
				opts.Milter = m.PostfixSpec()
			}
			pf := StartPostfix(b, opts)
			source := mustBin(b, "smtp-source")
			sent := 0
			var elapsed time.Duration
			for b.Loop() {
				start := time.Now()
				out, err := exec.Command(source, "-s", "10", "-m", fmt.Sprint(batch), "-l", "4096",
					"-f", "alice@example.org", "-t", "bob@example.net", pf.Addr()).CombinedOutput()
				if err != nil {
					b.Fatalf("smtp-source: %v\n%s", err, out)
				}
				sent += batch
				waitFiles(b, sink.Dir(), sent, 60*time.Second)
				elapsed += time.Since(start)
			}
			b.ReportMetric(float64(sent)/elapsed.Seconds(), "msg/s")
			if mode != "no-milter" {
				if d := sink.Dumps(); len(d) > 0 && !HasHeader("OPES-System", "https://localhost/opes/; id="+"")(d[0]) && len(d[0].Header()["Opes-System"]) == 0 {
					b.Fatalf("delivered message without trace:\n%s", d[0].Message)
				}
			}
		})
	}
}

func waitFiles(b *testing.B, dir string, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		if len(ents) >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages at the sink after %v", len(ents), n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
