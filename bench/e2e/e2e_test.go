// Package e2e measures mail throughput end to end through a real Postfix:
// Postfix's smtp-source injects into a private Postfix instance that
// relays to smtp-sink, once without a milter, once with opes-milter on
// the embedded trace-only policy (unix socket, unix socket with
// GOMAXPROCS=1, TCP), and once with the null milter of bench/cmd/nullmilter
// (end of message only) as the floor of a Go milter, and with the same null
// milter written against libmilter in C (bench/peers/libmilter/nullmilter.c, when
// libmilter-dev is installed) as the floor of any milter. It reuses the Postfix
// and sink of the integration harness and starts the milters itself, to
// read their CPU time and context switches from /proc.
//
//	go test ./bench/e2e -run '^$' -bench EndToEnd -benchtime 3x
//
// Environment: OPES_BENCH_MILTER, OPES_BENCH_NULLMILTER and
// OPES_BENCH_NULLMILTER_C name prebuilt binaries (else they are built), OPES_BENCH_E2E_BATCH is the number of
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
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/bench/load"
	"github.com/opesmilter/opes-milter/integration"
	"github.com/opesmilter/opes-milter/internal/child"
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
	// SwitchesPerMsg is the milter's context switches per message, and
	// SystemShare the part of its CPU spent in the kernel: together they
	// show what a light milter's time goes to (waking up per packet).
	SwitchesPerMsg float64 `json:"milter_switches_per_msg"`
	SystemShare    float64 `json:"milter_system_share"`
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

// cNullMilter returns the null milter written against libmilter
// (bench/peers/libmilter/nullmilter.c): OPES_BENCH_NULLMILTER_C, or built with cc
// when libmilter's header is installed (Debian: libmilter-dev), or "" —
// that set-up is then left out.
func cNullMilter(b *testing.B) string {
	if p := os.Getenv("OPES_BENCH_NULLMILTER_C"); p != "" {
		return p
	}
	if _, err := os.Stat("/usr/include/libmilter/mfapi.h"); err != nil {
		b.Logf("no libmilter null milter: %v (apt-get install libmilter-dev gcc)", err)
		return ""
	}
	out := filepath.Join(b.TempDir(), "nullmilter-c")
	cmd := exec.Command("cc", "-O2", "-o", out, "../peers/libmilter/nullmilter.c", "-lmilter", "-pthread")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("cc bench/peers/libmilter/nullmilter.c: %v\n%s", err, msg)
	}
	return out
}

// startMilter runs a milter binary for the benchmark and waits until it
// accepts connections on addr ("unix:PATH" or "inet:HOST:PORT", Postfix's
// syntax); env is added to the benchmark's environment. It returns the
// pid.
func startMilter(b *testing.B, bin, addr string, env []string, args ...string) int {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p, err := child.Start(cmd, filepath.Join(b.TempDir(), "milter.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Stop(10 * time.Second) })
	network, where := "tcp", strings.TrimPrefix(addr, "inet:")
	var ready func() bool
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, where = "unix", path
		// smtpd runs as user postfix: wait until others may read and
		// write the socket (milters set the mode after listening).
		ready = func() bool {
			fi, err := os.Stat(path)
			return err == nil && fi.Mode().Perm()&0o006 == 0o006
		}
	}
	if err := p.WaitDial(network, where, 10*time.Second, ready); err != nil {
		b.Fatal(err)
	}
	return p.Pid()
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
		pid     int // the milter's; 0 without one
		sent    int
		elapsed time.Duration
		sched   load.Sched
		pfCPU   time.Duration
	}
	var profArgs = func(string) []string { return nil }
	if dir := os.Getenv("OPES_BENCH_PROFILE_DIR"); dir != "" {
		profArgs = func(mode string) []string { return []string{"-cpuprofile", filepath.Join(dir, "e2e-"+mode+".pprof")} }
	}
	modes := []string{"none", "opes-unix", "opes-unix-1p", "opes-tcp", "null-unix"}
	cNullBin := cNullMilter(b)
	if cNullBin != "" {
		modes = append(modes, "nullc-unix")
	}
	var setups []*setup
	for _, mode := range modes {
		s := &setup{name: mode, sink: integration.StartSink(b)}
		opts := integration.PostfixOptions{RelayTo: s.sink.Addr(), DefaultAction: "tempfail"}
		sock := "unix:" + filepath.Join(integration.TempDir(b), "milter.sock")
		switch mode {
		case "opes-unix", "opes-unix-1p", "opes-tcp":
			listen := sock
			opts.Milter = sock
			if mode == "opes-tcp" {
				port := integration.FreePort(b)
				listen = fmt.Sprintf("inet:%d@127.0.0.1", port)
				opts.Milter = fmt.Sprintf("inet:127.0.0.1:%d", port)
			}
			var env []string
			if mode == "opes-unix-1p" {
				// One P: the Go scheduler has no second processor to wake
				// and spin for each packet.
				env = []string{"GOMAXPROCS=1"}
			}
			// a site runs at log level info
			args := append([]string{"-listen", listen, "-socket-mode", "0666", "-log-level", "info"}, profArgs(mode)...)
			s.pid = startMilter(b, opesBin, opts.Milter, env, args...)
		case "null-unix":
			opts.Milter = sock
			s.pid = startMilter(b, nullBin, sock, nil, "-unix", strings.TrimPrefix(sock, "unix:"))
		case "nullc-unix":
			opts.Milter = sock
			s.pid = startMilter(b, cNullBin, sock, nil, sock)
		}
		s.pf = integration.StartPostfix(b, opts)
		setups = append(setups, s)
	}
	sched := func(s *setup) load.Sched {
		if s.pid == 0 {
			return load.Sched{}
		}
		v, err := load.SchedOf(s.pid)
		if err != nil {
			b.Fatalf("%s: %v", s.name, err)
		}
		return v
	}
	source, err := integration.LookBin("smtp-source")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, s := range setups {
			sched0 := sched(s)
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
			d := sched(s).Sub(sched0)
			s.sched.User += d.User
			s.sched.System += d.System
			s.sched.Switches += d.Switches
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
		if s.pid != 0 {
			cpu := s.sched.User + s.sched.System
			f.CPUPerMsgMs = cpu.Seconds() * 1000 / float64(s.sent)
			f.SwitchesPerMsg = float64(s.sched.Switches) / float64(s.sent)
			if cpu > 0 {
				f.SystemShare = s.sched.System.Seconds() / cpu.Seconds()
			}
			b.ReportMetric(f.Ratio, "ratio-"+s.name)
			b.ReportMetric(f.CPUPerMsgMs*1000, "milter-cpu-µs/msg-"+s.name)
			b.ReportMetric(f.SwitchesPerMsg, "milter-switches/msg-"+s.name)
		}
		if strings.HasPrefix(s.name, "opes-") {
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
