package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
)

const (
	opsToken   = "ops-0123456789abcdef"
	aliceToken = "alice-0123456789abcdef"
)

// storeReleaser stands in for the daemon's releaser, whose re-injection
// over SMTP is the daemon's and tested there: it takes the original out of
// the real store, keeps it, and moves the item on as the daemon does.
type storeReleaser struct {
	st *store.Store
	mu sync.Mutex
	// sent holds what a release handed on, by id.
	sent map[string][]byte
}

func (r *storeReleaser) Release(ctx context.Context, id, actor string) error {
	rc, err := r.st.OpenQuarantine(ctx, id)
	if err != nil {
		return err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if err := r.st.SetQuarantineStatus(ctx, id, store.Released, actor); err != nil {
		return err
	}
	r.mu.Lock()
	r.sent[id] = b
	r.mu.Unlock()
	return nil
}

func (r *storeReleaser) Delete(ctx context.Context, id, actor string) error {
	return r.st.SetQuarantineStatus(ctx, id, store.Deleted, actor)
}

type apiEnv struct {
	t         *testing.T
	st        *store.Store
	rel       *storeReleaser
	srv       *httptest.Server
	auditPath string
	records   string
}

func newAPIEnv(t *testing.T, tweak func(*Options)) *apiEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), store.Config{Backend: "embedded", Path: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	tokens, err := LoadTokens(writeTokenFile(t, "ops:"+opsToken+"\nalice:"+aliceToken+"\n", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	e := &apiEnv{t: t, st: st, rel: &storeReleaser{st: st, sent: map[string][]byte{}},
		auditPath: filepath.Join(dir, "audit.log"), records: filepath.Join(dir, "transactions.jsonl")}
	pol := examplePolicy(t)
	o := Options{
		Policy: func() *opes.Policy { return pol }, Tokens: tokens,
		Preferences: st, Quarantine: st, Releaser: e.rel, Outbox: st,
		Trace: TraceFile{Path: e.records}, Audit: openAudit(t, e.auditPath),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if tweak != nil {
		tweak(&o)
	}
	e.srv = httptest.NewServer(New(o))
	t.Cleanup(e.srv.Close)
	return e
}

// do sends a request with token (none when "") and returns the status and
// the body.
func (e *apiEnv) do(method, path, token string, body any) (int, []byte, http.Header) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, out, resp.Header
}

// want checks the status and decodes the JSON body into v (when not nil).
func (e *apiEnv) want(code int, v any, method, path, token string, body any) {
	e.t.Helper()
	got, b, h := e.do(method, path, token, body)
	if got != code {
		e.t.Fatalf("%s %s: %d, want %d: %s", method, path, got, code, b)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if code >= 400 {
		var ev ErrorView
		if err := json.Unmarshal(b, &ev); err != nil || ev.Error == "" {
			e.t.Fatalf("%s %s: error body %q is not {\"error\": ...}", method, path, b)
		}
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			e.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

func (e *apiEnv) auditLog() string {
	e.t.Helper()
	b, err := os.ReadFile(e.auditPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func TestAPIAuthentication(t *testing.T) {
	e := newAPIEnv(t, nil)
	code, body, h := e.do("GET", "/api/v1/bypass", "", nil)
	if code != 401 || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") || !strings.Contains(string(body), `"error"`) {
		t.Errorf("no token: %d %q %s", code, h.Get("WWW-Authenticate"), body)
	}
	e.want(401, nil, "GET", "/api/v1/bypass", opsToken+"x", nil)
	e.want(401, nil, "GET", "/api/v1/bypass", "Basic "+opsToken, nil)
	e.want(200, nil, "GET", "/api/v1/bypass", opsToken, nil)
	// Basic authentication with the token as password (browsers, curl -u).
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/bypass", nil)
	req.SetBasicAuth("whoever", aliceToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("basic auth: %d", resp.StatusCode)
	}
	e.want(404, nil, "GET", "/api/v1/nothing", opsToken, nil)
	e.want(404, nil, "GET", "/api/v2/bypass", "", nil)

	// No token file: the API is off, never open.
	off := newAPIEnv(t, func(o *Options) { o.Tokens = nil })
	for _, p := range []string{"/api/v1/bypass", "/api/v1/quarantine", "/api/v1/outbox", "/api/v1/trace/X"} {
		code, body, _ := off.do("GET", p, opsToken, nil)
		if code != 403 || !strings.Contains(string(body), "no token file") {
			t.Errorf("API off, GET %s: %d %s", p, code, body)
		}
	}
	code, _, _ = off.do("POST", "/api/v1/bypass", "", map[string]string{"recipient": "a@example.net"})
	if code != 403 {
		t.Errorf("API off, POST: %d", code)
	}
	if ps, _ := off.st.ListPreferences(context.Background(), ""); len(ps) != 0 {
		t.Error("a disabled API changed the store")
	}
}

func TestAPIBypass(t *testing.T) {
	e := newAPIEnv(t, nil)
	var p PreferenceView
	e.want(201, &p, "POST", "/api/v1/bypass", opsToken, PreferenceRequest{
		Recipient: "Joe@Example.NET", Sender: "@example.org", Kind: "no-optional",
		Services: []string{"https://mx1.example.net/opes/svc/external"}, ExpiresIn: "720h", Note: "asked by phone, ticket 42",
	})
	if p.ID == "" || p.Recipient != "joe@example.net" || p.Sender != "@example.org" || p.Kind != "no-optional" ||
		p.CreatedBy != "api:ops" || len(p.Services) != 1 || p.Note != "asked by phone, ticket 42" || p.Expires == nil ||
		time.Until(*p.Expires) < 719*time.Hour || p.Created.IsZero() {
		t.Fatalf("added: %+v", p)
	}
	var q PreferenceView
	e.want(201, &q, "POST", "/api/v1/bypass", aliceToken, map[string]any{"recipient": "@example.net"})
	if q.Kind != "non-opes-version" || q.Sender != "" || q.Expires != nil || q.CreatedBy != "api:alice" || q.Services == nil {
		t.Errorf("defaults: %+v", q)
	}
	// The processor's store sees the entry.
	m, err := e.st.MatchPreferences(context.Background(), "joe@example.net", "x@example.org", time.Now())
	if err != nil || len(m) != 2 {
		t.Errorf("MatchPreferences: %d %v", len(m), err)
	}

	var all, joe []PreferenceView
	e.want(200, &all, "GET", "/api/v1/bypass", opsToken, nil)
	e.want(200, &joe, "GET", "/api/v1/bypass?recipient=JOE@example.net", opsToken, nil)
	if len(all) != 2 || len(joe) != 1 || joe[0].ID != p.ID {
		t.Errorf("list: all %d, joe %+v", len(all), joe)
	}

	for _, c := range []struct {
		body any
		want string
	}{
		{map[string]any{"recipient": "joe@example.net", "kind": "everything"}, "kind"},
		{map[string]any{"sender": "a@example.org"}, "recipient is required"},
		{map[string]any{"recipient": "not an address"}, "recipient"}, // the store's ErrInvalid
		{map[string]any{"recipient": "joe@example.net", "created_by": "root"}, "unknown field"},
		{map[string]any{"recipient": "joe@example.net", "services": []string{"relative/uri"}}, "service"},
		{map[string]any{"recipient": "joe@example.net", "expires_in": "-1h"}, "expires_in"},
		{map[string]any{"recipient": "joe@example.net", "expires_in": "1h", "expires": time.Now().Add(time.Hour)}, "not both"},
		{map[string]any{"recipient": "joe@example.net", "expires": time.Now().Add(-time.Hour)}, "in the past"},
		{map[string]any{"recipient": "joe@example.net", "note": "line\r\nInjected: yes"}, "note"},
		{`{"recipient": "joe@example.net"} {}`, "more than one"},
		{`[`, "request body"},
	} {
		code, body, _ := e.do("POST", "/api/v1/bypass", opsToken, c.body)
		if code != 400 || !strings.Contains(string(body), c.want) {
			t.Errorf("POST %v: %d %s (want 400 with %q)", c.body, code, body, c.want)
		}
	}
	big := `{"recipient": "joe@example.net", "note": "` + strings.Repeat("x", 70<<10) + `"}`
	if code, body, _ := e.do("POST", "/api/v1/bypass", opsToken, big); code != 413 {
		t.Errorf("70 KiB body: %d %s", code, body)
	}
	e.want(200, &all, "GET", "/api/v1/bypass", opsToken, nil)
	if len(all) != 2 {
		t.Errorf("refused requests changed the store: %d entries", len(all))
	}

	e.want(200, nil, "DELETE", "/api/v1/bypass/"+p.ID, aliceToken, nil)
	e.want(404, nil, "DELETE", "/api/v1/bypass/"+p.ID, aliceToken, nil)
	e.want(400, nil, "DELETE", "/api/v1/bypass/not-an-id", aliceToken, nil)
	e.want(200, &all, "GET", "/api/v1/bypass", opsToken, nil)
	if len(all) != 1 || all[0].ID != q.ID {
		t.Errorf("after remove: %+v", all)
	}

	log := e.auditLog()
	for _, want := range []string{"preference-add", "preference-remove", p.ID, q.ID, `"api:ops"`, `"api:alice"`, "joe@example.net"} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %q:\n%s", want, log)
		}
	}
	if n := strings.Count(log, "preference-add"); n != 2 {
		t.Errorf("%d preference-add events, want 2 (refused requests are not changes)", n)
	}
}

// putQuarantine stores a message as the processor does.
func putQuarantine(t *testing.T, st *store.Store, trace string, rcpts ...string) store.QuarantineItem {
	t.Helper()
	msg := "From: a@example.org\r\nTo: " + strings.Join(rcpts, ", ") + "\r\nSubject: held " + trace + "\r\n\r\nbody of " + trace + "\r\n"
	it, err := st.PutQuarantine(context.Background(), store.QuarantineItem{
		TraceID: trace, QueueID: "Q" + trace, Sender: "a@example.org", Recipients: rcpts, Reason: "virus found",
		Service: "https://mx1.example.net/opes/svc/clamav", Expires: time.Now().Add(24 * time.Hour),
	}, strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	return it
}

func TestAPIQuarantine(t *testing.T) {
	e := newAPIEnv(t, nil)
	a := putQuarantine(t, e.st, "TA", "joe@example.net")
	b := putQuarantine(t, e.st, "TB", "ann@example.net", "bob@example.org")

	var items []QuarantineView
	e.want(200, &items, "GET", "/api/v1/quarantine", opsToken, nil)
	if len(items) != 2 || items[0].ID != a.ID || items[1].Status != "held" || items[1].Size == 0 || len(items[1].Recipients) != 2 {
		t.Fatalf("list: %+v", items)
	}
	e.want(200, &items, "GET", "/api/v1/quarantine?recipient=BOB@example.org", opsToken, nil)
	if len(items) != 1 || items[0].ID != b.ID {
		t.Errorf("by recipient: %+v", items)
	}
	e.want(200, &items, "GET", "/api/v1/quarantine?limit=1&status=held", opsToken, nil)
	if len(items) != 1 {
		t.Errorf("limit 1: %d", len(items))
	}
	e.want(400, nil, "GET", "/api/v1/quarantine?status=lost", opsToken, nil)
	e.want(400, nil, "GET", "/api/v1/quarantine?limit=0", opsToken, nil)
	e.want(400, nil, "GET", "/api/v1/quarantine?limit=100000", opsToken, nil)

	var it QuarantineView
	e.want(200, &it, "GET", "/api/v1/quarantine/"+a.ID, opsToken, nil)
	if it.TraceID != "TA" || it.Reason != "virus found" || it.Service != "https://mx1.example.net/opes/svc/clamav" || it.Expires == nil {
		t.Errorf("item: %+v", it)
	}
	missing := "01JDZZZZZZZZZZZZZZZZZZZZZZ"
	e.want(404, nil, "GET", "/api/v1/quarantine/"+missing, opsToken, nil)

	code, msg, h := e.do("GET", "/api/v1/quarantine/"+a.ID+"/message", opsToken, nil)
	if code != 200 || h.Get("Content-Type") != "message/rfc822" || !strings.Contains(string(msg), "body of TA\r\n") ||
		!strings.HasPrefix(string(msg), "From: a@example.org\r\n") {
		t.Errorf("message: %d %q %q", code, h.Get("Content-Type"), msg)
	}

	e.want(200, &it, "POST", "/api/v1/quarantine/"+a.ID+"/release", aliceToken, nil)
	if it.Status != "released" || it.StatusBy != "api:alice" || it.StatusAt == nil {
		t.Errorf("released: %+v", it)
	}
	if !bytes.Equal(e.rel.sent[a.ID], msg) {
		t.Errorf("the releaser got %q", e.rel.sent[a.ID])
	}
	// Released once only; the original has left the quarantine.
	code, body, _ := e.do("POST", "/api/v1/quarantine/"+a.ID+"/release", opsToken, nil)
	if code != 409 || !strings.Contains(string(body), "already released by api:alice") {
		t.Errorf("second release: %d %s", code, body)
	}
	e.want(404, nil, "GET", "/api/v1/quarantine/"+a.ID+"/message", opsToken, nil)
	e.want(404, nil, "POST", "/api/v1/quarantine/"+missing+"/release", opsToken, nil)

	e.want(200, &it, "DELETE", "/api/v1/quarantine/"+b.ID, opsToken, nil)
	if it.Status != "deleted" || it.StatusBy != "api:ops" {
		t.Errorf("deleted: %+v", it)
	}
	e.want(200, &items, "GET", "/api/v1/quarantine?status=held", opsToken, nil)
	if len(items) != 0 {
		t.Errorf("still held: %+v", items)
	}
	if log := e.auditLog(); !strings.Contains(log, "quarantine-read") || !strings.Contains(log, a.ID) {
		t.Errorf("reading a quarantined message is not audited:\n%s", log)
	}

	// Without a releaser, release is not offered, listing still works.
	ro := newAPIEnv(t, func(o *Options) { o.Releaser = nil })
	c := putQuarantine(t, ro.st, "TC", "joe@example.net")
	ro.want(501, nil, "POST", "/api/v1/quarantine/"+c.ID+"/release", opsToken, nil)
	ro.want(200, nil, "GET", "/api/v1/quarantine/"+c.ID, opsToken, nil)
}

func TestAPIOutbox(t *testing.T) {
	e := newAPIEnv(t, nil)
	ctx := context.Background()
	data := []byte("From: MAILER-DAEMON@mx1.example.net\r\nSubject: Undelivered\r\n\r\nreport\r\n")
	id1, err := e.st.Enqueue(ctx, store.OutboxItem{TraceID: "T1", Recipients: []string{"a@example.org"}, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := e.st.Enqueue(ctx, store.OutboxItem{TraceID: "T2", Recipients: []string{"b@example.org"}, Data: data[:10]})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.Fail(ctx, id2, "550 5.1.1 no such user"); err != nil {
		t.Fatal(err)
	}
	var items []OutboxView
	e.want(200, &items, "GET", "/api/v1/outbox", opsToken, nil)
	if len(items) != 2 {
		t.Fatalf("all: %+v", items)
	}
	e.want(200, &items, "GET", "/api/v1/outbox?status=queued", opsToken, nil)
	if len(items) != 1 || items[0].ID != id1 || items[0].Size != len(data) || items[0].TraceID != "T1" || items[0].Sender != "" {
		t.Errorf("queued: %+v", items)
	}
	e.want(200, &items, "GET", "/api/v1/outbox?status=failed", opsToken, nil)
	if len(items) != 1 || items[0].ID != id2 || items[0].LastError != "550 5.1.1 no such user" || items[0].Status != "failed" {
		t.Errorf("failed: %+v", items)
	}
	_, raw, _ := e.do("GET", "/api/v1/outbox", opsToken, nil)
	if bytes.Contains(raw, []byte(`"data"`)) || bytes.Contains(raw, []byte("report")) {
		t.Errorf("the outbox list carries the messages: %s", raw)
	}
	e.want(400, nil, "GET", "/api/v1/outbox?status=sent", opsToken, nil)
}

func TestAPITrace(t *testing.T) {
	e := newAPIEnv(t, nil)
	writeRecords(t, e.records, "T-1", "T-2", "T-1")
	var tv TraceView
	e.want(200, &tv, "GET", "/api/v1/trace/T-1", opsToken, nil)
	if tv.TraceID != "T-1" || len(tv.Records) != 2 {
		t.Fatalf("lookup: %+v", tv)
	}
	var rec map[string]any
	if err := json.Unmarshal(tv.Records[0], &rec); err != nil || rec["trace_id"] != "T-1" || rec["queue_id"] != "Q0" {
		t.Errorf("record: %v %v", rec, err)
	}
	e.want(404, nil, "GET", "/api/v1/trace/T-3", opsToken, nil)
	e.want(400, nil, "GET", "/api/v1/trace/"+url.PathEscape(`a"b`), opsToken, nil)
	e.want(400, nil, "GET", "/api/v1/trace/"+strings.Repeat("x", 200), opsToken, nil)
	if log := e.auditLog(); !strings.Contains(log, "trace-lookup") {
		t.Errorf("trace lookups are not audited:\n%s", log)
	}

	none := newAPIEnv(t, func(o *Options) { o.Trace = nil })
	none.want(501, nil, "GET", "/api/v1/trace/T-1", opsToken, nil)
}

func TestTracePage(t *testing.T) {
	e := newAPIEnv(t, nil)
	writeRecords(t, e.records, "T-9")
	// The form.
	code, body, _ := e.do("GET", "/opes/trace", "", nil)
	if code != 200 || !strings.Contains(string(body), `<form method="post" action="/opes/trace">`) || !strings.Contains(string(body), `type="password"`) {
		t.Fatalf("form: %d\n%s", code, body)
	}
	post := func(form url.Values) (int, string) {
		resp, err := e.srv.Client().PostForm(e.srv.URL+"/opes/trace", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, page := post(url.Values{"id": {"T-9"}, "token": {opsToken}})
	if code != 200 || !strings.Contains(page, "&#34;trace_id&#34;: &#34;T-9&#34;") {
		t.Errorf("lookup: %d\n%s", code, page)
	}
	if code, page := post(url.Values{"id": {"T-9"}, "token": {"wrong-0123456789abcdef"}}); code != 401 || strings.Contains(page, "Q0") {
		t.Errorf("wrong token: %d", code)
	}
	if code, page := post(url.Values{"id": {"<script>"}, "token": {opsToken}}); code != 400 || strings.Contains(page, "<script>") {
		t.Errorf("hostile id: %d\n%s", code, page)
	}
	if code, _ := post(url.Values{"id": {"T-0"}, "token": {opsToken}}); code != 404 {
		t.Errorf("unknown id: %d", code)
	}
	// GET with basic authentication, and JSON.
	req, _ := http.NewRequest("GET", e.srv.URL+"/opes/trace?id=T-9&format=json", nil)
	req.SetBasicAuth("", aliceToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tv TraceView
	err = json.NewDecoder(resp.Body).Decode(&tv)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil || len(tv.Records) != 1 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("GET with basic auth: %d %v %+v", resp.StatusCode, err, tv)
	}
	req, _ = http.NewRequest("GET", e.srv.URL+"/opes/trace?id=T-9", nil)
	if resp, err = e.srv.Client().Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
		t.Errorf("GET without token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	off := newAPIEnv(t, func(o *Options) { o.Tokens = nil })
	if code, body, _ := off.do("GET", "/opes/trace?id=T-9", "", nil); code != 403 || !strings.Contains(string(body), "disabled") {
		t.Errorf("no tokens: %d", code)
	}
}

func TestAPINotConfigured(t *testing.T) {
	e := newAPIEnv(t, func(o *Options) {
		o.Preferences, o.Quarantine, o.Releaser, o.Outbox = nil, nil, nil, nil
	})
	for _, c := range [][2]string{
		{"GET", "/api/v1/bypass"}, {"POST", "/api/v1/bypass"}, {"GET", "/api/v1/quarantine"},
		{"DELETE", "/api/v1/quarantine/X"}, {"GET", "/api/v1/outbox"},
	} {
		code, body, _ := e.do(c[0], c[1], opsToken, nil)
		if code != 501 || !strings.Contains(string(body), "not configured") {
			t.Errorf("%s %s: %d %s", c[0], c[1], code, body)
		}
	}
	// Preferences without an audit log are refused: changes must be
	// accountable.
	st := newAPIEnv(t, func(o *Options) { o.Audit = nil })
	code, body, _ := st.do("POST", "/api/v1/bypass", opsToken, map[string]string{"recipient": "joe@example.net"})
	if code != 501 {
		t.Errorf("no audit: %d %s", code, body)
	}
}

// When the audit log cannot take the record, the change is undone and
// nothing personal is shown.
func TestAPIAuditFailure(t *testing.T) {
	var log *audit.Log
	e := newAPIEnv(t, func(o *Options) { log = o.Audit.(*audit.Log) })
	it := putQuarantine(t, e.st, "TX", "joe@example.net")
	writeRecords(t, e.records, "TX")
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	code, body, _ := e.do("POST", "/api/v1/bypass", opsToken, map[string]string{"recipient": "joe@example.net"})
	if code != 500 || !strings.Contains(string(body), "the preference was not added") {
		t.Errorf("add with a closed audit log: %d %s", code, body)
	}
	if ps, err := e.st.ListPreferences(context.Background(), ""); err != nil || len(ps) != 0 {
		t.Errorf("unaudited preference kept: %+v %v", ps, err)
	}
	code, body, _ = e.do("GET", "/api/v1/quarantine/"+it.ID+"/message", opsToken, nil)
	if code != 500 || strings.Contains(string(body), "From:") {
		t.Errorf("message with a closed audit log: %d %s", code, body)
	}
	code, body, _ = e.do("GET", "/api/v1/trace/TX", opsToken, nil)
	if code != 500 || strings.Contains(string(body), "TX\"") {
		t.Errorf("trace with a closed audit log: %d %s", code, body)
	}
}
