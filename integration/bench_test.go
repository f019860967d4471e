package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// startNullMilter builds and starts integration/internal/nullmilter on a
// unix socket and returns the socket path.
func startNullMilter(b *testing.B) string {
	dir := TempDir(b)
	bin := filepath.Join(dir, "nullmilter")
	build := exec.Command("go", "build", "-o", bin, "./integration/internal/nullmilter")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build nullmilter: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "null.sock")
	cmd := exec.Command(bin, "-net", "unix", "-addr", sock)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("nullmilter did not start")
	return ""
}

// BenchmarkPostfixThroughput measures end-to-end throughput through real
// Postfix into smtp-sink, without a milter and with opes-milter running
// the default trace-only policy over TCP and over a unix socket, the way
// shared/PERFORMANCE.md measured its anchors (smtp-source -s 10, 4 KiB,
// one SMTP connection per message), plus a null milter (go-milter,
// end of message only, no OPES work) as the floor of what any go-milter
// costs. The set-ups run side by side
// and take turns batch by batch, so load from elsewhere on the machine
// hits them alike; compare the ratios, not absolute figures.
//
//	go test ./integration -run '^$' -bench PostfixThroughput -benchtime 5x
func BenchmarkPostfixThroughput(b *testing.B) {
	Require(b, "postfix", "smtp-sink", "smtp-source")
	const batch = 300
	type setup struct {
		name    string
		sink    *Sink
		pf      *Postfix
		milter  *Milter
		sent    int
		elapsed time.Duration
		cpu     time.Duration // milter CPU time spent in the batches
	}
	var setups []*setup
	for _, mode := range []string{"none", "null-unix", "tcp", "unix"} {
		s := &setup{name: mode, sink: StartSink(b)}
		opts := PostfixOptions{RelayTo: s.sink.Addr(), DefaultAction: "tempfail"}
		switch mode {
		case "none":
		case "null-unix":
			opts.Milter = "unix:" + startNullMilter(b)
		default:
			var args []string
			if dir := os.Getenv("OPES_BENCH_PROFILE_DIR"); dir != "" {
				args = []string{"-cpuprofile", dir + "/milter-" + mode + ".pprof", "-log-level", "info"}
			}
			s.milter = StartMilter(b, MilterOptions{Binary: milterBinary, Unix: mode == "unix", Args: args})
			opts.Milter = s.milter.PostfixSpec()
		}
		s.pf = StartPostfix(b, opts)
		setups = append(setups, s)
	}
	source := mustBin(b, "smtp-source")
	for b.Loop() {
		for _, s := range setups {
			start, cpu0 := time.Now(), s.milter.CPUTime()
			out, err := exec.Command(source, "-s", "10", "-m", fmt.Sprint(batch), "-l", "4096",
				"-f", "alice@example.org", "-t", "bob@example.net", s.pf.Addr()).CombinedOutput()
			if err != nil {
				b.Fatalf("smtp-source: %v\n%s", err, out)
			}
			s.sent += batch
			waitFiles(b, s.sink.Dir(), s.sent, 60*time.Second)
			s.elapsed += time.Since(start)
			s.cpu += s.milter.CPUTime() - cpu0
		}
	}
	base := float64(setups[0].sent) / setups[0].elapsed.Seconds()
	for _, s := range setups {
		rate := float64(s.sent) / s.elapsed.Seconds()
		b.ReportMetric(rate, "msg/s-"+s.name)
		if s.name != "none" {
			b.ReportMetric(rate/base, "ratio-"+s.name)
		}
		if s.milter != nil {
			b.ReportMetric(float64(s.cpu.Microseconds())/float64(s.sent), "milter-cpu-µs/msg-"+s.name)
			if d := s.sink.Dumps(); len(d) == 0 || len(d[0].Header()["Opes-System"]) != 1 {
				b.Fatalf("%s: delivered message without trace", s.name)
			}
		}
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
