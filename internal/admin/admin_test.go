package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEndpoints(t *testing.T) {
	var notReady error
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("m 1\n")) })
	h := Handler(func() error { return notReady }, metrics)
	get := func(path string) (int, string) {
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, httptest.NewRequest("GET", path, nil))
		return rr.Code, rr.Body.String()
	}
	if c, b := get("/healthz"); c != 200 || b != "ok\n" {
		t.Errorf("/healthz %d %q", c, b)
	}
	if c, b := get("/readyz"); c != 200 || b != "ready\n" {
		t.Errorf("/readyz %d %q", c, b)
	}
	notReady = errors.New("shutting down")
	if c, b := get("/readyz"); c != 503 || !strings.Contains(b, "shutting down") {
		t.Errorf("/readyz when not ready: %d %q", c, b)
	}
	if c, b := get("/metrics"); c != 200 || b != "m 1\n" {
		t.Errorf("/metrics %d %q", c, b)
	}
	if c, _ := get("/nope"); c != 404 {
		t.Errorf("unknown path: %d", c)
	}
}
