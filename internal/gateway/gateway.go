// Package gateway is backbone's data plane: the process every cluster runs
// to carry traffic between clusters. Inbound, it terminates mTLS tunnels
// from peer gateways and connects each to the exported service (or egress
// target) it names, after checking the caller's identity. Outbound, it
// listens on the port allocated to every mirrored service port and turns
// each application connection into one stream of a pooled mTLS HTTP/2
// connection to the remote cluster's gateway. Egress, it originates TLS to
// the egress targets its cluster serves, and probes them.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/origin"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// Options configure a gateway.
type Options struct {
	ClusterName string
	// TrustDomain, when set, is checked against the identity's at start.
	TrustDomain    string
	IdentityDir    string
	InboundAddress string
	OutboundBindIP string
	AdminAddress   string
	// PprofAddress, if set, serves net/http/pprof there (off by default:
	// it exposes the process's memory, keys included).
	PprofAddress string
	DrainTimeout time.Duration
	// ShutdownDelay is how long the gateway goes on serving after SIGTERM
	// with readiness already false, before it closes its listeners: the
	// time kube-proxy and load balancers take to stop sending it new
	// connections once the endpoint is not ready (0: none).
	ShutdownDelay time.Duration
	DialTimeout   time.Duration
	HeaderTimeout time.Duration
	// Resync re-reads the mirrors even without events (default 30s).
	Resync time.Duration
	// Resolve pins egress target names to addresses (like curl's
	// --resolve); the dial-time address checks still apply.
	Resolve map[string][]netip.Addr
	// EgressProbePeriod is how often each egress target this gateway
	// serves is probed (default 10s), EgressProbeTimeout how long one
	// probe may take (default 5s).
	EgressProbePeriod  time.Duration
	EgressProbeTimeout time.Duration
	// EgressProbeFailureThreshold is how many probes of a target in a row
	// must fail before this gateway reports it unreachable (default 3),
	// as a Link's spec.probe.failureThreshold; one success brings it back.
	EgressProbeFailureThreshold int
	// InboundServer picks the inbound port's HTTP/2 server:
	// InboundServerBackbone (the default) or InboundServerNetHTTP.
	InboundServer string
}

func newOriginator(log *slog.Logger, pins map[string][]netip.Addr) *origin.Originator {
	o := origin.New(log)
	o.Dialer.LookupNetIP = origin.StaticLookup(pins)
	return o
}

// Gateway is one running gateway.
type Gateway struct {
	opts     Options
	log      *slog.Logger
	identity *identity.Files
	view     *view
	pool     *Pool
	origin   *origin.Originator
	prober   *egressProber
	metrics  *metrics
	registry *prometheus.Registry
	drain    *drainTracker
	draining atomic.Bool
	ready    atomic.Bool

	lmu             sync.Mutex
	listeners       map[int32]*listener
	egressListeners map[int32]*egressListener
	// conflicts are the port conflicts logged, by kind of listener.
	conflicts   map[string]map[string]bool
	inboundAddr net.Addr
	adminAddr   net.Addr
}

