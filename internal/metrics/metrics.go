// Package metrics holds the daemon's Prometheus metrics: what the
// processor decided, how long services took, milter sessions, malformed
// packets and configuration reloads. Everything lives in its own registry
// (no global state), served by the admin listener at /metrics.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opesmilter/opes-milter/opes"
)

// Metrics implements opes.Metrics and the milter bridge's hooks.
type Metrics struct {
	reg        *prometheus.Registry
	outcomes   *prometheus.CounterVec
	svcLatency *prometheus.HistogramVec
	svcErrors  *prometheus.CounterVec
	sessions   prometheus.Gauge
	malformed  prometheus.Counter
	reloads    *prometheus.CounterVec
	reloadOK   prometheus.Gauge
	reloadTime prometheus.Gauge
}

// New registers every metric in a fresh registry.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opes_milter_outcomes_total",
			Help: "Decisions of the OPES processor by SMTP stage and verdict (eom/accept: delivered with trace).",
		}, []string{"stage", "verdict"}),
		svcLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "opes_milter_service_duration_seconds",
			Help:    "Time one service hook took, by service and stage.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 25},
		}, []string{"service", "stage"}),
		svcErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opes_milter_service_errors_total",
			Help: "Service hooks that failed (error, panic or timeout), by service.",
		}, []string{"service"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opes_milter_sessions",
			Help: "Milter sessions open now (one per SMTP connection of the MTA).",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "opes_milter_malformed_packets_total",
			Help: "Milter connections dropped because of a malformed packet.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opes_milter_config_reloads_total",
			Help: "Configuration reloads (SIGHUP) by result: ok, or error (the running policy stayed).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opes_milter_config_last_reload_successful",
			Help: "1 if the last reload succeeded (or none was tried), 0 if it was refused.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opes_milter_config_last_reload_success_timestamp_seconds",
			Help: "When the running configuration was loaded.",
		}),
	}
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	m.reloadOK.Set(1)
	m.reloadTime.SetToCurrentTime()
	m.reg.MustRegister(m.outcomes, m.svcLatency, m.svcErrors, m.sessions, m.malformed, m.reloads, m.reloadOK, m.reloadTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Outcome implements opes.Metrics.
func (m *Metrics) Outcome(st opes.Stage, v opes.VerdictKind) {
	m.outcomes.WithLabelValues(st.String(), v.String()).Inc()
}

// ServiceCall implements opes.Metrics.
func (m *Metrics) ServiceCall(service string, st opes.Stage, took time.Duration, failed bool) {
	m.svcLatency.WithLabelValues(service, st.String()).Observe(took.Seconds())
	if failed {
		m.svcErrors.WithLabelValues(service).Inc()
	}
}

// SessionOpened and SessionClosed track milter sessions.
func (m *Metrics) SessionOpened() { m.sessions.Inc() }

// SessionClosed ends what SessionOpened counted.
func (m *Metrics) SessionClosed() { m.sessions.Dec() }

// MalformedPacket counts a connection the packet guard dropped.
func (m *Metrics) MalformedPacket() { m.malformed.Inc() }

// Reloaded records the result of a configuration reload.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("error").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadOK.Set(1)
	m.reloadTime.SetToCurrentTime()
}
