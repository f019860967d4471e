package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/opesmilter/opes-milter/internal/audit"
	"github.com/opesmilter/opes-milter/internal/store"
	"github.com/opesmilter/opes-milter/opes"
)

// maxBody bounds every request body.
const maxBody = 64 << 10

// maxListLimit bounds list answers.
const maxListLimit = 1000

// defaultOutboxLimit is the outbox list's length without ?limit=.
const defaultOutboxLimit = 100

// maxNote bounds a preference's note.
const maxNote = 1024

// maxTraceIDLen bounds trace ids (MTA queue ids and ULIDs are far shorter).
const maxTraceIDLen = 128

// apiHandler is an authenticated API endpoint; actor is the token's name.
type apiHandler func(w http.ResponseWriter, r *http.Request, actor string)

func (s *server) routeAPI(mux *http.ServeMux) {
	mux.Handle("GET /api/v1/bypass", s.api(s.needPrefs(s.listPreferences)))
	mux.Handle("POST /api/v1/bypass", s.api(s.needPrefs(s.addPreference)))
	mux.Handle("DELETE /api/v1/bypass/{id}", s.api(s.needPrefs(s.removePreference)))
	mux.Handle("GET /api/v1/quarantine", s.api(s.needQuarantine(s.listQuarantine)))
	mux.Handle("GET /api/v1/quarantine/{id}", s.api(s.needQuarantine(s.getQuarantine)))
	mux.Handle("GET /api/v1/quarantine/{id}/message", s.api(s.needQuarantine(s.quarantineMessage)))
	mux.Handle("POST /api/v1/quarantine/{id}/release", s.api(s.needReleaser(s.releaseQuarantine)))
	mux.Handle("DELETE /api/v1/quarantine/{id}", s.api(s.needReleaser(s.deleteQuarantine)))
	mux.Handle("GET /api/v1/outbox", s.api(s.listOutbox))
	mux.Handle("GET /api/v1/trace/{id}", s.api(s.traceAPI))
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path))
	})
}

// errAPIDisabled explains the 403 of an API without tokens.
const errAPIDisabled = "admin API disabled: no token file is configured ([admin] token_file)"

// api authenticates the request. Without a token file the API is off:
// it is never open to anyone who reaches the port.
func (s *server) api(h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.o.Tokens == nil {
			writeError(w, http.StatusForbidden, errAPIDisabled)
			return
		}
		name, ok := s.o.Tokens.Authenticate(requestToken(r))
		if !ok {
			s.o.Log.Warn("admin: API request with a missing or unknown token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="opes-milter admin"`)
			writeError(w, http.StatusUnauthorized, "missing or unknown token (Authorization: Bearer <token>)")
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		h(w, r, actorOf(name))
	})
}

// actorOf is how an API user appears in the audit log, in preferences
// (CreatedBy) and in the quarantine (StatusBy).
func actorOf(tokenName string) string { return "api:" + tokenName }

func (s *server) needPrefs(h apiHandler) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, actor string) {
		if s.o.Preferences == nil || s.o.Audit == nil {
			writeError(w, http.StatusNotImplemented, "bypass preferences are not configured (no store or no audit log)")
			return
		}
		h(w, r, actor)
	}
}

func (s *server) needQuarantine(h apiHandler) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, actor string) {
		if s.o.Quarantine == nil {
			writeError(w, http.StatusNotImplemented, "the quarantine is not configured")
			return
		}
		h(w, r, actor)
	}
}

func (s *server) needReleaser(h apiHandler) apiHandler {
	return s.needQuarantine(func(w http.ResponseWriter, r *http.Request, actor string) {
		if s.o.Releaser == nil {
			writeError(w, http.StatusNotImplemented, "quarantine release and delete are not configured")
			return
		}
		h(w, r, actor)
	})
}

