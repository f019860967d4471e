// Package e2e measures mail throughput end to end through a real Postfix:
// Postfix's smtp-source injects into a private Postfix instance that
// relays to smtp-sink, once without a milter, once with opes-milter on
// the embedded trace-only policy (unix socket and TCP), and once with the
// null milter of bench/cmd/nullmilter (end of message only) as the floor
// of any milter. It reuses the instances of the integration harness.
//
//	go test ./bench/e2e -run '^$' -bench EndToEnd -benchtime 3x
//
// Environment: OPES_BENCH_MILTER and OPES_BENCH_NULLMILTER name prebuilt
// binaries (else they are built), OPES_BENCH_E2E_BATCH is the number of
// messages per set-up and round (default 500), OPES_BENCH_E2E_JSON a file
// to write the figures to (bench/cmd/opesbench reads it).
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/bench/load"
	"github.com/opesmilter/opes-milter/integration"
)

// Figures are the results of one set-up, as written to OPES_BENCH_E2E_JSON.
type Figures struct {
	Name        string  `json:"name"`
	Messages    int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"msg_per_s"`
	Ratio       float64 `json:"ratio_to_none"`
	CPUPerMsgMs float64 `json:"milter_cpu_ms_per_msg"` // -1 without a milter
	// PostfixCPUPerMsgMs is the CPU of the Postfix instance (master and
	// every process below it, reaped ones included) per message: what
	// speaking the milter protocol costs the MTA itself.
	PostfixCPUPerMsgMs float64 `json:"postfix_cpu_ms_per_msg"`
}

// binary returns the prebuilt binary named by env, or builds pkg.
func binary(b *testing.B, env, pkg string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	out := filepath.Join(b.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = "../.." // the module root, seen from bench/e2e
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// nullMilter starts the null milter on a unix socket that smtpd (user
// postfix) may write; it returns the Postfix milter spec and the pid.
func nullMilter(b *testing.B, bin string) (string, int) {
	sock := filepath.Join(integration.TempDir(b), "null.sock")
	cmd := exec.Command(bin, "-unix", sock)
	if err := cmd.Start(); err != nil {
		b.Fatalf("start nullmilter: %v", err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	for i := 0; i < 500; i++ {
		if fi, err := os.Stat(sock); err == nil && fi.Mode().Perm() == 0o666 {
			return "unix:" + sock, cmd.Process.Pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("nullmilter did not create its socket in 5 s")
	return "", 0
}

// procCPU is the user+system CPU time of a process from /proc.
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	var f []string
	for i := len(raw) - 1; i >= 0; i-- { // fields after the command name
		if raw[i] == ')' {
			f = splitFields(string(raw[i+1:]))
			break
		}
	}
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}

func splitFields(s string) []string {
	var out []string
	start := -1
	for i, c := range s + " " {
		if c == ' ' || c == '\n' {
			if start >= 0 {
				out = append(out, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return out
}

// countFiles waits until dir holds n files (smtp-sink writes one per
// message) or the timeout passes.
func countFiles(b *testing.B, dir string, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			b.Fatalf("read sink dir: %v", err)
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

// BenchmarkEndToEnd runs one batch per set-up per iteration, the set-ups
// taking turns, so load from elsewhere on the machine hits them alike:
// compare the ratios, not the absolute figures. smtp-source uses 10
// parallel SMTP sessions, 4 KiB messages and one SMTP connection per
// message, hence one milter connection per message.
func BenchmarkEndToEnd(b *testing.B) {
	for _, bin := range []string{"postfix", "smtp-source", "smtp-sink"} {
		if _, err := integration.LookBin(bin); err != nil {
			b.Skipf("%s not installed (Debian package postfix): %v", bin, err)
		}
	}
	batch := 500
	if s := os.Getenv("OPES_BENCH_E2E_BATCH"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("OPES_BENCH_E2E_BATCH=%q: want a positive count", s)
		}
		batch = n
	}
	opesBin := binary(b, "OPES_BENCH_MILTER", "./cmd/opes-milter")
	nullBin := binary(b, "OPES_BENCH_NULLMILTER", "./bench/cmd/nullmilter")
	type setup struct {
		name    string
		sink    *integration.Sink
		pf      *integration.Postfix
		cpuNow  func() time.Duration // the milter's CPU time so far; nil without one
		sent    int
		elapsed time.Duration
		cpu     time.Duration
		pfCPU   time.Duration
	}
	var setups []*setup
	for _, mode := range []string{"none", "opes-unix", "opes-tcp", "null-unix"} {
		s := &setup{name: mode, sink: integration.StartSink(b)}
		opts := integration.PostfixOptions{RelayTo: s.sink.Addr(), DefaultAction: "tempfail"}
		switch mode {
		case "opes-unix", "opes-tcp":
			var args []string
			if dir := os.Getenv("OPES_BENCH_PROFILE_DIR"); dir != "" {
				args = []string{"-cpuprofile", filepath.Join(dir, "e2e-"+mode+".pprof")}
			}
			// the harness logs at debug; a site runs at info
			m := integration.StartMilter(b, integration.MilterOptions{Binary: opesBin, Unix: mode == "opes-unix",
				Args: append(args, "-log-level", "info")})
			opts.Milter = m.PostfixSpec()
			s.cpuNow = m.CPUTime
		case "null-unix":
			var pid int
			opts.Milter, pid = nullMilter(b, nullBin)
			s.cpuNow = func() time.Duration { return procCPU(pid) }
		}
		s.pf = integration.StartPostfix(b, opts)
		setups = append(setups, s)
	}
	source, err := integration.LookBin("smtp-source")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, s := range setups {
			var cpu0 time.Duration
			if s.cpuNow != nil {
				cpu0 = s.cpuNow()
			}
			pf0 := load.TreeCPU([]int{s.pf.MasterPID()})
			start := time.Now()
			out, err := exec.Command(source, "-s", "10", "-m", strconv.Itoa(batch), "-l", "4096",
				"-f", "alice@example.org", "-t", "bob@example.net", s.pf.Addr()).CombinedOutput()
			if err != nil {
				b.Fatalf("%s: smtp-source: %v\n%s", s.name, err, out)
			}
			s.sent += batch
			countFiles(b, s.sink.Dir(), s.sent, 120*time.Second)
			s.elapsed += time.Since(start)
			s.pfCPU += load.TreeCPU([]int{s.pf.MasterPID()}) - pf0
			if s.cpuNow != nil {
				s.cpu += s.cpuNow() - cpu0
			}
		}
	}
	var figs []Figures
	base := float64(setups[0].sent) / setups[0].elapsed.Seconds()
	for _, s := range setups {
		f := Figures{Name: s.name, Messages: s.sent, Seconds: s.elapsed.Seconds(), CPUPerMsgMs: -1}
		f.Rate = float64(s.sent) / s.elapsed.Seconds()
		f.Ratio = f.Rate / base
		f.PostfixCPUPerMsgMs = s.pfCPU.Seconds() * 1000 / float64(s.sent)
		b.ReportMetric(f.PostfixCPUPerMsgMs*1000, "postfix-cpu-µs/msg-"+s.name)
		b.ReportMetric(f.Rate, "msg/s-"+s.name)
		if s.cpuNow != nil {
			f.CPUPerMsgMs = s.cpu.Seconds() * 1000 / float64(s.sent)
			b.ReportMetric(f.Ratio, "ratio-"+s.name)
			b.ReportMetric(f.CPUPerMsgMs*1000, "milter-cpu-µs/msg-"+s.name)
		}
		if s.name == "opes-unix" || s.name == "opes-tcp" {
			if d := s.sink.Dumps(); len(d) == 0 || len(d[0].Header()["Opes-System"]) != 1 {
				b.Fatalf("%s: delivered message without the OPES trace", s.name)
			}
		}
		figs = append(figs, f)
	}
	if path := os.Getenv("OPES_BENCH_E2E_JSON"); path != "" {
		raw, err := json.MarshalIndent(figs, "", "  ")
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			b.Fatalf("write %s: %v", path, err)
		}
	}
}
