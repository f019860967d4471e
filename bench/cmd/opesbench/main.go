// Command opesbench is `make bench`: it starts opes-milter and its peers
// side by side, drives each with the same load, runs Postfix end to end
// with and without opes-milter, measures opes-milter's peak memory, and
// prints one table with every figure and the targets of issue 8.
//
//	opesbench -opes BIN -null BIN [-e2e BIN] [-work DIR] [-slice 1.5s] [-rounds 2]
//
// The peers: (a) opes-milter on the embedded trace-only policy, (b)
// opes-milter on a realistic policy (acl + tag + attachments MIME walk),
// (c) a null go-milter adding one header, end of message only and asking
// for every stage, (d) MIMEDefang adding one header, and walking every
// part. Every set-up of one scenario is driven in turns (slice by slice,
// -rounds times), so load from elsewhere on the shared machine hits them
// alike; compare ratios within one run, not absolute figures across runs.
// bench/run.sh builds the binaries and calls this.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opesmilter/opes-milter/bench/load"
	"github.com/opesmilter/opes-milter/bench/peers"
)

type options struct {
	opes, null, e2e, work, out string
	slice                      time.Duration
	rounds, sessions           int
	e2eBatch, e2eRounds        int
	noMIMEDefang               bool
}

func main() {
	var o options
	flag.StringVar(&o.opes, "opes", "", "opes-milter binary (required)")
	flag.StringVar(&o.null, "null", "", "bench/cmd/nullmilter binary (required)")
	flag.StringVar(&o.e2e, "e2e", "", "compiled bench/e2e test binary (go test -c); empty skips the Postfix part")
	flag.StringVar(&o.work, "work", "", "directory for sockets, logs and profiles (default: a new temp dir, kept)")
	flag.StringVar(&o.out, "out", "", "also write the table to this file")
	flag.DurationVar(&o.slice, "slice", 1500*time.Millisecond, "time per set-up per round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of turns per scenario")
	flag.IntVar(&o.sessions, "sessions", 16, "concurrent sessions of the load scenarios")
	flag.IntVar(&o.e2eBatch, "e2e-batch", 500, "messages per Postfix set-up and round")
	flag.IntVar(&o.e2eRounds, "e2e-rounds", 8, "rounds of the Postfix part (each set-up 500 messages per round; the end-to-end ratios are the noisiest figure)")
	flag.BoolVar(&o.noMIMEDefang, "no-mimedefang", false, "leave MIMEDefang out")
	flag.Parse()
	if o.opes == "" || o.null == "" {
		fmt.Fprintln(os.Stderr, "opesbench: -opes and -null are required (bench/run.sh builds them)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "opesbench:", err)
		os.Exit(1)
	}
}

// scenario is one load shape; every peer is driven with it.
type scenario struct {
	transport string
	sessions  int
	perConn   int
	msg       *load.Message
}

func (s scenario) String() string {
	conn := "new conn/msg"
	if s.perConn > 1 {
		conn = fmt.Sprintf("%d msg/conn", s.perConn)
	}
	return fmt.Sprintf("%s, %d sess, %s, %s", s.transport, s.sessions, conn, s.msg.Name)
}

// row is one line of the table; empty cells print as "—".
type row struct{ section, scenario, peer, rate, p50, p99, cpu, toC, toD, note string }

type bench struct {
	o               options
	e2eOpesMessages int
	rows            []row
	peers           []*peer
	notes           []string
}

func run(ctx context.Context, o options) error {
	if o.work == "" {
		d, err := os.MkdirTemp("", "opesbench-")
		if err != nil {
			return err
		}
		o.work = d
	}
	// MIMEDefang (user defang) must reach its files through the path.
	if err := os.Chmod(o.work, 0o755); err != nil {
		return err
	}
	b := &bench{o: o}
	started := time.Now()
	defer b.stopPeers()
	fmt.Fprintf(os.Stderr, "opesbench: work dir %s\n", o.work)
	if err := b.startPeers(); err != nil {
		return err
	}
	plain, multi := load.Plain(10<<10), load.Multipart(170<<10)
	// warm up: Perl workers compiled, Go heaps grown, page cache
	for _, pe := range b.peers {
		if _, err := b.drive(ctx, pe, scenario{"unix", o.sessions, 1, plain}, 500*time.Millisecond); err != nil {
			return fmt.Errorf("warm-up %s: %w", pe.key, err)
		}
	}
	var scenarios []scenario
	for _, tr := range []string{"unix", "tcp"} {
		for _, m := range []*load.Message{plain, multi} {
			for _, pc := range []int{1, 100} {
				scenarios = append(scenarios, scenario{tr, o.sessions, pc, m})
			}
		}
	}
	scenarios = append(scenarios, scenario{"unix", 1, 1, plain}, scenario{"tcp", 1, 1, plain})
	results := map[string]map[string]load.Result{}
	for _, sc := range scenarios {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(os.Stderr, "opesbench: %s\n", sc)
		res := map[string]load.Result{}
		for r := 0; r < o.rounds; r++ {
			for _, pe := range b.peers {
				got, err := b.drive(ctx, pe, sc, o.slice)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", pe.key, sc, err)
				}
				if acc, ok := res[pe.key]; ok {
					acc.Merge(got)
					res[pe.key] = acc
				} else {
					res[pe.key] = got
				}
			}
		}
		results[sc.String()] = res
		b.addLoadRows(sc, res)
	}
	b.stopPeers() // the Postfix and memory parts get the machine alone

	tg := &targets{}
	key := func(tr string, s int, m *load.Message) map[string]load.Result {
		return results[scenario{tr, s, 1, m}.String()]
	}
	base := key("unix", o.sessions, plain)
	tg.ratio("trace-only ≥ 0.9 × null go-milter (EOM only); unix, 16 sess, new conn, 10 KiB", base, "a", "c-eom", 0.9, "a-plain")
	tg.ratio("trace-only ≥ 20 × MIMEDefang adding one header; same load", base, "a", "d-hdr", 20, "a-plain")
	tg.ratio("MIME-walking policy ≥ 5 × MIMEDefang per-part filter; unix, 16 sess, new conn, ~250 KiB multipart",
		key("unix", o.sessions, multi), "b", "d-parts", 5, "b-multi")

	if o.e2e != "" {
		if err := b.endToEnd(ctx, tg); err != nil {
			return err
		}
	} else {
		b.notes = append(b.notes, "Postfix end to end: skipped (no -e2e binary)")
	}
	if err := b.memory(ctx, tg); err != nil {
		return err
	}
	if err := b.profiles(ctx, tg, plain, multi); err != nil {
		b.notes = append(b.notes, "profiles: "+err.Error())
	}
	for _, t := range tg.list {
		b.rows = append(b.rows, row{section: "target", scenario: t.name, note: t.verdict()})
	}
	var out io.Writer = os.Stdout
	if o.out != "" {
		f, err := os.Create(o.out)
		if err != nil {
			return err
		}
		defer f.Close()
		out = io.MultiWriter(os.Stdout, f)
	}
	b.print(out, started, tg)
	return nil
}

