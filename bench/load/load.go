// Package load drives a milter the way an MTA does, from many concurrent
// sessions at once, and measures it: messages per second, the latency of
// each message, and the CPU time the milter's processes spent per
// message. It speaks the milter protocol through go-milter's client, so
// every milter (opes-milter, a go-milter, libmilter-based MIMEDefang) is
// driven by the same code.
package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// Config says what to drive and for how long.
type Config struct {
	Network string // "unix" or "tcp"
	Address string // socket path or host:port

	// Sessions is the number of concurrent sessions (default 16).
	Sessions int
	// PerConn is the number of messages sent over one milter connection
	// before it is closed: 1 (the default) opens a connection per message,
	// as Postfix does for one message per SMTP session; more reuses the
	// connection, as for an SMTP session that carries several messages.
	PerConn int
	// Messages bounds the run by count; Duration bounds it by time. At
	// least one must be set; the run ends at whichever comes first.
	Messages int
	Duration time.Duration

	Message *Message
	// WantHeader makes a message count as failed unless the milter
	// accepted it and added (or inserted) at least one header field:
	// every filter in the benchmark does, so this checks it did its work.
	WantHeader bool
	// Timeout bounds each read from and write to the milter (default 30 s).
	Timeout time.Duration
	// PIDs are the milter's processes; the CPU time they and their
	// descendants spend during the run is reported. Empty: not measured.
	PIDs []int
}

// Result is what a run measured.
type Result struct {
	Messages   int             // messages that completed as wanted
	Failed     int             // messages that did not (error, refusal, missing header)
	FirstError string          // the first failure, for the report
	Elapsed    time.Duration   // wall time of the run
	Latencies  []time.Duration // per completed message, sorted
	CPU        time.Duration   // CPU time of PIDs and descendants; -1 if not measured
}

// Rate is completed messages per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Messages) / r.Elapsed.Seconds()
}

// Percentile returns the q-th quantile (0 < q ≤ 1) of the latencies.
func (r Result) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q*float64(len(r.Latencies))+0.5) - 1
	i = max(0, min(i, len(r.Latencies)-1))
	return r.Latencies[i]
}

// CPUPerMessage is the milter's CPU time per completed message, or -1.
func (r Result) CPUPerMessage() time.Duration {
	if r.CPU < 0 || r.Messages == 0 {
		return -1
	}
	return r.CPU / time.Duration(r.Messages)
}

// Merge adds another run's figures to r (runs of one set-up taken in
// turns with other set-ups).
func (r *Result) Merge(o Result) {
	r.Messages += o.Messages
	r.Failed += o.Failed
	if r.FirstError == "" {
		r.FirstError = o.FirstError
	}
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	slices.Sort(r.Latencies)
	if r.CPU >= 0 && o.CPU >= 0 {
		r.CPU += o.CPU
	} else {
		r.CPU = -1
	}
}

// Run drives the milter until the count or the time is reached, or ctx
// ends. It returns an error only when the run could not take place (bad
// configuration, no connection at all); failures of single messages are
// counted in the Result.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Message == nil {
		return Result{}, errors.New("load: no message")
	}
	if cfg.Messages <= 0 && cfg.Duration <= 0 {
		return Result{}, errors.New("load: neither a message count nor a duration")
	}
	if cfg.Sessions <= 0 {
		cfg.Sessions = 16
	}
	if cfg.PerConn <= 0 {
		cfg.PerConn = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	// A probe connection first: a milter that is not there is an error
	// of the run, not thousands of failed messages.
	probe, err := newClient(cfg).Session(nil)
	if err != nil {
		return Result{}, fmt.Errorf("load: connect to %s:%s: %w", cfg.Network, cfg.Address, err)
	}
	_ = probe.Close()

	var cpu0 time.Duration = -1
	if len(cfg.PIDs) > 0 {
		cpu0 = TreeCPU(cfg.PIDs)
	}
	var (
		reserved atomic.Int64
		wg       sync.WaitGroup
		workers  = make([]worker, cfg.Sessions)
	)
	// take reserves one message of the count; false when the run is over.
	take := func() bool {
		if ctx.Err() != nil {
			return false
		}
		return cfg.Messages <= 0 || reserved.Add(1) <= int64(cfg.Messages)
	}
	start := time.Now()
	for i := range workers {
		workers[i] = worker{cfg: cfg, client: newClient(cfg), id: i}
		wg.Go(func() { workers[i].run(take) })
	}
	wg.Wait()
	res := Result{Elapsed: time.Since(start), CPU: -1}
	if cpu0 >= 0 {
		res.CPU = TreeCPU(cfg.PIDs) - cpu0
	}
	for _, w := range workers {
		res.Messages += len(w.lat)
		res.Failed += w.failed
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
		res.Latencies = append(res.Latencies, w.lat...)
	}
	slices.Sort(res.Latencies)
	return res, nil
}

