package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/admin"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/policy"
)

// releaser stands in for the daemon's SMTP re-injection (tested with the
// daemon): it moves the item on in the real store.
type releaser struct{ st *store.Store }

func (r releaser) Release(ctx context.Context, id, actor string) error {
	return r.st.SetQuarantineStatus(ctx, id, store.Released, actor)
}

func (r releaser) Delete(ctx context.Context, id, actor string) error {
	return r.st.SetQuarantineStatus(ctx, id, store.Deleted, actor)
}

type ctlEnv struct {
	st        *store.Store
	srv       *httptest.Server
	tokenFile string
	dir       string
}

// newCtlEnv runs the real admin handler on the real store and points
// opesctl at it through the environment.
func newCtlEnv(t *testing.T) *ctlEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), store.Config{Backend: "embedded", Path: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	tokenFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokenFile, []byte("# admins\nops:ops-0123456789abcdef\nother:other-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := admin.LoadTokens(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(example)
	if err != nil {
		t.Fatal(err)
	}
	records := filepath.Join(dir, "transactions.jsonl")
	if err := os.WriteFile(records, []byte(`{"trace_id":"T-7","queue_id":"Q7"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := admin.New(admin.Options{
		Policy: func() *opes.Policy { return cfg.Policy }, Tokens: tokens,
		Preferences: st, Quarantine: st, Releaser: releaser{st}, Outbox: st,
		Trace: admin.TraceFile{Path: records}, Audit: openAudit(t, filepath.Join(dir, "audit.log")),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Setenv("OPES_ADMIN", srv.URL)
	t.Setenv("OPES_TOKEN_FILE", tokenFile)
	return &ctlEnv{st: st, srv: srv, tokenFile: tokenFile, dir: dir}
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := runCtl(args...)
	if code != 0 {
		t.Fatalf("opesctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func TestBypassCommands(t *testing.T) {
	e := newCtlEnv(t)
	out := mustRun(t, "bypass", "add", "-recipient", "Joe@example.net", "-sender", "@example.org", "-kind", "no-optional",
		"-service", "https://mx1.example.net/opes/svc/external", "-expires", "720h", "-note", "ticket 42")
	if !strings.HasPrefix(out, "added ") || !strings.Contains(out, "joe@example.net") || !strings.Contains(out, "no-optional") ||
		!strings.Contains(out, "ticket 42") || !strings.Contains(out, "ops") {
		t.Errorf("add output:\n%s", out)
	}
	var p admin.PreferenceView
	if err := json.Unmarshal([]byte(mustRun(t, "bypass", "add", "-json", "-recipient", "@example.net")), &p); err != nil {
		t.Fatal(err)
	}
	if p.Recipient != "@example.net" || p.Kind != "non-opes-version" || p.Expires != nil || p.CreatedBy != "api:ops" {
		t.Errorf("add -json: %+v", p)
	}
	stored, err := e.st.ListPreferences(context.Background(), "")
	if err != nil || len(stored) != 2 {
		t.Fatalf("store after add: %d %v", len(stored), err)
	}

	out = mustRun(t, "bypass", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(out, "(any)") ||
		!strings.Contains(out, "(all bypassable)") || !strings.Contains(out, "never") {
		t.Errorf("list:\n%s", out)
	}
	var ps []admin.PreferenceView
	if err := json.Unmarshal([]byte(mustRun(t, "bypass", "list", "-recipient", "joe@example.net", "-json")), &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Sender != "@example.org" || len(ps[0].Services) != 1 || ps[0].Expires == nil {
		t.Fatalf("list -json: %+v", ps)
	}

	// Flags after the ID, and the token file's first line.
	if out := mustRun(t, "bypass", "remove", ps[0].ID, "-token-file", e.tokenFile); out != "removed "+ps[0].ID+"\n" {
		t.Errorf("remove: %q", out)
	}
	code, _, errOut := runCtl("bypass", "remove", ps[0].ID)
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("remove twice: exit %d %q", code, errOut)
	}
	if stored, _ := e.st.ListPreferences(context.Background(), ""); len(stored) != 1 {
		t.Errorf("store after remove: %d", len(stored))
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"bypass", "add"}, 2, "-recipient is required"},
		{[]string{"bypass", "add", "-recipient", "joe@example.net", "-kind", "all"}, 1, "400"},
		{[]string{"bypass", "add", "-recipient", "joe@example.net", "-expires", "-1h"}, 2, "positive"},
		{[]string{"bypass", "add", "-recipient", "joe@example.net", "extra"}, 2, "unexpected argument"},
		{[]string{"bypass", "remove"}, 2, "want one ID"},
		{[]string{"bypass", "frobnicate"}, 2, "unknown subcommand"},
		{[]string{"bypass"}, 2, "want add"},
		{[]string{"bypass", "list", "-nope"}, 2, "flag provided but not defined"},
	} {
		code, _, errOut := runCtl(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q, want %d with %q", c.args, code, errOut, c.code, c.want)
		}
	}
}

func TestAdminConnection(t *testing.T) {
	e := newCtlEnv(t)
	// A wrong token: exit 1 with the server's message.
	bad := filepath.Join(e.dir, "bad-token")
	if err := os.WriteFile(bad, []byte("wrong-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCtl("bypass", "list", "-token-file", bad)
	if code != 1 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "unknown token") {
		t.Errorf("wrong token: exit %d %q", code, errOut)
	}
	// Nothing says where the daemon is: a usage error.
	t.Setenv("OPES_ADMIN", "")
	code, _, errOut = runCtl("outbox", "list")
	if code != 2 || !strings.Contains(errOut, "no admin address") {
		t.Errorf("no address: exit %d %q", code, errOut)
	}
	// The address from the policy file's [admin] listen.
	host := strings.TrimPrefix(e.srv.URL, "http://")
	cfg := filepath.Join(e.dir, "policy.toml")
	if err := os.WriteFile(cfg, []byte("[system]\nuri = \"https://mx1.example.net/opes/\"\n\n[admin]\nlisten = \""+host+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "outbox", "list", "-config", cfg); !strings.HasPrefix(out, "ID") {
		t.Errorf("via -config: %q", out)
	}
	if out := mustRun(t, "outbox", "list", "-admin", host); !strings.HasPrefix(out, "ID") {
		t.Errorf("-admin without scheme: %q", out)
	}
	t.Setenv("OPES_TOKEN_FILE", "")
	code, _, errOut = runCtl("outbox", "list", "-admin", host)
	if code != 2 || !strings.Contains(errOut, "no token") {
		t.Errorf("no token: exit %d %q", code, errOut)
	}
	// A daemon that is not there: exit 1.
	e.srv.Close()
	code, _, _ = runCtl("outbox", "list", "-admin", host, "-token-file", e.tokenFile, "-timeout", "5s")
	if code != 1 {
		t.Errorf("daemon down: exit %d", code)
	}
}

func TestQuarantineCommands(t *testing.T) {
	e := newCtlEnv(t)
	ctx := context.Background()
	msg := "From: a@example.org\r\nSubject: held\r\n\r\nthe original\r\n"
	put := func(trace string, rcpts ...string) store.QuarantineItem {
		it, err := e.st.PutQuarantine(ctx, store.QuarantineItem{TraceID: trace, QueueID: "Q" + trace, Sender: "a@example.org",
			Recipients: rcpts, Reason: "virus found", Service: "https://mx1.example.net/opes/svc/clamav",
			Expires: time.Now().Add(time.Hour)}, strings.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		return it
	}
	a := put("TA", "joe@example.net")
	b := put("TB", "ann@example.net")

	out := mustRun(t, "quarantine", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(out, a.ID) || !strings.Contains(out, "virus found") {
		t.Errorf("list:\n%s", out)
	}
	var items []admin.QuarantineView
	if err := json.Unmarshal([]byte(mustRun(t, "quarantine", "list", "-recipient", "ann@example.net", "-json")), &items); err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].ID != b.ID {
		t.Errorf("list -recipient: %+v", items)
	}
	out = mustRun(t, "quarantine", "show", a.ID)
	for _, want := range []string{"trace id:", "TA", "joe@example.net", "held", "https://mx1.example.net/opes/svc/clamav"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	if out := mustRun(t, "quarantine", "message", a.ID); out != msg {
		t.Errorf("message: %q", out)
	}
	if out := mustRun(t, "quarantine", "release", a.ID); out != a.ID+": released\n" {
		t.Errorf("release: %q", out)
	}
	code, _, errOut := runCtl("quarantine", "release", a.ID)
	if code != 1 || !strings.Contains(errOut, "already released by api:ops") {
		t.Errorf("release twice: exit %d %q", code, errOut)
	}
	if out := mustRun(t, "quarantine", "delete", b.ID, "-json"); !strings.Contains(out, `"status": "deleted"`) {
		t.Errorf("delete -json: %s", out)
	}
	if it, _ := e.st.GetQuarantine(ctx, b.ID); it.Status != store.Deleted || it.StatusBy != "api:ops" {
		t.Errorf("store after delete: %+v", it)
	}
	if out := mustRun(t, "quarantine", "list", "-status", "held"); strings.Count(out, "\n") != 1 {
		t.Errorf("held after release and delete:\n%s", out)
	}
	if code, _, _ := runCtl("quarantine", "show"); code != 2 {
		t.Errorf("show without ID: %d", code)
	}
	if code, _, _ := runCtl("quarantine", "list", "-status", "lost"); code != 1 {
		t.Errorf("bad status: %d", code)
	}
}

func TestOutboxAndTraceCommands(t *testing.T) {
	e := newCtlEnv(t)
	ctx := context.Background()
	id, err := e.st.Enqueue(ctx, store.OutboxItem{TraceID: "T1", Recipients: []string{"a@example.org"}, Data: []byte("Subject: x\r\n\r\nreport\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.Retry(ctx, id, time.Now().Add(time.Hour), "421 4.3.0 relay\r\nbusy"); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "outbox", "list")
	if !strings.Contains(out, id) || !strings.Contains(out, "queued") || !strings.Contains(out, "a@example.org") ||
		!strings.Contains(out, "421 4.3.0 relay") || strings.Count(out, "\n") != 2 {
		t.Errorf("outbox list:\n%s", out)
	}
	var items []admin.OutboxView
	if err := json.Unmarshal([]byte(mustRun(t, "outbox", "list", "-status", "queued", "-json")), &items); err != nil || len(items) != 1 || items[0].Attempts != 1 {
		t.Errorf("outbox list -json: %+v %v", items, err)
	}
	if out := mustRun(t, "outbox", "list", "-status", "failed"); strings.Count(out, "\n") != 1 {
		t.Errorf("no failed items:\n%s", out)
	}
	var tv admin.TraceView
	if err := json.Unmarshal([]byte(mustRun(t, "trace", "T-7")), &tv); err != nil || len(tv.Records) != 1 {
		t.Errorf("trace: %+v %v", tv, err)
	}
	if code, _, errOut := runCtl("trace", "T-8"); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("unknown trace: %d %q", code, errOut)
	}
}