func (b *bench) startPeers() error {
	o := b.o
	policy := filepath.Join(o.work, "policy-realistic.toml")
	if err := os.WriteFile(policy, []byte(peers.RealisticPolicy), 0o644); err != nil {
		return err
	}
	both := []string{"unix", "tcp"}
	type starter func() (*peer, error)
	list := []starter{
		func() (*peer, error) { return startOpes(o.work, "a", "(a) opes trace-only", o.opes, "", both) },
		func() (*peer, error) {
			return startOpes(o.work, "b", "(b) opes acl+tag+MIME walk", o.opes, policy, both)
		},
		func() (*peer, error) {
			return startNull(o.work, "c-eom", "(c) null go-milter, EOM only", o.null, false)
		},
		func() (*peer, error) {
			return startNull(o.work, "c-all", "(c) null go-milter, every stage", o.null, true)
		},
	}
	if _, err := exec.LookPath("mimedefang"); err != nil || o.noMIMEDefang {
		b.notes = append(b.notes, "MIMEDefang: left out (not installed or -no-mimedefang); targets against (d) not measured")
	} else {
		list = append(list,
			func() (*peer, error) {
				return startMIMEDefang(o.work, "d-hdr", "(d) MIMEDefang, one header", peers.MIMEDefangHeader)
			},
			func() (*peer, error) {
				return startMIMEDefang(o.work, "d-parts", "(d) MIMEDefang, walks parts", peers.MIMEDefangParts)
			})
	}
	for _, s := range list {
		pe, err := s()
		if pe != nil {
			b.peers = append(b.peers, pe)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) stopPeers() {
	for _, pe := range b.peers {
		pe.stop()
	}
	b.peers = nil
}

func (b *bench) drive(ctx context.Context, pe *peer, sc scenario, d time.Duration) (load.Result, error) {
	ep := pe.ep[sc.transport]
	return load.Run(ctx, load.Config{Network: ep.network, Address: ep.addr, Sessions: sc.sessions, PerConn: sc.perConn,
		Duration: d, Message: sc.msg, WantHeader: true, PIDs: ep.pids})
}

func ms(d time.Duration) string {
	if d < 0 {
		return ""
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

func ratio(x, y float64) string {
	if y <= 0 {
		return ""
	}
	return strconv.FormatFloat(x/y, 'f', 2, 64)
}

func (b *bench) addLoadRows(sc scenario, res map[string]load.Result) {
	floor := res["c-eom"].Rate()
	for _, key := range []string{"a", "b", "c-eom", "c-all", "d-hdr", "d-parts"} {
		r, ok := res[key]
		if !ok {
			continue
		}
		label := key
		for _, pe := range b.peers {
			if pe.key == key {
				label = pe.label
			}
		}
		// (d) is the MIMEDefang filter doing the same work: the per-part
		// filter for the MIME-walking policy, the header filter otherwise.
		same := "d-hdr"
		if key == "b" {
			same = "d-parts"
		}
		rw := row{section: "milter", scenario: sc.String(), peer: label, rate: strconv.FormatFloat(r.Rate(), 'f', 0, 64),
			p50: ms(r.Percentile(0.5)), p99: ms(r.Percentile(0.99)), cpu: ms(r.CPUPerMessage()),
			toC: ratio(r.Rate(), floor)}
		if !strings.HasPrefix(key, "d") {
			rw.toD = ratio(r.Rate(), res[same].Rate())
		}
		if r.Failed > 0 {
			rw.note = fmt.Sprintf("%d failed: %s", r.Failed, r.FirstError)
		}
		b.rows = append(b.rows, rw)
	}
}

// e2eFigures mirrors bench/e2e.Figures.
type e2eFigures struct {
	Name     string  `json:"name"`
	Messages int     `json:"messages"`
	Rate     float64 `json:"msg_per_s"`
	Ratio    float64 `json:"ratio_to_none"`
	CPU      float64 `json:"milter_cpu_ms_per_msg"`
	Postfix  float64 `json:"postfix_cpu_ms_per_msg"`
	Switches float64 `json:"milter_switches_per_msg"`
	System   float64 `json:"milter_system_share"`
}

func (b *bench) endToEnd(ctx context.Context, tg *targets) error {
	fmt.Fprintln(os.Stderr, "opesbench: Postfix end to end")
	jsonPath := filepath.Join(b.o.work, "e2e.json")
	logPath := filepath.Join(b.o.work, "e2e.log")
	cmd := exec.CommandContext(ctx, b.o.e2e, "-test.run", "^$", "-test.bench", "EndToEnd",
		"-test.benchtime", fmt.Sprintf("%dx", b.o.e2eRounds))
	cmd.Dir = b.o.work
	cmd.Env = append(os.Environ(), "OPES_BENCH_MILTER="+b.o.opes, "OPES_BENCH_NULLMILTER="+b.o.null,
		"OPES_BENCH_E2E_BATCH="+strconv.Itoa(b.o.e2eBatch), "OPES_BENCH_E2E_JSON="+jsonPath,
		"OPES_BENCH_PROFILE_DIR="+b.o.work)
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(logPath, out, 0o644)
	if err != nil {
		return fmt.Errorf("end to end through Postfix: %v (see %s):\n%s", err, logPath, tailText(string(out), 20))
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		if strings.Contains(string(out), "SKIP") {
			b.notes = append(b.notes, "Postfix end to end skipped: "+tailText(string(out), 3))
			return nil
		}
		return fmt.Errorf("end to end through Postfix: %w", err)
	}
	var figs []e2eFigures
	if err := json.Unmarshal(raw, &figs); err != nil {
		return fmt.Errorf("end to end through Postfix: %s: %w", jsonPath, err)
	}
	labels := map[string]string{"none": "no milter", "opes-unix": "(a) opes trace-only, unix",
		"opes-unix-1p": "(a) opes trace-only, unix, GOMAXPROCS=1",
		"opes-tcp":     "(a) opes trace-only, TCP", "null-unix": "(c) null go-milter EOM only, unix",
		"nullc-unix": "(c) null libmilter (C) milter EOM only, unix"}
	var opesUnix *e2eFigures
	for i, f := range figs {
		cpu, note := "", fmt.Sprintf("÷ no milter %.2f; Postfix CPU %.2f ms/msg", f.Ratio, f.Postfix)
		if f.CPU >= 0 {
			cpu = strconv.FormatFloat(f.CPU, 'f', 2, 64)
			note += fmt.Sprintf("; milter %.0f context switches/msg, %.0f %% of its CPU in the kernel", f.Switches, f.System*100)
		}
		b.rows = append(b.rows, row{section: "postfix e2e", scenario: fmt.Sprintf("smtp-source -s 10 -l 4096, %d msgs", f.Messages),
			peer: labels[f.Name], rate: strconv.FormatFloat(f.Rate, 'f', 0, 64), cpu: cpu, note: note})
		if f.Name == "opes-unix" {
			opesUnix = &figs[i]
			b.e2eOpesMessages = f.Messages
		}
	}
	if opesUnix != nil {
		tg.add("end to end through Postfix: trace-only (unix) ≥ 0.95 × no milter", opesUnix.Ratio, 0.95, true, "e2e")
	}
	return nil
}

// memory measures opes-milter's peak RSS (VmHWM) on the realistic policy,
// whose attachments service reads the whole body: one 50 MB message, and
// 500 concurrent sessions. Each uses a fresh daemon, since VmHWM is the
// peak over the life of the process.
func (b *bench) memory(ctx context.Context, tg *targets) error {
	fmt.Fprintln(os.Stderr, "opesbench: memory")
	policy := filepath.Join(b.o.work, "policy-realistic.toml")
	big := load.Multipart(37 << 20)
	cases := []struct {
		name string
		cfg  load.Config
	}{
		{"one " + big.Name + " message", load.Config{Sessions: 1, Messages: 1, Message: big, Timeout: 2 * time.Minute}},
		{"500 sessions, 10 KiB, new conn/msg", load.Config{Sessions: 500, Duration: 4 * time.Second, Message: load.Plain(10 << 10)}},
	}
	for i, c := range cases {
		pe, err := startOpes(b.o.work, fmt.Sprintf("mem%d", i), "(b) opes acl+tag+MIME walk", b.o.opes, policy, []string{"unix"})
		if err != nil {
			pe.stop()
			return err
		}
		ep := pe.ep["unix"]
		idle, _ := load.RSS(ep.pids[0])
		cfg := c.cfg
		cfg.Network, cfg.Address, cfg.PIDs, cfg.WantHeader = ep.network, ep.addr, ep.pids, true
		res, err := load.Run(ctx, cfg)
		peak, perr := load.PeakRSS(ep.pids[0])
		pe.stop()
		if err != nil {
			return fmt.Errorf("memory, %s: %w", c.name, err)
		}
		if perr != nil {
			return fmt.Errorf("memory, %s: %w", c.name, perr)
		}
		note := fmt.Sprintf("peak RSS %.1f MB (idle %.1f MB)", float64(peak)/1e6, float64(idle)/1e6)
		if res.Failed > 0 || res.Messages == 0 {
			note += fmt.Sprintf("; %d failed: %s", res.Failed, res.FirstError)
		}
		b.rows = append(b.rows, row{section: "memory", scenario: c.name, peer: pe.label,
			rate: strconv.FormatFloat(res.Rate(), 'f', 0, 64), p50: ms(res.Percentile(0.5)), p99: ms(res.Percentile(0.99)),
			cpu: ms(res.CPUPerMessage()), note: note})
		if i == 0 {
			t := tg.add("peak RSS < 100 MB for one 50 MB message through a body-inspecting policy", float64(peak)/1e6, 100, false, "")
			if res.Failed > 0 || res.Messages != 1 {
				t.extra = "; the message did not pass"
			}
		}
	}
	return nil
}

// profiles reruns, with -cpuprofile, every load scenario whose target was
// missed (and, for the trace-only target, the null milter under the same
// load), and keeps pprof's top functions and a breakdown of where the CPU
// time per message goes.
func (b *bench) profiles(ctx context.Context, tg *targets, plain, multi *load.Message) error {
	for _, t := range tg.list {
		if t.met() || t.profileKey == "" {
			continue
		}
		var runs []profiled
		switch t.profileKey {
		case "e2e":
			runs = append(runs, profiled{label: "opes-milter in Postfix (unix)", prof: filepath.Join(b.o.work, "e2e-opes-unix.pprof"), msgs: b.e2eOpesMessages})
		case "a-plain":
			for _, who := range []string{"a", "c-eom"} {
				p, err := b.profileRun(ctx, who, plain)
				if err != nil {
					return err
				}
				runs = append(runs, p)
			}
		case "b-multi":
			p, err := b.profileRun(ctx, "b", multi)
			if err != nil {
				return err
			}
			runs = append(runs, p)
		}
		var sb strings.Builder
		for _, r := range runs {
			fmt.Fprintf(&sb, "%s\n", r.summary)
		}
		sb.WriteString("\nWhere the CPU time per message goes (ms/msg of samples with the function on the stack; rows overlap):\n\n")
		sb.WriteString("| on the stack |")
		for _, r := range runs {
			fmt.Fprintf(&sb, " %s |", r.label)
		}
		sb.WriteString("\n|---|" + strings.Repeat("--:|", len(runs)) + "\n")
		for _, bk := range buckets {
			fmt.Fprintf(&sb, "| %s |", bk.name)
			for _, r := range runs {
				sec, err := focusSeconds(ctx, r.prof, bk.focus)
				if err != nil {
					fmt.Fprintf(&sb, " %v |", err)
					continue
				}
				fmt.Fprintf(&sb, " %.3f |", sec*1000/float64(max(r.msgs, 1)))
			}
			sb.WriteString("\n")
		}
		for _, r := range runs {
			flat, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=15", r.prof).CombinedOutput()
			if err != nil {
				fmt.Fprintf(&sb, "\npprof %s failed: %v\n%s", r.prof, err, flat)
				continue
			}
			cum, _ := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=40", r.prof).CombinedOutput()
			text := r.prof + ".top.txt"
			_ = os.WriteFile(text, append(append(flat, '\n'), cum...), 0o644)
			fmt.Fprintf(&sb, "\n%s: profile %s (flat and cumulative top in %s):\n%s", r.label, r.prof, text, tailText(string(flat), 16))
		}
		t.profile = sb.String()
	}
	return nil
}

// buckets are the parts of a milter's work, as pprof focus expressions.
var buckets = []struct{ name, focus string }{
	{"total", "."},
	{"read packets (guard, go-milter wire)", `guardConn\)\.Read|wire\.ReadPacket`},
	{"write replies", `writePacket|guardConn\)\.Write`},
	{"accept + negotiate", `\)\.Accept$|negotiate`},
	{"bridge (milter.backend), OPES included", `milter\.\(\*backend\)`},
	{"OPES session (opes.Session)", `opes\.\(\*Session\)`},
	{"per-message log line (log/slog)", `log/slog`},
	{"MIME walk (opes/attachments)", `opes/attachments`},
	{"memory allocation (mallocgc)", `runtime\.mallocgc`},
	{"garbage collector", `gcBgMarkWorker|bgsweep|bgscavenge|gcAssist`},
	{"scheduler (park, findRunnable)", `runtime\.(schedule|findRunnable|park_m|mcall)`},
}

// profiled is one profile with the messages it covers.
type profiled struct {
	label, prof, summary string
	msgs                 int
}

// profileRun starts a fresh opes-milter ("a", "b") or null milter
// ("c-eom") with -cpuprofile on a unix socket and drives it for 4 s.
func (b *bench) profileRun(ctx context.Context, who string, msg *load.Message) (profiled, error) {
	fmt.Fprintf(os.Stderr, "opesbench: profiling %s with %s\n", who, msg.Name)
	prof := filepath.Join(b.o.work, fmt.Sprintf("profile-%s-%s.pprof", who, msg.Name))
	var pe *peer
	var err error
	switch who {
	case "c-eom":
		pe, err = startNull(b.o.work, "prof-"+who, "(c) null go-milter, EOM only", b.o.null, false, "-cpuprofile", prof)
	case "b":
		pe, err = startOpes(b.o.work, "prof-"+who, "(b) opes acl+tag+MIME walk", b.o.opes, filepath.Join(b.o.work, "policy-realistic.toml"), []string{"unix"}, "-cpuprofile", prof)
	default:
		pe, err = startOpes(b.o.work, "prof-"+who, "(a) opes trace-only", b.o.opes, "", []string{"unix"}, "-cpuprofile", prof)
	}
	if err != nil {
		pe.stop()
		return profiled{}, err
	}
	ep := pe.ep["unix"]
	res, err := load.Run(ctx, load.Config{Network: ep.network, Address: ep.addr, Sessions: b.o.sessions,
		Duration: 4 * time.Second, Message: msg, WantHeader: true, PIDs: ep.pids})
	pe.stop() // writes the profile
	if err != nil {
		return profiled{}, err
	}
	return profiled{label: pe.label, prof: prof, msgs: res.Messages,
		summary: fmt.Sprintf("profiled run of %s: unix, %d sessions, new conn/msg, %s: %d msgs, %.0f msg/s, CPU %s ms/msg",
			pe.label, b.o.sessions, msg.Name, res.Messages, res.Rate(), ms(res.CPUPerMessage()))}, nil
}

// focusSeconds is the CPU time of the samples whose stack matches focus.
func focusSeconds(ctx context.Context, prof, focus string) (float64, error) {
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=1000000", "-focus="+focus, prof).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "matched no samples") || strings.Contains(string(out), "no samples") {
			return 0, nil
		}
		return 0, fmt.Errorf("pprof: %v", err)
	}
	// "Showing nodes accounting for 0.35s, 28.93% of 1.21s total"
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Showing nodes accounting for "); ok {
			v, _, _ := strings.Cut(rest, ",")
			d, err := time.ParseDuration(v)
			if err != nil {
				return 0, fmt.Errorf("pprof total %q: %w", v, err)
			}
			return d.Seconds(), nil
		}
	}
	return 0, nil
}

