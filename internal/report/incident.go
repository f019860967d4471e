package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

// IsIncident reports whether a record is a security incident worth an
// event: the message or a recipient was refused, or the message was held.
func IsIncident(rec *opes.TransactionRecord) bool {
	if rec.Outcome.Verdict != "accept" && rec.Outcome.Verdict != "aborted" {
		return true
	}
	for _, s := range rec.Services {
		if s.Action == "rejected" || s.Action == "quarantined" {
			return true
		}
	}
	return false
}

// Incidents passes only incident records on.
type Incidents struct{ Next opes.Reporter }

// Report implements opes.Reporter.
func (f Incidents) Report(rec *opes.TransactionRecord) {
	if IsIncident(rec) {
		f.Next.Report(rec)
	}
}

// Multi sends every record to each reporter.
type Multi []opes.Reporter

// Report implements opes.Reporter.
func (m Multi) Report(rec *opes.TransactionRecord) {
	for _, r := range m {
		r.Report(rec)
	}
}

// Webhook POSTs records as JSON to a URL from a bounded queue, so a slow
// or dead receiver never holds up mail: when the queue is full the record
// is dropped and onError is told.
type Webhook struct {
	url     string
	client  *http.Client
	onError func(error)
	queue   chan []byte
	done    sync.WaitGroup
}

// WebhookQueue is how many records may wait for the receiver.
const WebhookQueue = 1000

// NewWebhook starts the sender. Close stops it after the queue drained
// (or ctx ends).
func NewWebhook(url string, timeout time.Duration, onError func(error)) *Webhook {
	w := &Webhook{url: url, client: &http.Client{Timeout: timeout}, onError: onError, queue: make(chan []byte, WebhookQueue)}
	w.done.Add(1)
	go w.run()
	return w
}

// Report implements opes.Reporter.
func (w *Webhook) Report(rec *opes.TransactionRecord) {
	body, err := json.Marshal(rec)
	if err != nil {
		w.onError(fmt.Errorf("webhook: encode: %w", err))
		return
	}
	select {
	case w.queue <- body:
	default:
		w.onError(fmt.Errorf("webhook: queue full (%d), event for trace id %s dropped", WebhookQueue, rec.TraceID))
	}
}

func (w *Webhook) run() {
	defer w.done.Done()
	for body := range w.queue {
		// One retry: a receiver restarting should not lose events, a
		// dead one must not stall the queue.
		for attempt := 0; attempt < 2; attempt++ {
			err := w.post(body)
			if err == nil {
				break
			}
			if attempt == 1 {
				w.onError(err)
			} else {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
}

func (w *Webhook) post(body []byte) error {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: post: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s answered %s", w.url, resp.Status)
	}
	return nil
}

// Close stops accepting records and waits until the queued ones were
// sent or ctx ends.
func (w *Webhook) Close(ctx context.Context) error {
	close(w.queue)
	done := make(chan struct{})
	go func() { w.done.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("webhook: %d events not sent: %w", len(w.queue), ctx.Err())
	}
}