func (s *server) listPreferences(w http.ResponseWriter, r *http.Request, _ string) {
	rcpt := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("recipient")))
	prefs, err := s.o.Preferences.ListPreferences(r.Context(), rcpt)
	if err != nil {
		storeError(w, "list preferences", err)
		return
	}
	out := make([]PreferenceView, 0, len(prefs))
	for _, p := range prefs {
		out = append(out, preferenceView(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) addPreference(w http.ResponseWriter, r *http.Request, actor string) {
	var req PreferenceRequest
	if !decodeBody(w, r, &req) {
		return
	}
	p, err := req.preference(actor, time.Now().UTC())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err = s.o.Preferences.AddPreference(r.Context(), p)
	if err != nil {
		storeError(w, "add preference", err)
		return
	}
	detail := map[string]string{"id": p.ID, "kind": string(p.Kind), "sender": p.Sender}
	if !p.Expires.IsZero() {
		detail["expires"] = p.Expires.Format(time.RFC3339)
	}
	if p.Note != "" {
		detail["note"] = p.Note
	}
	ev := audit.Event{Time: p.Created, Kind: audit.KindPreferenceAdd, Actor: actor, Subject: p.Recipient,
		Service: strings.Join(p.Services, " "), Decision: string(p.Kind), Detail: detail}
	if err := s.o.Audit.Record(ev); err != nil {
		// A change nobody can account for is not kept.
		if rerr := s.o.Preferences.RemovePreference(context.WithoutCancel(r.Context()), p.ID); rerr != nil {
			s.o.Log.Error("admin: preference added but neither audited nor rolled back", "id", p.ID, "err", err, "rollback", rerr)
			writeError(w, http.StatusInternalServerError, fmt.Sprintf("preference %s added but not audited (%v), and removing it failed: %v", p.ID, err, rerr))
			return
		}
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("audit log: %v; the preference was not added", err))
		return
	}
	w.Header().Set("Location", "/api/v1/bypass/"+p.ID)
	writeJSON(w, http.StatusCreated, preferenceView(p))
}

// preference validates a request; the store checks the address forms.
func (req PreferenceRequest) preference(actor string, now time.Time) (store.Preference, error) {
	p := store.Preference{
		Recipient: strings.ToLower(strings.TrimSpace(req.Recipient)),
		Sender:    strings.ToLower(strings.TrimSpace(req.Sender)),
		Kind:      store.PreferenceKind(req.Kind),
		CreatedBy: actor,
		Note:      req.Note,
		Created:   now,
	}
	if p.Recipient == "" {
		return p, errors.New("recipient is required (user@domain or @domain)")
	}
	switch p.Kind {
	case "":
		p.Kind = store.NonOPESVersion
	case store.NonOPESVersion, store.NoOptional:
	default:
		return p, fmt.Errorf("kind %q: want %s or %s", req.Kind, store.NonOPESVersion, store.NoOptional)
	}
	for _, u := range req.Services {
		if err := opes.CheckAgentURI(u); err != nil {
			return p, fmt.Errorf("service: %w", err)
		}
		p.Services = append(p.Services, u)
	}
	if len(p.Note) > maxNote || !utf8.ValidString(p.Note) || strings.ContainsFunc(p.Note, unicode.IsControl) {
		return p, fmt.Errorf("note: at most %d octets of UTF-8 text without control characters", maxNote)
	}
	switch {
	case req.Expires != nil && req.ExpiresIn != "":
		return p, errors.New("give expires or expires_in, not both")
	case req.Expires != nil:
		if !req.Expires.After(now) {
			return p, fmt.Errorf("expires %s is in the past", req.Expires.Format(time.RFC3339))
		}
		p.Expires = req.Expires.UTC()
	case req.ExpiresIn != "":
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d <= 0 {
			return p, fmt.Errorf("expires_in %q: want a positive duration such as 720h", req.ExpiresIn)
		}
		p.Expires = now.Add(d)
	}
	return p, nil
}

func (s *server) removePreference(w http.ResponseWriter, r *http.Request, actor string) {
	id := r.PathValue("id")
	if err := s.o.Preferences.RemovePreference(r.Context(), id); err != nil {
		storeError(w, "remove preference "+id, err)
		return
	}
	ev := audit.Event{Time: time.Now().UTC(), Kind: audit.KindPreferenceRemove, Actor: actor, Subject: id, Decision: "removed",
		Detail: map[string]string{"id": id}}
	if err := s.o.Audit.Record(ev); err != nil {
		s.o.Log.Error("admin: preference removed but not audited", "id", id, "actor", actor, "err", err)
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("preference %s removed, but the audit log failed: %v", id, err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": id, "status": "removed"})
}

func (s *server) listQuarantine(w http.ResponseWriter, r *http.Request, _ string) {
	q := r.URL.Query()
	f := store.QuarantineFilter{
		Status:    store.QuarantineStatus(q.Get("status")),
		Recipient: strings.ToLower(strings.TrimSpace(q.Get("recipient"))),
	}
	switch f.Status {
	case "", store.Held, store.Released, store.Deleted, store.Expired:
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q: want held, released, deleted or expired", f.Status))
		return
	}
	var ok bool
	if f.Limit, ok = limitParam(w, r); !ok {
		return
	}
	items, err := s.o.Quarantine.ListQuarantine(r.Context(), f)
	if err != nil {
		storeError(w, "list quarantine", err)
		return
	}
	out := make([]QuarantineView, 0, len(items))
	for _, it := range items {
		out = append(out, quarantineView(it))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getQuarantine(w http.ResponseWriter, r *http.Request, _ string) {
	id := r.PathValue("id")
	it, err := s.o.Quarantine.GetQuarantine(r.Context(), id)
	if err != nil {
		storeError(w, "quarantine "+id, err)
		return
	}
	writeJSON(w, http.StatusOK, quarantineView(it))
}

// quarantineMessage sends the original message. Reading someone's mail
// is audited like changing their preferences.
func (s *server) quarantineMessage(w http.ResponseWriter, r *http.Request, actor string) {
	id := r.PathValue("id")
	it, err := s.o.Quarantine.GetQuarantine(r.Context(), id)
	if err != nil {
		storeError(w, "quarantine "+id, err)
		return
	}
	rc, err := s.o.Quarantine.OpenQuarantine(r.Context(), id)
	if err != nil {
		storeError(w, "open quarantined message "+id, err)
		return
	}
	defer rc.Close()
	if s.o.Audit != nil {
		ev := audit.Event{Time: time.Now().UTC(), Kind: "quarantine-read", TraceID: it.TraceID, Actor: actor, Subject: id,
			Service: it.Service, Decision: "read"}
		if err := s.o.Audit.Record(ev); err != nil {
			writeError(w, http.StatusInternalServerError, fmt.Sprintf("audit log: %v; not sending the message", err))
			return
		}
	}
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Disposition", `attachment; filename="`+safeFileName(id)+`.eml"`)
	if it.Size > 0 {
		w.Header().Set("X-Quarantine-Size", strconv.FormatInt(it.Size, 10))
	}
	if _, err := io.Copy(w, rc); err != nil {
		// The status line is gone; the client sees a short body.
		s.o.Log.Warn("admin: sending quarantined message", "id", id, "err", err)
	}
}

func (s *server) releaseQuarantine(w http.ResponseWriter, r *http.Request, actor string) {
	s.quarantineAction(w, r, actor, "release", s.o.Releaser.Release)
}

func (s *server) deleteQuarantine(w http.ResponseWriter, r *http.Request, actor string) {
	s.quarantineAction(w, r, actor, "delete", s.o.Releaser.Delete)
}

func (s *server) quarantineAction(w http.ResponseWriter, r *http.Request, actor, what string, do func(context.Context, string, string) error) {
	id := r.PathValue("id")
	it, err := s.o.Quarantine.GetQuarantine(r.Context(), id)
	if err != nil {
		storeError(w, "quarantine "+id, err)
		return
	}
	if it.Status != store.Held {
		writeError(w, http.StatusConflict, fmt.Sprintf("quarantine %s: already %s by %s at %s", id, it.Status,
			orUnknown(it.StatusBy), it.StatusAt.UTC().Format(time.RFC3339)))
		return
	}
	if err := do(r.Context(), id, actor); err != nil {
		storeError(w, what+" "+id, err)
		return
	}
	it, err = s.o.Quarantine.GetQuarantine(r.Context(), id)
	if err != nil {
		storeError(w, "quarantine "+id+" after "+what, err)
		return
	}
	writeJSON(w, http.StatusOK, quarantineView(it))
}

func (s *server) listOutbox(w http.ResponseWriter, r *http.Request, _ string) {
	if s.o.Outbox == nil {
		writeError(w, http.StatusNotImplemented, "the report outbox is not configured")
		return
	}
	status := store.OutboxStatus(r.URL.Query().Get("status"))
	switch status {
	case "", store.Queued, store.Failed:
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q: want queued or failed", status))
		return
	}
	limit, ok := limitParam(w, r)
	if !ok {
		return
	}
	if limit == 0 {
		limit = defaultOutboxLimit // the store's 0 means all
	}
	items, err := s.o.Outbox.ListOutbox(r.Context(), status, limit)
	if err != nil {
		storeError(w, "list outbox", err)
		return
	}
	out := make([]OutboxView, 0, len(items))
	for _, it := range items {
		out = append(out, outboxView(it))
	}
	writeJSON(w, http.StatusOK, out)
}

// TraceView is the answer of a trace lookup.
type TraceView struct {
	TraceID string            `json:"trace_id"`
	Records []json.RawMessage `json:"records"`
}

func (s *server) traceAPI(w http.ResponseWriter, r *http.Request, actor string) {
	tv, code, err := s.lookupTrace(r.Context(), r.PathValue("id"), actor)
	if err != nil {
		writeError(w, code, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, tv)
}

// lookupTrace is shared by the API and the page's form.
func (s *server) lookupTrace(ctx context.Context, id, actor string) (TraceView, int, error) {
	if s.o.Trace == nil {
		return TraceView{}, http.StatusNotImplemented, errors.New("trace lookup is not configured (no [report] transactions file)")
	}
	if len(id) > maxTraceIDLen || !opes.IsToken(id) {
		return TraceView{}, http.StatusBadRequest, fmt.Errorf("%q is not a trace id", truncate(id, 64))
	}
	if s.o.Audit != nil {
		// Trace records name senders and recipients: who looked is
		// recorded before anything is shown.
		ev := audit.Event{Time: time.Now().UTC(), Kind: "trace-lookup", TraceID: id, Actor: actor, Subject: id, Decision: "lookup"}
		if err := s.o.Audit.Record(ev); err != nil {
			return TraceView{}, http.StatusInternalServerError, fmt.Errorf("audit log: %w", err)
		}
	}
	recs, err := s.o.Trace.Lookup(ctx, id)
	if err != nil {
		return TraceView{}, http.StatusInternalServerError, fmt.Errorf("trace lookup: %w", err)
	}
	if len(recs) == 0 {
		return TraceView{}, http.StatusNotFound, fmt.Errorf("no transaction record for trace id %s", id)
	}
	return TraceView{TraceID: id, Records: recs}, http.StatusOK, nil
}

func limitParam(w http.ResponseWriter, r *http.Request) (int, bool) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxListLimit {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: want 1-%d", v, maxListLimit))
		return 0, false
	}
	return n, true
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "request body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "request body: more than one JSON value")
		return false
	}
	return true
}

// storeError maps the store's errors to statuses.
func storeError(w http.ResponseWriter, what string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, store.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	}
	writeError(w, code, what+": "+err.Error())
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorView{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func safeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