func tailText(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// target is one of issue 8's targets with the measured value.
type target struct {
	name         string
	value, bound float64
	atLeast      bool // value must be ≥ bound; else < bound
	profileKey   string
	profile      string
	extra        string
}

func (t *target) met() bool {
	if t.extra != "" {
		return false
	}
	if t.atLeast {
		return t.value >= t.bound
	}
	return t.value < t.bound
}

func (t *target) verdict() string {
	op := "<"
	if t.atLeast {
		op = "≥"
	}
	v := "NOT MET"
	if t.met() {
		v = "met"
	}
	return fmt.Sprintf("%.2f %s %g: %s%s", t.value, op, t.bound, v, t.extra)
}

type targets struct{ list []*target }

func (ts *targets) add(name string, value, bound float64, atLeast bool, profileKey string) *target {
	t := &target{name: name, value: value, bound: bound, atLeast: atLeast, profileKey: profileKey}
	ts.list = append(ts.list, t)
	return t
}

// ratio adds a target on the rate of one peer to another in one scenario.
func (ts *targets) ratio(name string, res map[string]load.Result, num, den string, bound float64, profileKey string) {
	n, okN := res[num]
	d, okD := res[den]
	if !okN || !okD || d.Rate() == 0 {
		t := ts.add(name, 0, bound, true, "")
		t.extra = fmt.Sprintf("; not measured (%s or %s missing)", num, den)
		return
	}
	ts.add(name, n.Rate()/d.Rate(), bound, true, profileKey)
}

func (b *bench) print(w io.Writer, started time.Time, tg *targets) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\nopes-milter benchmark, %s, host %s, %d CPUs (GOMAXPROCS %d), %s, wall time %s\n",
		started.UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), runtime.GOMAXPROCS(0), loadavg(),
		time.Since(started).Round(time.Second))
	fmt.Fprintf(w, "Load driver: go-milter client, %v per set-up × %d rounds in turns; p50/p99 per message "+
		"(new conn/msg: from connect to the end-of-message reply); CPU = milter process tree per message.\n", b.o.slice, b.o.rounds)
	fmt.Fprintln(w, "÷ (c) = msg/s over the null go-milter (EOM only) in the same scenario; ÷ (d) = over MIMEDefang doing the same work (per-part filter for (b), header filter otherwise).")
	fmt.Fprintln(w, "The driver sends each stage's macros like Postfix 3.7: the milter's list, else Postfix's default list, also for stages negotiated away (bench/load).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| part | scenario | set-up | msg/s | p50 ms | p99 ms | CPU ms/msg | ÷ (c) | ÷ (d) | note |")
	fmt.Fprintln(w, "|---|---|---|--:|--:|--:|--:|--:|--:|---|")
	dash := func(s string) string {
		if s == "" {
			return "—"
		}
		return s
	}
	for _, r := range b.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.section, r.scenario, dash(r.peer), dash(r.rate),
			dash(r.p50), dash(r.p99), dash(r.cpu), dash(r.toC), dash(r.toD), dash(r.note))
	}
	for _, n := range b.notes {
		fmt.Fprintln(w, "\nnote:", n)
	}
	for _, t := range tg.list {
		if t.profile != "" {
			fmt.Fprintf(w, "\nNOT MET: %s\n%s\n", t.name, t.profile)
		}
	}
	fmt.Fprintf(w, "\nlogs, profiles and sockets: %s\n", b.o.work)
}

func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}
