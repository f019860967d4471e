package opes

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

type recordedMetrics struct {
	mu       sync.Mutex
	outcomes []string
	calls    []string
}

func (m *recordedMetrics) Outcome(st Stage, v VerdictKind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.outcomes = append(m.outcomes, st.String()+"/"+v.String())
}

func (m *recordedMetrics) ServiceCall(name string, st Stage, _ time.Duration, status string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := name + "/" + st.String()
	if status != "" {
		s += "/" + status
	}
	m.calls = append(m.calls, s)
}

func (m *recordedMetrics) Bypass(decision, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "bypass/"+decision+"/"+reason)
}

func TestMetrics(t *testing.T) {
	rec := &recordedMetrics{}
	svc := spec("m", &hookService{needs: Needs{Stages: StagesOf(StageRcpt, StageEOM)},
		rcpt: func(tx *Transaction, r *Recipient) (Verdict, error) {
			if r.Addr == "no@example.net" {
				return RejectVerdict("x"), nil
			}
			return ContinueVerdict, nil
		},
		eom: func(tx *Transaction) (Verdict, error) { return ContinueVerdict, errors.New("down") }})
	svc.Bypassable = true // optional: a failure is traced, mail goes on
	p := &Policy{System: System{URI: testSystem}, Services: []*ServiceSpec{svc}, Rules: []*Rule{{Name: "all", Run: []*ServiceSpec{svc}}}}
	proc, err := NewProcessor(p, nil, WithMetrics(rec))
	if err != nil {
		t.Fatal(err)
	}
	runMessage(t, proc.NewSession(), "a@example.org", []string{"no@example.net", "ok@example.net"}, nil, "x\r\n")
	wantOutcomes := []string{"rcpt/reject", "eom/accept"}
	wantCalls := []string{"m/rcpt", "m/rcpt", "m/eom/failed"}
	if !slices.Equal(rec.outcomes, wantOutcomes) || !slices.Equal(rec.calls, wantCalls) {
		t.Errorf("outcomes %v (want %v), calls %v (want %v)", rec.outcomes, wantOutcomes, rec.calls, wantCalls)
	}
}
