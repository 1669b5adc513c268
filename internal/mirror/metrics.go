package mirror

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the mirror controller. target_cluster values come from Links.
type Metrics struct {
	Mirrored   *prometheus.GaugeVec
	RemoteUp   *prometheus.GaugeVec
	SyncErrors *prometheus.CounterVec
	Writes     *prometheus.CounterVec
}

// NewMetrics registers the series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Mirrored: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_mirrored_services", Help: "Mirror Services kept for a linked cluster.",
		}, []string{"target_cluster"}),
		RemoteUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_remote_api_up", Help: "1 when the linked cluster's API server answered the last check.",
		}, []string{"target_cluster"}),
		SyncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_mirror_sync_errors_total", Help: "Failed syncs of a Link.",
		}, []string{"target_cluster"}),
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_mirror_api_writes_total", Help: "Writes to the local API server by kind and verb.",
		}, []string{"kind", "verb"}),
	}
	reg.MustRegister(m.Mirrored, m.RemoteUp, m.SyncErrors, m.Writes)
	return m
}