// postfixMacros are the macros Postfix 3.7 sends for each stage
// (postconf -d milter_*_macros) unless the milter asked for a list of its
// own for that stage (milter.c, MILTER_MACRO_EVAL). Postfix sends a
// stage's macros even when the milter negotiated the stage away
// (milter8.c: "Send the macros for this event, even when we're not
// reporting the event itself"). go-milter's client (with patch 7) does
// the same with these defaults, so every peer reads the macro packets it
// would read behind Postfix.
var postfixMacros = map[gomilter.MacroStage][]gomilter.MacroName{
	gomilter.StageConnect: {"j", gomilter.MacroDaemonName, gomilter.MacroDaemonAddr, "v", "_"},
	gomilter.StageHelo:    {gomilter.MacroTlsVersion, gomilter.MacroCipher, gomilter.MacroCipherBits, gomilter.MacroCertSubject, gomilter.MacroCertIssuer},
	gomilter.StageMail:    {gomilter.MacroQueueId, gomilter.MacroAuthType, gomilter.MacroAuthAuthen, gomilter.MacroAuthAuthor, gomilter.MacroMailAddr, gomilter.MacroMailHost, gomilter.MacroMailMailer},
	gomilter.StageRcpt:    {gomilter.MacroQueueId, gomilter.MacroRcptAddr, gomilter.MacroRcptHost, gomilter.MacroRcptMailer},
	gomilter.StageData:    {gomilter.MacroQueueId},
	gomilter.StageEOH:     {gomilter.MacroQueueId},
	gomilter.StageEOM:     {gomilter.MacroQueueId},
}

// postfixMacroValues are the values Postfix has for an unauthenticated
// client without TLS relaying to a remote domain (macros without a value
// are not sent).
var postfixMacroValues = map[gomilter.MacroName]string{
	"j":                      "mx.bench.test",
	gomilter.MacroDaemonName: "bench",
	gomilter.MacroDaemonAddr: "127.0.0.1",
	"v":                      "Postfix 3.7.11",
	"_":                      "client.example.org [198.51.100.7]",
	gomilter.MacroMailAddr:   "alice@example.org",
	gomilter.MacroRcptAddr:   "bob@example.net",
	gomilter.MacroRcptHost:   "example.net",
	gomilter.MacroRcptMailer: "smtp",
}

func newClient(cfg Config) *gomilter.Client {
	opts := []gomilter.Option{
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks),
		gomilter.WithDialer(&net.Dialer{Timeout: cfg.Timeout}),
		gomilter.WithReadTimeout(cfg.Timeout), gomilter.WithWriteTimeout(cfg.Timeout),
	}
	for stage, names := range postfixMacros {
		opts = append(opts, gomilter.WithMacroRequest(stage, names))
	}
	return gomilter.NewClient(cfg.Network, cfg.Address, opts...)
}

// worker is one concurrent session: a sequence of milter connections.
type worker struct {
	cfg      Config
	client   *gomilter.Client
	id       int
	seq      int
	lat      []time.Duration
	failed   int
	firstErr error
}

