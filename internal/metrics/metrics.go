// Package metrics holds the daemon's Prometheus metrics: what the
// processor decided, how long services took, milter sessions, malformed
// packets and configuration reloads. Everything lives in its own registry
// (no global state), served by the admin listener at /metrics.
package metrics

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opesmilter/opes-milter/opes"
)

// Metrics implements opes.Metrics and the milter bridge's hooks.
type Metrics struct {
	reg      *prometheus.Registry
	outcomes *prometheus.CounterVec
	// outcomeCtr caches the counters of outcomes by stage and verdict:
	// every message counts one, and the label lookup of WithLabelValues
	// (hash, lock) was a measurable part of a trace-only message.
	outcomeCtr [outcomeSlots]atomic.Pointer[counter]
	svcLatency *prometheus.HistogramVec
	svcErrors  *prometheus.CounterVec
	bypass     *prometheus.CounterVec
	sessions   prometheus.Gauge
	malformed  prometheus.Counter
	reloadMetrics
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
			Help: "Service hooks that failed, by service and status: failed (error, panic, refused connection, garbage) or timeout. Callout, ICAP and child-milter failures count here under their service.",
		}, []string{"service", "status"}),
		bypass: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opes_milter_bypass_decisions_total",
			Help: "Bypass decisions per service and transaction: honored, or refused with the trace reason (non-bypassable, no-non-opes-version, unauthenticated).",
		}, []string{"decision", "reason"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opes_milter_sessions",
			Help: "Milter sessions open now (one per SMTP connection of the MTA).",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "opes_milter_malformed_packets_total",
			Help: "Milter connections dropped because of a malformed packet.",
		}),
		reloadMetrics: newReloadMetrics("opes_milter", "policy"),
	}
	m.reg.MustRegister(m.outcomes, m.svcLatency, m.svcErrors, m.bypass, m.sessions, m.malformed, m.reloads, m.reloadOK, m.reloadTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Outcome implements opes.Metrics.
func (m *Metrics) Outcome(st opes.Stage, v opes.VerdictKind) {
	i := int(st)*verdictSlots + int(v)
	if int(v) >= verdictSlots || i >= outcomeSlots {
		m.outcomes.WithLabelValues(st.String(), v.String()).Inc()
		return
	}
	c := m.outcomeCtr[i].Load()
	if c == nil {
		c = &counter{m.outcomes.WithLabelValues(st.String(), v.String())}
		m.outcomeCtr[i].Store(c) // a racing store holds the same counter
	}
	c.Inc()
}

// counter boxes a prometheus.Counter for atomic.Pointer.
type counter struct{ prometheus.Counter }

// Room in the outcome cache: stages times verdict kinds, with spare.
const (
	verdictSlots = 8
	outcomeSlots = 8 * verdictSlots
)

// ServiceCall implements opes.Metrics.
func (m *Metrics) ServiceCall(service string, st opes.Stage, took time.Duration, status string) {
	m.svcLatency.WithLabelValues(service, st.String()).Observe(took.Seconds())
	if status != "" {
		m.svcErrors.WithLabelValues(service, status).Inc()
	}
}

// Bypass implements opes.Metrics.
func (m *Metrics) Bypass(decision, reason string) {
	m.bypass.WithLabelValues(decision, reason).Inc()
}

// QueueCounts are the queue sizes the daemon exports (the store's).
type QueueCounts struct {
	QuarantineHeld, QuarantineBytes, OutboxQueued, OutboxFailed int64
}

// WatchQueues exports the quarantine and report queue sizes, read from
// counts at every scrape (bounded by a 2 s deadline; a failed read
// exports nothing and counts the error).
func (m *Metrics) WatchQueues(counts func(ctx context.Context) (QueueCounts, error)) {
	m.reg.MustRegister(&queueCollector{counts: counts,
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "opes_milter_queue_read_errors_total", Help: "Scrapes that could not read the queue sizes from the store."})})
}

var (
	descQuarantineHeld  = prometheus.NewDesc("opes_milter_quarantine_held", "Messages held in the quarantine store.", nil, nil)
	descQuarantineBytes = prometheus.NewDesc("opes_milter_quarantine_bytes", "Bytes of messages held in the quarantine store.", nil, nil)
	descOutbox          = prometheus.NewDesc("opes_milter_outbox", "Non-delivery reports in the outbox, by status: queued (waiting for the relay) or failed (refused for good).", []string{"status"}, nil)
)

type queueCollector struct {
	counts func(ctx context.Context) (QueueCounts, error)
	errors prometheus.Counter
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descQuarantineHeld
	ch <- descQuarantineBytes
	ch <- descOutbox
	c.errors.Describe(ch)
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q, err := c.counts(ctx)
	if err != nil {
		c.errors.Inc()
	} else {
		ch <- prometheus.MustNewConstMetric(descQuarantineHeld, prometheus.GaugeValue, float64(q.QuarantineHeld))
		ch <- prometheus.MustNewConstMetric(descQuarantineBytes, prometheus.GaugeValue, float64(q.QuarantineBytes))
		ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(q.OutboxQueued), "queued")
		ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(q.OutboxFailed), "failed")
	}
	c.errors.Collect(ch)
}

// SessionOpened and SessionClosed track milter sessions.
func (m *Metrics) SessionOpened() { m.sessions.Inc() }

// SessionClosed ends what SessionOpened counted.
func (m *Metrics) SessionClosed() { m.sessions.Dec() }

// MalformedPacket counts a connection the packet guard dropped.
func (m *Metrics) MalformedPacket() { m.malformed.Inc() }

// reloadMetrics count configuration reloads (SIGHUP).
type reloadMetrics struct {
	reloads    *prometheus.CounterVec
	reloadOK   prometheus.Gauge
	reloadTime prometheus.Gauge
}

// newReloadMetrics names the metrics with prefix; what is what the
// running configuration holds, for the help text.
func newReloadMetrics(prefix, what string) reloadMetrics {
	r := reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_config_reloads_total",
			Help: "Configuration reloads (SIGHUP) by result: ok, or error (the running " + what + " stayed).",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_config_last_reload_successful",
			Help: "1 if the last reload succeeded (or none was tried), 0 if it was refused.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_config_last_reload_success_timestamp_seconds",
			Help: "When the running configuration was loaded.",
		}),
	}
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("error")
	r.reloadOK.Set(1)
	r.reloadTime.SetToCurrentTime()
	return r
}

// Reloaded records the result of a configuration reload.
func (r reloadMetrics) Reloaded(err error) {
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.reloadOK.Set(0)
		return
	}
	r.reloads.WithLabelValues("ok").Inc()
	r.reloadOK.Set(1)
	r.reloadTime.SetToCurrentTime()
}
