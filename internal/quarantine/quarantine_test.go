package quarantine

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/ndr"
)

var ctx = context.Background()

const system = "https://mx1.example.net/opes/"

func fixture(t *testing.T) (*store.Store, *Manager, store.QuarantineItem) {
	t.Helper()
	st, err := store.Open(ctx, store.Config{Backend: "embedded", Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	it, err := st.PutQuarantine(ctx, store.QuarantineItem{TraceID: "4ABC", Sender: "alice@example.org",
		Recipients: []string{"bob@example.net", "carol@example.net"}, RecipientArgs: []map[string]string{{"NOTIFY": "NEVER"}, {}},
		Reason: "suspicious", Service: system + "svc/av", Created: now.Add(-48 * time.Hour), Expires: now.Add(-time.Hour)},
		strings.NewReader("Subject: hi\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: st, System: opes.System{URI: system, PrivacyURL: system}, Hostname: "mx1.example.net"}
	return st, m, it
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestReleaseFailureKeepsItHeld(t *testing.T) {
	st, m, it := fixture(t)
	if err := m.Release(ctx, it.ID, "admin"); !errors.Is(err, ErrNoRelay) {
		t.Fatalf("no relay: %v", err)
	}
	m.Relay = &ndr.Relay{Addr: closedAddr(t), HeloName: "mx1.example.net", Timeout: 2 * time.Second}
	if err := m.Release(ctx, it.ID, "admin"); err == nil {
		t.Fatal("release to a dead relay succeeded")
	}
	got, err := st.GetQuarantine(ctx, it.ID)
	if err != nil || got.Status != store.Held {
		t.Fatalf("after a failed release: %v %v", got.Status, err)
	}
	if err := m.Delete(ctx, it.ID, "admin"); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, it.ID, "admin"); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second delete: %v", err)
	}
}

func TestExpirySendsReport(t *testing.T) {
	st, m, it := fixture(t)
	// Without a report queue nothing expires: never dropped silently.
	if n, err := m.ExpireOnce(ctx); n != 0 || err != nil {
		t.Fatalf("expired without reports: %d %v", n, err)
	}
	m.Reports = &ndr.Worker{Outbox: st, Sender: &ndr.Relay{Addr: closedAddr(t)}}
	n, err := m.ExpireOnce(ctx)
	if n != 1 || err != nil {
		t.Fatalf("ExpireOnce = %d, %v", n, err)
	}
	got, _ := st.GetQuarantine(ctx, it.ID)
	if got.Status != store.Expired {
		t.Errorf("status %v", got.Status)
	}
	items, err := st.ListOutbox(ctx, store.Queued, 10)
	if err != nil || len(items) != 1 {
		t.Fatalf("outbox: %d %v", len(items), err)
	}
	rep := string(items[0].Data)
	for _, want := range []string{"Final-Recipient: rfc822; carol@example.net", "svc/av", "Final-Log-ID: 4ABC", "OPES-System: " + system + "; id=4ABC", "Subject: hi"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(rep, "bob@example.net") {
		t.Errorf("NOTIFY=NEVER recipient reported")
	}
	if items[0].Recipients[0] != "alice@example.org" {
		t.Errorf("report to %v", items[0].Recipients)
	}
}
