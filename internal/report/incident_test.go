package report

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

func TestIncidentFilterAndWebhook(t *testing.T) {
	var mu sync.Mutex
	var got []opes.TransactionRecord
	fails := 1 // the first POST fails: the retry must deliver it
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var rec opes.TransactionRecord
		if err := json.Unmarshal(b, &rec); err != nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("body %q: %v", b, err)
		}
		got = append(got, rec)
	}))
	defer srv.Close()

	var errs []error
	wh := NewWebhook(srv.URL, 2*time.Second, func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() })
	r := Incidents{Next: wh}
	r.Report(&opes.TransactionRecord{TraceID: "ok", Outcome: opes.OutcomeInfo{Verdict: "accept"}})
	r.Report(&opes.TransactionRecord{TraceID: "virus", Outcome: opes.OutcomeInfo{Stage: "eom", Verdict: "reject", Code: 554}})
	r.Report(&opes.TransactionRecord{TraceID: "rcpt", Outcome: opes.OutcomeInfo{Verdict: "accept"},
		Services: []opes.ServiceInfo{{URI: "https://x.example/opes/svc/acl", Action: "rejected"}}})
	r.Report(&opes.TransactionRecord{TraceID: "held", Outcome: opes.OutcomeInfo{Verdict: "quarantine"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := wh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0].TraceID != "virus" || got[1].TraceID != "rcpt" || got[2].TraceID != "held" || len(errs) != 0 {
		t.Fatalf("events %+v, errors %v", got, errs)
	}
}

func TestWebhookNeverBlocksMail(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	defer srv.Close()
	defer close(block)
	var mu sync.Mutex
	dropped := 0
	wh := NewWebhook(srv.URL, time.Second, func(error) { mu.Lock(); dropped++; mu.Unlock() })
	start := time.Now()
	for range WebhookQueue + 50 {
		wh.Report(&opes.TransactionRecord{TraceID: "x", Outcome: opes.OutcomeInfo{Verdict: "reject"}})
	}
	if time.Since(start) > time.Second {
		t.Fatalf("Report blocked for %v", time.Since(start))
	}
	mu.Lock()
	if dropped < 49 {
		t.Errorf("%d records dropped, want about 50 over the queue bound", dropped)
	}
	mu.Unlock()
}
