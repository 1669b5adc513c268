package probe

import "github.com/prometheus/client_golang/prometheus"

// latencyBuckets tell 10 ms from 12 ms: 1 ms steps up to 30 ms (the
// latencies between European regions of the big clouds), coarser beyond.
var latencyBuckets = func() []float64 {
	var b []float64
	for ms := 1; ms <= 30; ms++ {
		b = append(b, float64(ms)/1000)
	}
	return append(b, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,
		0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5)
}()

// Metrics are the link probe's series. Label values are cluster names from
// Links, which the operator controls: bounded.
type Metrics struct {
	Duration *prometheus.HistogramVec
	Up       *prometheus.GaugeVec
	Probes   *prometheus.CounterVec
}

// NewMetrics creates and registers the series.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	labels := []string{"source_cluster", "target_cluster"}
	m := &Metrics{
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "backbone_link_probe_duration_seconds",
			Help:    "Round trip of a successful link probe (GET /ready through the pooled mTLS connection to the target gateway).",
			Buckets: latencyBuckets,
		}, labels),
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_link_up",
			Help: "1 while the target cluster's gateway answers probes, 0 after failureThreshold consecutive failures.",
		}, labels),
		Probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_link_probes_total",
			Help: "Link probes by result (success, failure).",
		}, append(labels, "result")),
	}
	reg.MustRegister(m.Duration, m.Up, m.Probes)
	return m
}

func (m *Metrics) forget(source, target string) {
	m.Duration.DeleteLabelValues(source, target)
	m.Up.DeleteLabelValues(source, target)
	m.Probes.DeleteLabelValues(source, target, "success")
	m.Probes.DeleteLabelValues(source, target, "failure")
}
