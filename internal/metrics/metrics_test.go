package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/opes"
)

func TestExposition(t *testing.T) {
	m := New()
	m.Outcome(opes.StageRcpt, opes.Reject)
	m.Outcome(opes.StageEOM, opes.Accept)
	m.Outcome(opes.StageEOM, opes.Accept)
	m.ServiceCall("access", opes.StageRcpt, 3*time.Millisecond, "")
	m.ServiceCall("access", opes.StageRcpt, time.Millisecond, "failed")
	m.ServiceCall("remote", opes.StageEOM, time.Second, "timeout")
	m.Bypass("honored", "")
	m.Bypass("refused", "non-bypassable")
	m.Bypass("refused", "non-bypassable")
	m.WatchQueues(func(context.Context) (QueueCounts, error) {
		return QueueCounts{QuarantineHeld: 3, QuarantineBytes: 1234, OutboxQueued: 2, OutboxFailed: 1}, nil
	})
	m.SessionOpened()
	m.SessionOpened()
	m.SessionClosed()
	m.MalformedPacket()
	m.Reloaded(errors.New("bad"))

	rr := httptest.NewRecorder()
	m.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rr.Body)
	for _, want := range []string{
		`opes_milter_outcomes_total{stage="rcpt",verdict="reject"} 1`,
		`opes_milter_outcomes_total{stage="eom",verdict="accept"} 2`,
		`opes_milter_service_duration_seconds_count{service="access",stage="rcpt"} 2`,
		`opes_milter_service_errors_total{service="access",status="failed"} 1`,
		`opes_milter_service_errors_total{service="remote",status="timeout"} 1`,
		`opes_milter_bypass_decisions_total{decision="honored",reason=""} 1`,
		`opes_milter_bypass_decisions_total{decision="refused",reason="non-bypassable"} 2`,
		`opes_milter_quarantine_held 3`,
		`opes_milter_quarantine_bytes 1234`,
		`opes_milter_outbox{status="queued"} 2`,
		`opes_milter_outbox{status="failed"} 1`,
		`opes_milter_sessions 1`,
		`opes_milter_malformed_packets_total 1`,
		`opes_milter_config_reloads_total{result="error"} 1`,
		`opes_milter_config_reloads_total{result="ok"} 0`,
		`opes_milter_config_last_reload_successful 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(string(body), want+"\n") && !strings.Contains(string(body), want) {
			t.Errorf("missing %q in:\n%s", want, body)
		}
	}
}
