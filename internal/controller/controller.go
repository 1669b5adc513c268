// Package controller runs backbone's control plane in one cluster: a
// controller-runtime manager with leader election, health and metrics
// endpoints, and the reconcilers and runnables of each concern (mirroring,
// the link probe, egress and ingress targets, whose probe the gateways run).
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/export"
	"github.com/backbone-mesh/backbone/internal/gateway"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/probe"
	"github.com/backbone-mesh/backbone/internal/targets"
)

// Options configure the controller.
type Options struct {
	ClusterName    string
	Ports          mirror.PortRange
	LeaderElection bool
	// AdminAddress serves /metrics, /healthz and /readyz on one port, as
	// the gateway does; when empty, MetricsAddress and HealthProbeAddress
	// serve them separately ("0" disables either).
	AdminAddress string
	// PprofAddress, if set, serves net/http/pprof (off by default: it
	// exposes the process's memory).
	PprofAddress       string
	MetricsAddress     string
	HealthProbeAddress string
	// IdentityDir enables the link probe, which dials peer gateways with
	// this identity over the same mTLS path traffic takes.
	IdentityDir string
	// CertificateExpiryWarning is how long before expiry the link probe
	// reports a certificate on either end of a link as Expiring (default
	// 30 days, as backbone check).
	CertificateExpiryWarning time.Duration
	// CertificateInspectPeriod is how often the link probe makes a
	// handshake of its own to read the certificates (default 5m).
	CertificateInspectPeriod time.Duration
	// TrustDomain, when set, is checked against the identity's.
	TrustDomain string
	Resync      time.Duration
	// EgressPorts is the gateway port range egress targets get ports from.
	EgressPorts mirror.PortRange
	// Ingress configures what IngressTargets become: Ingresses or, on a
	// Gateway, HTTPRoutes.
	Ingress targets.IngressOptions
	// GatewayAdminPort is the local gateways' admin port, where each
	// serves its latest egress probe results (default 9090).
	GatewayAdminPort int32
	Log              *slog.Logger
	// Extra reconcilers or runnables to add to the manager.
	Extra []func(ctrl.Manager) error
}

// The series are registered once per process with controller-runtime's
// registry (served on /metrics), however many times Run is called.
var (
	mirrorMetrics = sync.OnceValue(func() *mirror.Metrics { return mirror.NewMetrics(metrics.Registry) })
	probeMetrics  = sync.OnceValue(func() *probe.Metrics { return probe.NewMetrics(metrics.Registry) })
)