func (w *worker) fail(err error) {
	w.failed++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// run opens connections and sends PerConn messages over each until take
// says the run is over.
func (w *worker) run(take func() bool) {
	for take() {
		w.connection(take)
	}
}

// connection sends up to PerConn messages over one milter connection; the
// first message has already been reserved by the caller. For one message
// per connection the latency includes connecting and negotiating, since
// the MTA pays for them per message too.
func (w *worker) connection(take func() bool) {
	t0 := time.Now()
	macros := gomilter.NewMacroBag()
	for name, value := range postfixMacroValues {
		macros.Set(name, value)
	}
	s, err := w.client.Session(macros)
	if err != nil {
		w.fail(err)
		time.Sleep(10 * time.Millisecond) // do not spin on a dead milter
		return
	}
	defer s.Close()
	if err := w.open(s); err != nil {
		w.fail(err)
		return
	}
	for i := 0; ; i++ {
		if i > 0 {
			if i >= w.cfg.PerConn || !take() {
				return
			}
			t0 = time.Now()
		}
		w.seq++
		macros.Set(gomilter.MacroQueueId, fmt.Sprintf("B%03dQ%07d", w.id, w.seq))
		if err := w.message(s); err != nil {
			w.fail(err)
			return // the session is in an unknown state: start a new one
		}
		w.lat = append(w.lat, time.Since(t0))
	}
}

// open sends the connection-level stages.
func (w *worker) open(s *gomilter.ClientSession) error {
	if act, err := s.Conn("client.example.org", gomilter.FamilyInet, 40000+uint16(w.id), "198.51.100.7"); err != nil {
		return fmt.Errorf("connect: %w", err)
	} else if act.Type != gomilter.ActionContinue && act.Type != gomilter.ActionAccept {
		return fmt.Errorf("connect: refused: %s", act.SMTPReply)
	}
	if act, err := s.Helo("client.example.org"); err != nil {
		return fmt.Errorf("helo: %w", err)
	} else if act.Type != gomilter.ActionContinue && act.Type != gomilter.ActionAccept {
		return fmt.Errorf("helo: refused: %s", act.SMTPReply)
	}
	return nil
}

// message sends one transaction, from MAIL to the end of the message,
// and checks the outcome.
func (w *worker) message(s *gomilter.ClientSession) error {
	steps := []struct {
		name string
		do   func() (*gomilter.Action, error)
	}{
		{"mail", func() (*gomilter.Action, error) { return s.Mail("<alice@example.org>", "") }},
		{"rcpt", func() (*gomilter.Action, error) { return s.Rcpt("<bob@example.net>", "") }},
		{"data", s.DataStart},
	}
	for _, st := range steps {
		act, err := st.do()
		if err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		if act.Type != gomilter.ActionContinue {
			return fmt.Errorf("%s: not continued: %v %s", st.name, act.Type, act.SMTPReply)
		}
	}
	for _, f := range w.cfg.Message.Header {
		if _, err := s.HeaderField(f.Name, f.Value, nil); err != nil {
			return fmt.Errorf("header %s: %w", f.Name, err)
		}
	}
	if act, err := s.HeaderEnd(); err != nil {
		return fmt.Errorf("end of header: %w", err)
	} else if act.Type != gomilter.ActionContinue {
		return fmt.Errorf("end of header: not continued: %v %s", act.Type, act.SMTPReply)
	}
	mods, act, err := s.BodyReadFrom(bytes.NewReader(w.cfg.Message.Body))
	if err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if act.Type != gomilter.ActionAccept && act.Type != gomilter.ActionContinue {
		return fmt.Errorf("end of message: not accepted: %v %s", act.Type, act.SMTPReply)
	}
	if w.cfg.WantHeader && !slices.ContainsFunc(mods, func(m gomilter.ModifyAction) bool {
		return m.Type == gomilter.ActionAddHeader || m.Type == gomilter.ActionInsertHeader
	}) {
		return fmt.Errorf("end of message: accepted without adding a header field (%d modifications)", len(mods))
	}
	return nil
}
