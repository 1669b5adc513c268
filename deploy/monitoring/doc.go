// Package monitoring holds backbone's Grafana dashboard
// (grafana-dashboard.json) and Prometheus alerting rules
// (prometheus-rules.yaml, a prometheus-operator PrometheusRule), embedded so
// that Go code can ship them and tests can check them against the metrics
// backbone really exports.
package monitoring

import _ "embed"

// Dashboard is the Grafana dashboard, as JSON.
//
//go:embed grafana-dashboard.json
var Dashboard []byte

// Rules is the PrometheusRule holding the alerts, as YAML.
//
//go:embed prometheus-rules.yaml
var Rules []byte
