package gateway

import "github.com/prometheus/client_golang/prometheus"

// nopRegisterer accepts and forgets collectors, for pools used outside a
// gateway (the controller's link probe has its own metrics).
type nopRegisterer struct{}

func (nopRegisterer) Register(prometheus.Collector) error  { return nil }
func (nopRegisterer) MustRegister(...prometheus.Collector) {}
func (nopRegisterer) Unregister(prometheus.Collector) bool { return true }
