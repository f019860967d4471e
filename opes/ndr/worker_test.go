package ndr

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clock is a settable time source, so back-off and MaxAge are tested
// without sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type auditLog struct {
	mu      sync.Mutex
	entries []string
}

func (a *auditLog) record(kind, traceID, detail string) {
	a.mu.Lock()
	a.entries = append(a.entries, kind+" "+traceID)
	a.mu.Unlock()
}

func (a *auditLog) count(kind string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.entries {
		if strings.HasPrefix(e, kind+" ") {
			n++
		}
	}
	return n
}

func newWorker(t *testing.T, ob Outbox, addr string, clk *clock, audit *auditLog) *Worker {
	return &Worker{
		Outbox:  ob,
		Sender:  &Relay{Addr: addr, HeloName: "mx1.example.net", Timeout: 5 * time.Second},
		Backoff: Backoff{Initial: time.Minute, Max: time.Hour},
		MaxAge:  5 * 24 * time.Hour,
		Audit:   audit.record,
		Now:     clk.now,
		Lease:   time.Minute,
	}
}

func TestWorkerDeliversTheBuiltReport(t *testing.T) {
	ctx := context.Background()
	srv := startRelay(t, nil)
	st := openStore(t)
	clk := &clock{t: time.Now()}
	var audit auditLog
	w := newWorker(t, st, srv.addr, clk, &audit)
	data := buildSample(t)
	if err := w.Submit(ctx, "7QF3X2", data, "<alice@example.org>"); err != nil {
		t.Fatal(err)
	}
	if err := w.Submit(ctx, "x", data, "<>"); err == nil {
		t.Error("Submit accepted a null reverse-path")
	}
	sent, retried, failed, err := w.RunOnce(ctx)
	if err != nil || sent != 1 || retried != 0 || failed != 0 {
		t.Fatalf("RunOnce = %d %d %d %v", sent, retried, failed, err)
	}
	msgs := srv.messages()
	if len(msgs) != 1 || msgs[0].From != "" || msgs[0].To[0] != "alice@example.org" || !bytes.Equal(msgs[0].Data, data) {
		t.Fatalf("arrived: %+v", msgs)
	}
	if left, _ := st.ListOutbox(ctx, "", 0); len(left) != 0 {
		t.Errorf("outbox still holds %d items", len(left))
	}
	if audit.count(AuditQueued) != 1 || audit.count(AuditSent) != 1 {
		t.Errorf("audit %v", audit.entries)
	}
}

func TestWorkerRetriesWhileRelayIsDown(t *testing.T) {
	ctx := context.Background()
	srv := startRelay(t, nil)
	srv.stop()
	st := openStore(t)
	clk := &clock{t: time.Now()}
	var audit auditLog
	w := newWorker(t, st, srv.addr, clk, &audit)
	data := buildSample(t)
	if err := w.Submit(ctx, "7QF3X2", data, "alice@example.org"); err != nil {
		t.Fatal(err)
	}

	// Down: retried, with growing delays; nothing is due in between.
	for i, delay := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute} {
		sent, retried, failed, err := w.RunOnce(ctx)
		if err != nil || sent != 0 || retried != 1 || failed != 0 {
			t.Fatalf("attempt %d: RunOnce = %d %d %d %v", i+1, sent, retried, failed, err)
		}
		items, _ := st.ListOutbox(ctx, store.Queued, 0)
		if len(items) != 1 || items[0].Attempts != i+1 || items[0].LastError == "" ||
			(items[0].NextAttempt.Sub(clk.now())-delay).Abs() > time.Second {
			t.Fatalf("attempt %d: outbox %+v, want next in %v", i+1, items, delay)
		}
		clk.advance(delay - time.Second)
		if s, r, f, _ := w.RunOnce(ctx); s+r+f != 0 {
			t.Fatalf("attempt %d: item claimed before its back-off ran out", i+1)
		}
		clk.advance(time.Second)
	}

	// Up again: delivered, exactly once.
	srv.start()
	sent, retried, failed, err := w.RunOnce(ctx)
	if err != nil || sent != 1 || retried != 0 || failed != 0 {
		t.Fatalf("after restart: RunOnce = %d %d %d %v", sent, retried, failed, err)
	}
	clk.advance(24 * time.Hour)
	if s, r, f, _ := w.RunOnce(ctx); s+r+f != 0 {
		t.Error("delivered report claimed again")
	}
	if msgs := srv.messages(); len(msgs) != 1 || !bytes.Equal(msgs[0].Data, data) {
		t.Fatalf("%d messages arrived", len(msgs))
	}
}