// New loads the identity and prepares a gateway for cfg's cluster.
func New(cfg *rest.Config, opts Options, log *slog.Logger) (*Gateway, error) {
	if opts.ClusterName == "" {
		return nil, errors.New("--cluster-name is required")
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.HeaderTimeout == 0 {
		opts.HeaderTimeout = 10 * time.Second
	}
	if opts.Resync == 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.EgressProbePeriod == 0 {
		opts.EgressProbePeriod = 10 * time.Second
	}
	if opts.EgressProbeTimeout == 0 {
		opts.EgressProbeTimeout = 5 * time.Second
	}
	if opts.EgressProbeFailureThreshold == 0 {
		opts.EgressProbeFailureThreshold = 3
	}
	if log == nil {
		log = slog.Default()
	}
	id, err := identity.Load(opts.IdentityDir)
	if err != nil {
		return nil, err
	}
	if opts.TrustDomain != "" && id.ID().TrustDomain != opts.TrustDomain {
		return nil, fmt.Errorf("the identity in %s is %s, outside trust domain %s", opts.IdentityDir, id.ID(), opts.TrustDomain)
	}
	if id.ID().Cluster != opts.ClusterName {
		return nil, fmt.Errorf("the identity in %s is %s, not cluster %s", opts.IdentityDir, id.ID(), opts.ClusterName)
	}
	v, err := newView(cfg)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	g := &Gateway{
		opts: opts, log: log, identity: id, view: v, metrics: m, registry: reg,
		pool:            NewPool(id, opts.DialTimeout, log, m),
		origin:          newOriginator(log, opts.Resolve),
		drain:           newDrainTracker(),
		listeners:       map[int32]*listener{},
		egressListeners: map[int32]*egressListener{},
		conflicts:       map[string]map[string]bool{},
	}
	g.prober = newEgressProber(g)
	return g, nil
}

// InboundAddr is where the inbound server listens (after Run started).
func (g *Gateway) InboundAddr() net.Addr {
	g.lmu.Lock()
	defer g.lmu.Unlock()
	return g.inboundAddr
}

// Run serves until ctx ends, then drains: readiness turns false, new
// connections are still served for ShutdownDelay, then listeners stop
// accepting and streams in flight get up to DrainTimeout to finish.
func (g *Gateway) Run(ctx context.Context) error {
	stop := make(chan struct{})
	defer close(stop)
	go g.identity.Watch(stop, 2*time.Second, func(err error) {
		g.log.Error("reloading the identity; keeping the previous one", "err", err)
	})

	adminL, err := net.Listen("tcp", g.opts.AdminAddress)
	if err != nil {
		return fmt.Errorf("--admin-address: %w", err)
	}
	admin := &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(adminL) }()
	defer func() { _ = admin.Close() }()
	if g.opts.PprofAddress != "" {
		pprofL, err := net.Listen("tcp", g.opts.PprofAddress)
		if err != nil {
			return fmt.Errorf("--pprof-address: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(pprofL) }()
		defer func() { _ = srv.Close() }()
	}

	inL, err := net.Listen("tcp", g.opts.InboundAddress)
	if err != nil {
		return fmt.Errorf("--inbound-address: %w", err)
	}
	defer func() { _ = inL.Close() }() // the inbound server closes it too; this is for the returns before it runs
	g.lmu.Lock()
	g.inboundAddr, g.adminAddr = inL.Addr(), adminL.Addr()
	g.lmu.Unlock()

	// The watches outlive ctx so draining streams can still be resolved.
	viewCtx, stopView := context.WithCancel(context.Background())
	defer stopView()
	// Until the caches synced, a SIGTERM ends the wait: caches that never
	// sync (RBAC forbidding a list) would hold the process until SIGKILL.
	stopWaiting := context.AfterFunc(ctx, stopView)
	err = g.view.start(viewCtx)
	if !stopWaiting() {
		g.log.Info("stopped before the local caches synced")
		return nil
	}
	if err != nil {
		return err
	}
	inbound, err := newInboundServer(g)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- inbound.serveListener(inL) }()

	// Outbound connections live on a context that ends only after draining.
	streams, stopStreams := context.WithCancel(context.Background())
	defer stopStreams()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
		g.prober.notify()
	}
	if err := g.watchChanges(viewCtx, notify); err != nil {
		return err
	}
	if err := g.syncListeners(streams); err != nil {
		g.log.Warn("opening mirror listeners", "err", err)
	}
	// Probing stops with ctx: a draining gateway serves no new callers.
	go g.prober.run(ctx)
	g.ready.Store(true)
	g.log.Info("gateway ready", "cluster", g.opts.ClusterName, "identity", g.identity.ID().String(), "inbound", inL.Addr().String(), "admin", adminL.Addr().String())

	resync := time.NewTicker(g.opts.Resync)
	defer resync.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			return fmt.Errorf("inbound server: %w", err)
		case <-changed:
		case <-resync.C:
		}
		if err := g.syncListeners(streams); err != nil {
			g.log.Warn("syncing mirror listeners", "err", err)
		}
	}
	return g.shutdown(inbound, stopStreams)
}

func (g *Gateway) shutdown(inbound *inboundServer, stopStreams context.CancelFunc) error {
	g.ready.Store(false)
	if g.opts.ShutdownDelay > 0 {
		// Closed at once, the listeners would refuse the connections
		// kube-proxy still sends here until it has seen the endpoint
		// turn not ready.
		g.log.Info("not ready; serving on until the endpoint is dropped", "delay", g.opts.ShutdownDelay)
		time.Sleep(g.opts.ShutdownDelay)
	}
	g.log.Info("draining", "timeout", g.opts.DrainTimeout, "streams", g.drain.count())
	g.draining.Store(true)
	g.lmu.Lock()
	for port, l := range g.listeners {
		_ = l.l.Close()
		delete(g.listeners, port)
	}
	for port, l := range g.egressListeners {
		_ = l.l.Close()
		delete(g.egressListeners, port)
	}
	g.lmu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), g.opts.DrainTimeout)
	defer cancel()
	// Shutdown sends GOAWAY to peers and waits for their streams.
	shutdownErr := inbound.srv.Shutdown(ctx)
	drained := g.drain.wait(time.Until(deadlineOf(ctx)))
	stopStreams()
	g.pool.Close()
	if !drained || errors.Is(shutdownErr, context.DeadlineExceeded) {
		g.log.Warn("drain timeout: closing the streams still open", "streams", g.drain.count())
		_ = inbound.srv.Close()
	}
	g.log.Info("gateway stopped")
	return nil
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// watchChanges calls notify whenever something the listeners depend on
// changes.
func (g *Gateway) watchChanges(ctx context.Context, notify func()) error {
	h := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	for _, obj := range g.watchedKinds() {
		inf, err := g.view.cache.GetInformer(ctx, obj)
		if err != nil {
			return err
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	return nil
}

func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !g.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if err := g.identity.LastError(); err != nil {
			http.Error(w, "identity: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(g.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc(targets.EgressProbesPath, g.prober.serveReport)
	return mux
}