// Run runs the controller until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	if opts.ClusterName == "" {
		return fmt.Errorf("--cluster-name is required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	ctrl.SetLogger(logr.FromSlogHandler(opts.Log.Handler()))
	if opts.AdminAddress != "" {
		opts.MetricsAddress, opts.HealthProbeAddress = "0", "0"
	}
	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                  kube.Scheme,
		LeaderElection:          opts.LeaderElection,
		LeaderElectionID:        "backbone-controller",
		LeaderElectionNamespace: v1alpha1.SystemNamespace,
		// Leases are released on shutdown so the other replica takes over
		// at once during a rolling restart.
		LeaderElectionReleaseOnCancel: true,
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsAddress},
		HealthProbeBindAddress:        opts.HealthProbeAddress,
		PprofBindAddress:              opts.PprofAddress,
		// Link credentials are the only Secrets the controller reads, and
		// its Role grants them in backbone-system alone: a cluster-wide
		// Secret informer would be refused and never sync.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Namespaces: map[string]cache.Config{v1alpha1.SystemNamespace: {}}},
			// The EndpointSlices the controller reads are its own (mirrors,
			// egress targets) and, in backbone-system, the gateway's: a
			// cluster's thousands of others stay out of its memory.
			&discoveryv1.EndpointSlice{}: {Namespaces: map[string]cache.Config{
				v1alpha1.SystemNamespace: {},
				cache.AllNamespaces: {LabelSelector: labels.SelectorFromSet(labels.Set{
					discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy,
				})},
			}},
		},
			// Nothing reads managedFields; at 10,000 mirrors they are a
			// good part of the cache.
			DefaultTransform: cache.TransformStripManagedFields(),
		},
	})
	if err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if opts.AdminAddress != "" {
		if err := mgr.Add(adminServer(opts.AdminAddress, mgr)); err != nil {
			return err
		}
	}
	if err := mirror.Setup(mgr, mirror.Options{Ports: opts.Ports, Resync: opts.Resync, Metrics: mirrorMetrics(), Log: opts.Log}); err != nil {
		return err
	}
	if err := export.Setup(mgr, opts.ClusterName, opts.Log); err != nil {
		return err
	}
	// The gateways probe the egress targets; the reconciler reads their
	// results to write status.
	eopts := targets.EgressOptions{ClusterName: opts.ClusterName, GatewayAdminPort: opts.GatewayAdminPort, Log: opts.Log}
	if opts.EgressPorts.Low != 0 {
		eopts.Ports.Low, eopts.Ports.High = opts.EgressPorts.Low, opts.EgressPorts.High
	}
	if err := targets.SetupEgress(mgr, eopts); err != nil {
		return err
	}
	iopts := opts.Ingress
	iopts.ClusterName, iopts.Log = opts.ClusterName, opts.Log
	if err := targets.SetupIngress(mgr, iopts); err != nil {
		return err
	}
	if opts.IdentityDir != "" {
		id, err := identity.Load(opts.IdentityDir)
		if err != nil {
			return err
		}
		if opts.TrustDomain != "" && id.ID().TrustDomain != opts.TrustDomain {
			return fmt.Errorf("the identity in %s is %s, outside trust domain %s", opts.IdentityDir, id.ID(), opts.TrustDomain)
		}
		stop := make(chan struct{})
		defer close(stop)
		go id.Watch(stop, 2*time.Second, func(err error) { opts.Log.Error("reloading the identity", "err", err) })
		pool := gateway.NewPool(id, 5*time.Second, opts.Log, nil)
		defer pool.Close()
		if err := mgr.Add(&probe.Runner{
			Client: mgr.GetClient(), Namespace: v1alpha1.SystemNamespace, Cluster: opts.ClusterName,
			Metrics: probeMetrics(), Log: opts.Log,
			Probe: func(ctx context.Context, link *v1alpha1.Link) (time.Duration, error) {
				pool.Ensure(*link)
				return pool.Probe(ctx, link.Spec.TargetClusterName)
			},
			Forget:        func(link *v1alpha1.Link) { pool.Forget(link.Spec.TargetClusterName) },
			Inspect:       probe.Handshake(id),
			InspectPeriod: opts.CertificateInspectPeriod,
			ExpiryWarning: opts.CertificateExpiryWarning,
		}); err != nil {
			return err
		}
	}
	for _, extra := range opts.Extra {
		if err := extra(mgr); err != nil {
			return err
		}
	}
	opts.Log.Info("controller starting", "cluster", opts.ClusterName, "leader_election", opts.LeaderElection, "probe", opts.IdentityDir != "")
	return mgr.Start(ctx)
}

// adminServer serves /metrics (controller-runtime's registry, which holds
// backbone's series), /healthz and /readyz (the informers have synced) on
// one address. It runs on every replica, leader or not.
func adminServer(addr string, mgr ctrl.Manager) manager.Runnable {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	// healthz.Handler serves its checks below its own path.
	mux.Handle("/healthz", http.StripPrefix("/healthz", &healthz.Handler{Checks: map[string]healthz.Checker{"ping": healthz.Ping}}))
	mux.Handle("/readyz", http.StripPrefix("/readyz", &healthz.Handler{Checks: map[string]healthz.Checker{
		"informers": func(req *http.Request) error {
			ctx, cancel := context.WithTimeout(req.Context(), time.Second)
			defer cancel()
			if !mgr.GetCache().WaitForCacheSync(ctx) {
				return errors.New("informers not synced")
			}
			return nil
		},
	}}))
	return &manager.Server{
		Name:   "admin",
		Server: &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second},
	}
}