func TestWorkerKeepsPermanentFailures(t *testing.T) {
	ctx := context.Background()
	srv := startRelay(t, nil)
	srv.setAnswer(answerPermRcpt)
	st := openStore(t)
	clk := &clock{t: time.Now()}
	var audit auditLog
	w := newWorker(t, st, srv.addr, clk, &audit)
	if err := w.Submit(ctx, "7QF3X2", buildSample(t), "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	sent, retried, failed, err := w.RunOnce(ctx)
	if err != nil || sent != 0 || retried != 0 || failed != 1 {
		t.Fatalf("RunOnce = %d %d %d %v", sent, retried, failed, err)
	}
	// The double bounce: no further attempt, no further report, kept.
	srv.setAnswer(answerOK)
	clk.advance(48 * time.Hour)
	if s, r, f, _ := w.RunOnce(ctx); s+r+f != 0 {
		t.Error("failed report attempted again")
	}
	items, err := st.ListOutbox(ctx, store.Failed, 0)
	if err != nil || len(items) != 1 || items[0].TraceID != "7QF3X2" || !strings.Contains(items[0].LastError, "550") {
		t.Fatalf("failed items %+v: %v", items, err)
	}
	if audit.count(AuditFailed) != 1 || len(srv.messages()) != 0 {
		t.Errorf("audit %v, %d messages", audit.entries, len(srv.messages()))
	}
}

func TestWorkerGivesUpAfterMaxAge(t *testing.T) {
	ctx := context.Background()
	srv := startRelay(t, nil)
	srv.setAnswer(answerTempRcpt)
	st := openStore(t)
	clk := &clock{t: time.Now()}
	var audit auditLog
	w := newWorker(t, st, srv.addr, clk, &audit)
	if err := w.Submit(ctx, "7QF3X2", buildSample(t), "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	attempts := 0
	for attempts < 100 { // bounded: 2 h steps reach 5 days in about 60 rounds
		attempts++
		sent, retried, failed, err := w.RunOnce(ctx)
		if err != nil || sent != 0 {
			t.Fatalf("attempt %d: %d %d %d %v", attempts, sent, retried, failed, err)
		}
		if failed == 1 {
			break
		}
		if retried != 1 {
			t.Fatalf("attempt %d: nothing was due", attempts)
		}
		clk.advance(2 * time.Hour) // more than the longest back-off: due every round
	}
	if got := time.Until(clk.now()); got < 5*24*time.Hour-time.Minute || got > 5*24*time.Hour+2*time.Hour {
		t.Errorf("gave up after %v", got)
	}
	items, _ := st.ListOutbox(ctx, store.Failed, 0)
	if len(items) != 1 || !strings.Contains(items[0].LastError, "not delivered after") || audit.count(AuditFailed) != 1 {
		t.Fatalf("failed items %+v, audit %v", items, audit.entries)
	}
}

// Two workers drain one outbox concurrently: every report arrives exactly
// once.
func TestWorkersDeliverEachReportOnce(t *testing.T) {
	srv := startRelay(t, nil)
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 30
	var audit auditLog
	mk := func() *Worker {
		return &Worker{Outbox: st, Sender: &Relay{Addr: srv.addr, Timeout: 5 * time.Second},
			Batch: 3, Interval: 20 * time.Millisecond, Audit: audit.record}
	}
	w1, w2 := mk(), mk()
	var wg sync.WaitGroup
	for _, w := range []*Worker{w1, w2} {
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	for i := 0; i < n; i++ {
		w := w1
		if i%2 == 1 {
			w = w2
		}
		data := bytes.Replace(buildSample(t), []byte("7QF3X2"), fmt.Appendf(nil, "TR%04d", i), -1)
		if err := w.Submit(ctx, fmt.Sprintf("TR%04d", i), data, "alice@example.org"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, func() bool { return len(srv.messages()) >= n })
	// A little longer: a duplicate would show up now.
	time.Sleep(200 * time.Millisecond)
	cancel()
	wg.Wait()

	seen := map[string]int{}
	for _, m := range srv.messages() {
		i := bytes.Index(m.Data, []byte("Final-Log-ID: "))
		seen[string(m.Data[i+14:i+20])]++
	}
	for i := 0; i < n; i++ {
		if id := fmt.Sprintf("TR%04d", i); seen[id] != 1 {
			t.Errorf("%s delivered %d times", id, seen[id])
		}
	}
	if len(srv.messages()) != n || audit.count(AuditSent) != n {
		t.Errorf("%d messages, %d sent audits, want %d", len(srv.messages()), audit.count(AuditSent), n)
	}
	if left, _ := st.ListOutbox(context.Background(), "", 0); len(left) != 0 {
		t.Errorf("%d items left", len(left))
	}
}

// Run picks up a submitted report at once and stops cleanly.
func TestWorkerRunWakesOnSubmit(t *testing.T) {
	srv := startRelay(t, nil)
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &Worker{Outbox: st, Sender: &Relay{Addr: srv.addr, Timeout: 5 * time.Second}, Interval: time.Hour}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	time.Sleep(50 * time.Millisecond) // Run's first round finds nothing
	if err := w.Submit(ctx, "7QF3X2", buildSample(t), "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return len(srv.messages()) == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestBackoff(t *testing.T) {
	var zero Backoff
	for failures, want := range map[int]time.Duration{0: time.Minute, 1: time.Minute, 2: 2 * time.Minute,
		3: 4 * time.Minute, 6: 32 * time.Minute, 7: time.Hour, 100: time.Hour} {
		if got := zero.Delay(failures); got != want {
			t.Errorf("Delay(%d) = %v, want %v", failures, got, want)
		}
	}
	b := Backoff{Initial: 10 * time.Second, Max: 30 * time.Second}
	if b.Delay(1) != 10*time.Second || b.Delay(2) != 20*time.Second || b.Delay(3) != 30*time.Second {
		t.Errorf("custom back-off %v %v %v", b.Delay(1), b.Delay(2), b.Delay(3))
	}
}

func TestWorkerQueue(t *testing.T) {
	ctx := context.Background()
	srv := startRelay(t, nil)
	st := openStore(t)
	w := &Worker{Outbox: st, Sender: &Relay{Addr: srv.addr, Timeout: 5 * time.Second}}

	r := sampleReport()
	r.Recipients[1].Notify = "NEVER"
	n, err := w.Queue(ctx, r)
	if err != nil || n != 1 {
		t.Fatalf("Queue = %d, %v", n, err)
	}
	r.ReversePath = "<>"
	if n, err := w.Queue(ctx, r); err != nil || n != 0 {
		t.Fatalf("Queue for the null sender = %d, %v", n, err)
	}
	if sent, _, _, err := w.RunOnce(ctx); err != nil || sent != 1 {
		t.Fatalf("RunOnce sent %d: %v", sent, err)
	}
	m := srv.messages()[0]
	if m.To[0] != "alice@example.org" || !bytes.Contains(m.Data, []byte("Final-Recipient: rfc822; paul@example.net")) ||
		bytes.Contains(m.Data, []byte("Final-Recipient: rfc822; Mary.Smith")) {
		t.Errorf("report:\n%s", m.Data)
	}
}

// A relay that hangs cannot hold an item past its lease: the send is cut
// off and retried later.
func TestWorkerCutsSendInsideLease(t *testing.T) {
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent: never greets
		}
	}()
	st := openStore(t)
	w := &Worker{Outbox: st, Sender: &Relay{Addr: l.Addr().String(), Timeout: time.Minute}, Lease: 400 * time.Millisecond}
	if err := w.Submit(ctx, "7QF3X2", buildSample(t), "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sent, retried, failed, err := w.RunOnce(ctx)
	if err != nil || sent != 0 || retried != 1 || failed != 0 || time.Since(start) > 10*time.Second {
		t.Fatalf("RunOnce = %d %d %d %v after %v", sent, retried, failed, err, time.Since(start))
	}
}
