package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Callout holds opes-callout's metrics: open OCP connections,
// transactions by service and outcome with their duration, and reloads.
// It implements sdk.Metrics.
type Callout struct {
	reg       *prometheus.Registry
	conns     prometheus.Gauge
	txs       *prometheus.CounterVec
	txSeconds *prometheus.HistogramVec
	reloadMetrics
}

// NewCallout registers every metric of opes-callout in a fresh registry.
func NewCallout() *Callout {
	m := &Callout{
		reg: prometheus.NewRegistry(),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opes_callout_connections",
			Help: "Open OCP connections from OPES processors.",
		}),
		txs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opes_callout_transactions_total",
			Help: "Finished OCP transactions by service and outcome (the service's final verdict, aborted by the processor, or failed).",
		}, []string{"service", "outcome"}),
		txSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "opes_callout_transaction_duration_seconds",
			Help:    "Time from the start of an OCP transaction to its end, by service.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"service"}),
		reloadMetrics: newReloadMetrics("opes_callout", "services"),
	}
	m.reg.MustRegister(m.conns, m.txs, m.txSeconds, m.reloads, m.reloadOK, m.reloadTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Callout) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Connections implements sdk.Metrics.
func (m *Callout) Connections(delta int) { m.conns.Add(float64(delta)) }

// Transaction implements sdk.Metrics.
func (m *Callout) Transaction(service string, took time.Duration, outcome string) {
	m.txs.WithLabelValues(service, outcome).Inc()
	m.txSeconds.WithLabelValues(service).Observe(took.Seconds())
}
