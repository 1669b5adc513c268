package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/backbone-mesh/backbone/internal/version"
)

// Directions of traffic through the gateway.
const (
	inbound  = "inbound"
	outbound = "outbound"
)

// metrics are the gateway's series. peer_cluster comes only from verified
// identities or from Links, never from what a peer asks for, so a peer
// sending random authorities cannot create series; denials are counted by
// a fixed set of reasons.
type metrics struct {
	streams       *prometheus.CounterVec
	activeStreams *prometheus.GaugeVec
	bytes         *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	connections   *prometheus.CounterVec
	dialErrors    *prometheus.CounterVec
	denied        *prometheus.CounterVec
	listeners     prometheus.Gauge
	// portConflicts counts the claims on a port passed over, by kind of
	// listener (outbound, egress): two constant series.
	portConflicts *prometheus.GaugeVec
	// The egress probe's series: target is an EgressTarget this gateway
	// serves (namespace/name), a bounded set.
	egressProbe *prometheus.HistogramVec
	egressUp    *prometheus.GaugeVec

	seriesMu sync.RWMutex
	series   map[seriesKey]*streamSeries
}

type seriesKey struct{ direction, peerCluster string }

// streamSeries are the series every tunnel stream of one direction and
// peer cluster updates, looked up once per pair rather than once per
// stream and update.
type streamSeries struct {
	m              *metrics
	key            seriesKey
	active         prometheus.Gauge
	duration       prometheus.Observer
	sent, received prometheus.Counter
	ok             atomic.Pointer[prometheus.Counter] // created on the first stream that ends well
}

// streamSeries returns the series of direction and peerCluster (a value
// from a Link or a verified identity: a bounded set).
func (m *metrics) streamSeries(direction, peerCluster string) *streamSeries {
	key := seriesKey{direction, peerCluster}
	m.seriesMu.RLock()
	s, ok := m.series[key]
	m.seriesMu.RUnlock()
	if ok {
		return s
	}
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	if s, ok := m.series[key]; ok {
		return s
	}
	s = &streamSeries{
		m: m, key: key,
		active:   m.activeStreams.WithLabelValues(direction, peerCluster),
		duration: m.duration.WithLabelValues(direction, peerCluster),
		sent:     m.bytes.WithLabelValues(direction, peerCluster, "sent"),
		received: m.bytes.WithLabelValues(direction, peerCluster, "received"),
	}
	m.series[key] = s
	return s
}

// ended counts a stream by its result.
func (s *streamSeries) ended(result string) {
	if result != "ok" {
		s.m.streams.WithLabelValues(s.key.direction, s.key.peerCluster, result).Inc()
		return
	}
	c := s.ok.Load()
	if c == nil {
		ok := s.m.streams.WithLabelValues(s.key.direction, s.key.peerCluster, "ok")
		c = &ok
		s.ok.Store(c)
	}
	(*c).Inc()
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		series: map[seriesKey]*streamSeries{},
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_gateway_streams_total", Help: "Tunnel streams by direction, peer cluster and result.",
		}, []string{"direction", "peer_cluster", "result"}),
		activeStreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_gateway_streams_active", Help: "Tunnel streams open now.",
		}, []string{"direction", "peer_cluster"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_gateway_bytes_total", Help: "Bytes carried by tunnels, by direction of the tunnel and of the bytes (sent towards the peer or received from it).",
		}, []string{"direction", "peer_cluster", "flow"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "backbone_gateway_stream_duration_seconds", Help: "Lifetime of tunnel streams.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}, []string{"direction", "peer_cluster"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_gateway_peer_connections_total", Help: "mTLS connections to (outbound) or from (inbound) peer gateways.",
		}, []string{"direction", "peer_cluster"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_gateway_dial_errors_total", Help: "Failed dials of peer gateways or backends, by reason (connect, tls, identity, backend).",
		}, []string{"peer_cluster", "reason"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "backbone_gateway_denied_total", Help: "Refused inbound requests, by the caller's verified cluster (empty without one) and reason.",
		}, []string{"peer_cluster", "reason"}),
		listeners: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "backbone_gateway_outbound_listeners", Help: "Ports the gateway listens on for mirrored services.",
		}),
		portConflicts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_gateway_port_conflicts", Help: "Objects claiming a listener port another object is served on (an EndpointSlice or Service written outside the controller), by kind of listener.",
		}, []string{"listeners"}),
		egressProbe: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "backbone_egress_probe_duration_seconds",
			Help:    "Time of a successful egress probe from this gateway: DNS lookup and TCP connect, plus the TLS handshake and a request of the probe path (https) or the handshake (tls).",
			Buckets: prometheus.ExponentialBucketsRange(0.001, 10, 40),
		}, []string{"target"}),
		egressUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "backbone_egress_up",
			Help: "1 while this gateway reaches the egress target, 0 once --egress-probe-failure-threshold probes in a row failed.",
		}, []string{"target"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "backbone_build_info", Help: "Build of the running backbone.",
	}, []string{"version", "commit", "go_version"})
	info := version.Get()
	build.WithLabelValues(info.Version, info.GitCommit, info.GoVersion).Set(1)
	reg.MustRegister(m.streams, m.activeStreams, m.bytes, m.duration, m.connections, m.dialErrors, m.denied, m.listeners, m.portConflicts, m.egressProbe, m.egressUp, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Denial reasons: a fixed set.
const (
	deniedMethod      = "method"
	deniedAuthority   = "bad_authority"
	deniedNotFound    = "not_found"
	deniedNotExported = "not_exported"
	deniedNotAllowed  = "not_allowed"
	deniedProtocol    = "protocol"
)
