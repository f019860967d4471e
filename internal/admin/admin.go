// Package admin is the daemon's HTTP admin listener: liveness, readiness
// and the Prometheus metrics. It binds loopback unless the configuration
// explicitly allows otherwise (policy [admin]).
package admin

import (
	"fmt"
	"net/http"
)

// Handler serves /healthz (the process answers), /readyz (ready reports
// nil: a configuration is loaded and the milter socket accepts) and
// /metrics.
func Handler(ready func() error, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", metrics)
	return mux
}
